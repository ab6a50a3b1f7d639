"""One backend as configured: `BackendSpec`, read from and written as the text of an entry
of GATEWAY_BACKENDS (or of the backend registry).

`[name=]url[;max=N][;max_per_model=N][;weight=W][;tags=a,b][;token_env=NAME]`:

- `max`: requests it admits at once (more wait in a bounded queue);
- `max_per_model`: runs of one model it admits at once (other models may take the rest);
- `weight`: its share of the load;
- `tags`: labels shown in `/gateway/backends` (letters, digits, `_`, `.`, `-`);
- `token_env`: the name of an environment variable holding a bearer token sent to this
  backend only (Ollama behind an authenticating proxy, a hosted endpoint). Only the name is
  kept in a spec; the token is read when the backend's client is made, never stored, shown
  or logged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["BackendSpec", "parse_backend", "spec_text"]

_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYS = ("max", "max_per_model", "weight", "tags", "token_env")


@dataclass(frozen=True)
class BackendSpec:
    """One entry of GATEWAY_BACKENDS (see the module docstring)."""

    url: str
    name: str
    weight: float = 1.0
    max_concurrency: int | None = None
    max_per_model: int | None = None
    tags: tuple[str, ...] = ()
    token_env: str | None = None
    """The environment variable holding its bearer token (its name, not the token)."""

    def token(self) -> str | None:
        """Its bearer token, read from the environment now: None without `token_env`, or
        when the variable is unset, empty or holds more than printable ASCII without
        spaces (which no header could carry, and an error might quote)."""
        if self.token_env is None:
            return None
        token = os.environ.get(self.token_env, "").strip()
        if not token or not all("!" <= c <= "~" for c in token):
            return None
        return token


def parse_backend(text: str) -> BackendSpec:
    """`gpu1=http://10.0.0.5:11434;max=4;tags=a100,big` or a bare URL (named by its
    host:port). ValueError for a missing URL, or a parameter unknown, repeated or bad."""
    head, *params = [part.strip() for part in text.split(";")]
    name, sep, url = head.partition("=")
    if not sep or "://" in name:
        name, url = "", head
    url = url.strip().rstrip("/")
    if "://" not in url:
        raise ValueError(f"backend {text!r}: expected a URL such as http://host:11434")
    values: dict[str, str] = {}
    for param in params:
        key, _, value = param.partition("=")
        if key not in _KEYS or key in values or not _valid(key, value.strip()):
            raise ValueError(f"backend {text!r}: bad parameter {param!r}")
        values[key] = value.strip()
    tags = values.get("tags", "")
    return BackendSpec(
        url=url,
        name=name or url.split("://", 1)[1],
        weight=float(values.get("weight", "1")),
        max_concurrency=int(values["max"]) if "max" in values else None,
        max_per_model=int(values["max_per_model"]) if "max_per_model" in values else None,
        tags=tuple(dict.fromkeys(t.strip() for t in tags.split(",") if t.strip())),
        token_env=values.get("token_env"),
    )


def _valid(key: str, value: str) -> bool:
    """`value` is one `key` takes: a whole number from 1, a weight above 0, tags, or the
    name of an environment variable."""
    if key in ("max", "max_per_model"):
        return value.isascii() and value.isdigit() and int(value) >= 1
    if key == "weight":
        try:
            return 0 < float(value) < float("inf")
        except ValueError:
            return False
    if key == "tags":
        tags = [t.strip() for t in value.split(",") if t.strip()]
        return bool(tags) and all(_TAG.match(t) for t in tags)
    return bool(_ENV_NAME.match(value))


def spec_text(spec: BackendSpec) -> str:
    """`spec` written as `parse_backend` reads it (a `token_env` by its name only)."""
    text = f"{spec.name}={spec.url}"
    if spec.max_concurrency is not None:
        text += f";max={spec.max_concurrency}"
    if spec.max_per_model is not None:
        text += f";max_per_model={spec.max_per_model}"
    if spec.weight != 1.0:
        text += f";weight={spec.weight!r}"
    if spec.tags:
        text += f";tags={','.join(spec.tags)}"
    if spec.token_env is not None:
        text += f";token_env={spec.token_env}"
    return text
