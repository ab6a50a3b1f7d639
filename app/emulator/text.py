"""Deterministic model output: the same (model, prompt, seed) always gives the same pieces.

Pieces look like a real tokenizer's (`Okay`, `,`, ` here`, `\n\n`), so clients that
concatenate, count or cut at stop sequences see realistic shapes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

_WORDS = [
    "the",
    "model",
    "answers",
    "your",
    "question",
    "with",
    "care",
    "and",
    "a",
    "few",
    "plain",
    "words",
    "about",
    "what",
    "it",
    "knows",
    "recursion",
    "means",
    "a",
    "function",
    "that",
    "calls",
    "itself",
    "until",
    "a",
    "base",
    "case",
    "stops",
    "it",
    "each",
    "call",
    "works",
    "on",
    "a",
    "smaller",
    "part",
    "of",
    "the",
    "problem",
    "so",
    "the",
    "whole",
    "thing",
    "finishes",
    "in",
    "the",
    "end",
    "data",
    "flows",
    "through",
    "layers",
    "of",
    "simple",
    "steps",
    "that",
    "build",
    "a",
    "clear",
    "result",
    "from",
    "small",
    "pieces",
    "here",
    "is",
    "a",
    "short",
    "example",
    "to",
    "make",
    "the",
    "idea",
    "concrete",
    "and",
    "easy",
    "to",
    "follow",
    "for",
    "anyone",
]
_OPENERS = ("Okay", "Sure", "Well", "So", "Here", "Yes", "Alright")
_THOUGHTS = [
    "the",
    "user",
    "asks",
    "something",
    "simple",
    "so",
    "I",
    "should",
    "think",
    "about",
    "the",
    "key",
    "idea",
    "first",
    "and",
    "then",
    "give",
    "a",
    "short",
    "clear",
    "answer",
    "without",
    "extra",
    "detail",
]


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def answer_pieces(
    model: str, prompt: str, seed: int, temperature: float, length: int | None = None
) -> list[str]:
    """The reply as tokenizer-like pieces; greedy (temperature 0) ignores the seed.

    The prompt decides the length (20 to 60 pieces) unless `length` is given: then the
    reply is exactly that many pieces, ending with a full stop."""
    rng = _rng(model.lower(), prompt, seed if temperature > 0 else "greedy")
    count = 20 + rng.randrange(41)
    if length is not None:
        count = length
    pieces = [rng.choice(_OPENERS), ","]
    sentence = 0
    while len(pieces) < count:
        word = rng.choice(_WORDS)
        pieces.append(" " + word)
        sentence += 1
        if sentence > 5 and rng.random() < 0.2:
            pieces.append(".")
            if rng.random() < 0.3 and len(pieces) < count - 2:
                pieces.append("\n\n")
                pieces.append(rng.choice(_OPENERS))
            sentence = 0
    if length is not None:
        return [*pieces[: length - 1], "."] if length > 0 else []
    if pieces[-1] not in (".", "!"):
        pieces.append(".")
    return pieces


def thinking_pieces(model: str, prompt: str, seed: int) -> list[str]:
    rng = _rng("think", model.lower(), prompt, seed)
    count = 8 + rng.randrange(9)
    words = ["Okay", ","] + [" " + w for w in _THOUGHTS]
    return [*words[:count], "."]


def _value_for(schema: Any, rng: random.Random, key: str) -> Any:
    if not isinstance(schema, dict):
        return rng.choice(_WORDS)
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _value_for(v, rng, k) for k, v in props.items()} if props else {}
    if kind == "array":
        return [_value_for(schema.get("items", {"type": "string"}), rng, key)]
    if kind == "integer":
        return rng.randrange(1, 100)
    if kind == "number":
        return round(rng.random() * 100, 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choice(_WORDS) for _ in range(2))


def json_pieces(model: str, prompt: str, seed: int, schema: dict[str, Any] | None) -> list[str]:
    """Valid JSON text (matching `schema` when given), cut into small pieces."""
    rng = _rng("json", model.lower(), prompt, seed)
    if schema is not None:
        value = _value_for(schema, rng, "value")
    else:
        value = {"answer": " ".join(rng.choice(_WORDS) for _ in range(5))}
    text = json.dumps(value, ensure_ascii=False)
    return [p for p in re.findall(r"\s?[^\s\"{}\[\]:,]+|\s?[\"{}\[\]:,]", text) if p]


def apply_limits(
    pieces: list[str], num_predict: int | None, stop: list[str]
) -> tuple[list[str], str]:
    """Stop after num_predict pieces ("length") or before a stop sequence ("stop")."""
    reason = "stop"
    if num_predict is not None and num_predict >= 0 and len(pieces) > num_predict:
        pieces, reason = pieces[:num_predict], "length"
    text = "".join(pieces)
    cuts = [text.find(s) for s in stop if s and s in text]
    if not cuts:
        return pieces, reason
    limit, kept, used = min(cuts), [], 0
    for piece in pieces:
        if used + len(piece) > limit:
            if limit > used:
                kept.append(piece[: limit - used])
            break
        kept.append(piece)
        used += len(piece)
    return kept, "stop"


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


def _given_arguments(text: str) -> dict[str, Any] | None:
    """The first JSON object written in `text`, if any."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def tool_call_for(tools: list[Any], last_user: str, seed: int) -> ToolCall | None:
    """A call of the first tool whose name the user's last message mentions: with the JSON
    object the message holds as its arguments (`get_weather {"city": "Paris"}`), else with
    arguments made up from its schema. String arguments are taken, in order, from the
    message's `backquoted` spans, then from its capitalised words after the first; a schema
    that lists `required` properties gets only those, as models fill them."""
    lowered = last_user.lower()
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        name = fn["name"]
        words = {name.lower(), name.lower().replace("_", " ")}
        if not any(w in lowered for w in words):
            continue
        given_object = _given_arguments(last_user)
        if given_object is not None:
            return ToolCall(name, given_object)
        params = fn.get("parameters") or {}
        props = params.get("properties") or {} if isinstance(params, dict) else {}
        required = params.get("required") if isinstance(params, dict) else None
        if isinstance(required, list) and required:
            props = {k: v for k, v in props.items() if k in required}
        quoted = re.findall(r"`([^`]+)`", last_user)
        unquoted = re.sub(r"`[^`]*`", " ", last_user)
        capitalised = [w.strip("?.,!") for w in unquoted.split() if w[:1].isupper()][1:]
        given = [*quoted, *capitalised]
        rng = _rng("tool", name, last_user, seed)
        args: dict[str, Any] = {}
        for key, schema in props.items():
            if isinstance(schema, dict) and schema.get("type", "string") == "string" and given:
                args[key] = given.pop(0)
            else:
                args[key] = _value_for(schema, rng, key)
        return ToolCall(name, args)
    return None


def tokens_of(text: str) -> int:
    """A prompt's token count, roughly as a BPE tokenizer would count it."""
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


def embedding(model: str, text: str, dims: int) -> list[float]:
    rng = _rng("embed", model.lower(), text)
    return [rng.uniform(-1.0, 1.0) for _ in range(dims)]
