"""Property-based fuzz of request bodies on every surface (Hypothesis, fixed seed,
bounded): whatever a client sends, no 5xx, an error is a JSON body, and a 200 means a
stored run. The deployment fixture checks one audit row per request sent."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import Deployment

EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: the same examples on every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text with what breaks storage and parsers: NUL, lone surrogates, control characters.
texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(exclude_categories=()), max_size=20),  # surrogates included
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "\r\n", "\u2028", "../../etc"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
models = st.one_of(
    st.sampled_from(["llama3.1:8b", "qwen2.5:0.5b", "llama3.1", "nope:1", ""]), texts
)
# Option values: small lengths only (a huge or negative token limit is a long run).
option_values = st.one_of(
    st.integers(min_value=-1, max_value=8), st.floats(allow_nan=True), texts, json_values
)
option_names = st.sampled_from(
    ["temperature", "top_p", "top_k", "seed", "stop", "format", "system_prompt", "repeat_penalty"]
)
options = st.dictionaries(st.one_of(option_names, texts), option_values, max_size=4)
LENGTH = {"max_tokens": 4}
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "system", "assistant"]), texts)},
        optional={"content": st.one_of(texts, json_values), "images": json_values},
    ),
    max_size=3,
)


def _generate(extra: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": models, **{k: st.just(v) for k, v in extra.items()}},
        optional={"prompt": texts, "options": options, "system": texts, "junk": json_values},
    )


def _encode(body: dict[str, Any], raw_text: bool) -> bytes:
    """JSON (NaN and Infinity as Python writes them); with `raw_text`, non-ASCII as raw
    bytes, so lone surrogates arrive as invalid UTF-8."""
    text = json.dumps(body, allow_nan=True, ensure_ascii=not raw_text)
    return text.encode("utf-8", "surrogatepass")


def _check(
    deployment: Deployment, client: httpx.Client, path: str, content: bytes, stored: Any
) -> None:
    before = stored()
    reply = client.post(path, content=content, headers={"content-type": "application/json"})
    assert reply.status_code < 500, (content[:400], reply.text)
    if reply.status_code >= 400:
        reply.json()  # an error body is JSON, in the surface's shape
        return
    assert reply.status_code == 200, reply.text
    assert stored() == before + 1, f"200 without a stored run: {reply.text[:300]}"


def _counter(client: httpx.Client) -> Any:
    def count() -> int:
        return int(client.get("/gateway/results/stats").json()["by_type"]["results"]["count"])

    return count


@FUZZ
@given(body=_generate({}), raw_text=st.booleans())
def test_gateway_generate(deployment: Deployment, body: dict[str, Any], raw_text: bool) -> None:
    client = deployment.client("alice")
    if isinstance(body.get("options"), dict):
        body["options"] = {**body["options"], **LENGTH}
    _check(deployment, client, "/gateway/generate", _encode(body, raw_text), _counter(client))


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"model": models, "messages": messages},
        optional={"options": options, "junk": json_values},
    ),
    raw_text=st.booleans(),
)
def test_gateway_chat(deployment: Deployment, body: dict[str, Any], raw_text: bool) -> None:
    client = deployment.client("alice")
    if isinstance(body.get("options"), dict):
        body["options"] = {**body["options"], **LENGTH}
    _check(deployment, client, "/gateway/chat", _encode(body, raw_text), _counter(client))


@FUZZ
@given(body=_generate({"stream": False}), raw_text=st.booleans())
def test_ollama_generate(deployment: Deployment, body: dict[str, Any], raw_text: bool) -> None:
    client = deployment.client("alice")
    body["options"] = {**(body.get("options") or {}), "num_predict": 4}
    _check(deployment, client, "/api/generate", _encode(body, raw_text), _counter(client))


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"model": models, "messages": messages, "stream": st.just(False)},
        optional={"options": options, "format": json_values, "junk": json_values},
    ),
    raw_text=st.booleans(),
)
def test_ollama_chat(deployment: Deployment, body: dict[str, Any], raw_text: bool) -> None:
    client = deployment.client("alice")
    body["options"] = {**(body.get("options") or {}), "num_predict": 4}
    _check(deployment, client, "/api/chat", _encode(body, raw_text), _counter(client))


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"model": models, "messages": messages},
        optional={
            "temperature": option_values,
            "stop": json_values,
            "response_format": json_values,
            "tools": json_values,
            "seed": option_values,
        },
    ),
    raw_text=st.booleans(),
)
def test_openai_chat(deployment: Deployment, body: dict[str, Any], raw_text: bool) -> None:
    client = deployment.client("alice")
    body["max_tokens"] = 4
    _check(deployment, client, "/v1/chat/completions", _encode(body, raw_text), _counter(client))


# Anthropic's content blocks, known types and others, with fields of any JSON value.
blocks = st.lists(
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["text", "image", "tool_use", "tool_result",
                                            "thinking", "document", "tool_reference"]), texts)},
        optional={key: json_values for key in ("text", "source", "id", "name", "input",
                                               "tool_use_id", "content", "thinking")},
    ),
    max_size=3,
)  # fmt: skip
anthropic_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "assistant", "system"]), texts)},
        optional={"content": st.one_of(texts, blocks, json_values)},
    ),
    max_size=3,
)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"model": models, "messages": anthropic_messages},
        optional={
            key: json_values
            for key in ("system", "tools", "tool_choice", "thinking", "stop_sequences",
                        "metadata", "output_config", "junk")
        }
        | {"temperature": option_values, "stream": st.booleans()},
    ),
    raw_text=st.booleans(),
)  # fmt: skip
def test_anthropic_messages(deployment: Deployment, body: dict[str, Any], raw_text: bool) -> None:
    client = deployment.client("alice")
    body["max_tokens"] = 4
    _check(deployment, client, "/v1/messages", _encode(body, raw_text), _counter(client))
