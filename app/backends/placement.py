"""Placement rules: which backends a model may run on (GATEWAY_PLACEMENT, `/gateway/placement`).

A JSON object from a model glob to a list of backend names or `tag:NAME`:

    {"llama3.1:70b": ["gpu1", "gpu2"], "qwen2.5:*": ["tag:small"], "*embed*": ["cpu"]}

The first rule (in the object's order) whose glob matches the model decides: the model
runs only on the backends it lists (by name) or that carry one of its tags; a model no
rule matches runs anywhere. Globs are matched case-insensitively against the model's
normalised name (`llama3.1` is `llama3.1:latest`, as Ollama reads it): a glob without
`*`, `?` or `[` is a model name and matches exactly that model (`qwen2.5` is
`qwen2.5:latest`; `qwen2.5:*` is every tag of it).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.backends.spec import BackendSpec

__all__ = ["Placement", "PlacementRule", "parse_placement"]

MAX_RULES = 200
MAX_TARGETS = 100
_GLOB = re.compile(r"^[A-Za-z0-9_.:/*?\[\]!-]{1,300}$")
_TAG = re.compile(r"^tag:[A-Za-z0-9_.-]{1,100}$")
_NAME = re.compile(r"^[^\s,;=]{1,512}$")
_WILD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class PlacementRule:
    """One rule: a glob and the backends (names, `tag:NAME`) it allows."""

    pattern: str
    targets: tuple[str, ...]

    def allows(self, spec: BackendSpec) -> bool:
        for target in self.targets:
            if target.startswith("tag:"):
                if target[4:] in spec.tags:
                    return True
            elif target == spec.name:
                return True
        return False

    def describe(self) -> str:
        return f"placement rule {self.pattern!r} -> {', '.join(self.targets)}"


@dataclass(frozen=True)
class Placement:
    """The rules, first match wins (see the module docstring). Empty: every model anywhere."""

    rules: tuple[PlacementRule, ...] = ()

    def rule_for(self, key: str, model_key: Callable[[str], str]) -> PlacementRule | None:
        """The rule deciding where the model whose key (`model_key(name)`) is `key` runs."""
        for rule in self.rules:
            if _matches(rule.pattern, key, model_key):
                return rule
        return None

    def as_json(self) -> dict[str, list[str]]:
        return {rule.pattern: list(rule.targets) for rule in self.rules}

    def __bool__(self) -> bool:
        return bool(self.rules)


def _matches(pattern: str, key: str, model_key: Callable[[str], str]) -> bool:
    if _WILD.search(pattern):
        return fnmatch.fnmatchcase(key, pattern.casefold())
    try:
        return model_key(pattern) == key
    except ValueError:
        return pattern.casefold() == key


def parse_placement(value: Any) -> Placement:
    """Rules from a JSON object (or its text). ValueError naming what is wrong: not an
    object, a glob or target that is not one, a rule with no target, too many rules."""
    if isinstance(value, str | bytes):
        text = value.strip() if isinstance(value, str) else value.decode().strip()
        if not text:
            return Placement()
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"placement: not JSON ({exc})") from None
    if not isinstance(value, Mapping):
        raise ValueError(
            "placement: expected a JSON object from model glob to a list of backend names "
            'or "tag:NAME", e.g. {"llama3.1:70b": ["gpu1"], "qwen2.5:*": ["tag:small"]}'
        )
    if len(value) > MAX_RULES:
        raise ValueError(f"placement: at most {MAX_RULES} rules")
    rules: list[PlacementRule] = []
    for pattern, targets in value.items():
        rules.append(PlacementRule(_check_glob(pattern), _check_targets(pattern, targets)))
    return Placement(tuple(rules))


def _check_glob(pattern: object) -> str:
    if not isinstance(pattern, str) or not _GLOB.match(pattern):
        raise ValueError(
            f"placement: {pattern!r} is not a model glob (letters, digits and . _ - : / "
            "with the wildcards * ? [...], at most 300 characters)"
        )
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                raise ValueError(f"placement: glob {pattern!r} nests '['")
            depth = 1
        elif char == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"placement: glob {pattern!r} has a '[' without its ']'")
    return pattern


def _check_targets(pattern: str, targets: object) -> tuple[str, ...]:
    if not isinstance(targets, list) or not targets:
        raise ValueError(
            f"placement: the rule for {pattern!r} must be a non-empty list of backend names "
            'or "tag:NAME"'
        )
    if len(targets) > MAX_TARGETS:
        raise ValueError(f"placement: the rule for {pattern!r} lists over {MAX_TARGETS} targets")
    out: list[str] = []
    for target in targets:
        if not isinstance(target, str) or not (
            _TAG.match(target) if target.startswith("tag:") else _NAME.match(target)
        ):
            raise ValueError(
                f"placement: the rule for {pattern!r} lists {target!r}, which is neither a "
                'backend name nor "tag:NAME"'
            )
        out.append(target)
    return tuple(dict.fromkeys(out))
