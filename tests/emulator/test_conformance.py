"""The emulator against shared/reference/ollama-api.md: one test per endpoint and error."""

from __future__ import annotations

import json
import math
import re

import httpx
import pytest

JSON_CT = "application/json; charset=utf-8"
NDJSON_CT = "application/x-ndjson"
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]
CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def lines(r: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in r.text.splitlines() if line]


@pytest.fixture
def api(emulator_url: str) -> httpx.Client:
    return httpx.Client(base_url=emulator_url, timeout=10)


def test_root_get_and_head(api: httpx.Client) -> None:
    r = api.get("/")
    assert (r.status_code, r.text, r.headers["content-type"]) == (
        200,
        "Ollama is running",
        "text/plain; charset=utf-8",
    )
    head = api.head("/")
    assert head.status_code == 200 and head.content == b""


def test_version(api: httpx.Client) -> None:
    r = api.get("/api/version")
    assert r.headers["content-type"] == JSON_CT
    assert re.match(r"^\d+\.\d+\.\d+", r.json()["version"])
    assert not r.text.endswith("\n")


def test_tags_items_have_ollamas_keys_in_order(api: httpx.Client) -> None:
    models = api.get("/api/tags").json()["models"]
    assert models, "the start-up models are installed"
    for item in models:
        assert list(item) == ["name", "model", "modified_at", "size", "digest", "details"]
        assert re.fullmatch(r"[0-9a-f]{64}", item["digest"])
        assert list(item["details"]) == [
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        ]
    stamps = [m["modified_at"] for m in models]
    assert stamps == sorted(stamps, reverse=True), "newest first"


def test_unknown_path_and_wrong_method(api: httpx.Client) -> None:
    r = api.get("/api/nothing")
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"].startswith("text/plain")
    assert api.post("/api/delete", json={"model": "x"}).status_code == 405


def test_generate_stream_chunks_and_final_metrics(api: httpx.Client) -> None:
    r = api.post("/api/generate", json={"model": "llama3.1:8b", "prompt": "Count to five"})
    assert r.headers["content-type"] == NDJSON_CT
    chunks = lines(r)
    *middle, final = chunks
    for chunk in middle:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["done"] is False and CREATED_AT.match(str(chunk["created_at"]))
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        *METRICS,
    ]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert all(isinstance(final[k], int) for k in METRICS)
    assert final["eval_count"] == len(middle)


def test_non_streamed_generate_is_the_concatenation(api: httpx.Client) -> None:
    body = {"model": "llama3.1:8b", "prompt": "Hello there", "options": {"seed": 3}}
    streamed = "".join(str(c["response"]) for c in lines(api.post("/api/generate", json=body)))
    single = api.post("/api/generate", json={**body, "stream": False})
    assert single.headers["content-type"] == JSON_CT
    assert single.json()["response"] == streamed
    assert single.json()["model"] == "llama3.1:8b"


def test_output_is_deterministic_per_seed(api: httpx.Client) -> None:
    def text(seed: int, temperature: float = 0.8) -> str:
        body = {"model": "llama3.1:8b", "prompt": "Tell me", "stream": False}
        body["options"] = {"seed": seed, "temperature": temperature}
        return str(api.post("/api/generate", json=body).json()["response"])

    assert text(1) == text(1)
    assert text(1) != text(2)
    assert text(1, 0) == text(2, 0), "greedy decoding ignores the seed"


def test_num_predict_and_stop(api: httpx.Client) -> None:
    body = {"model": "llama3.1:8b", "prompt": "x", "stream": False}
    short = api.post("/api/generate", json={**body, "options": {"num_predict": 3}}).json()
    assert short["eval_count"] == 3 and short["done_reason"] == "length"
    full = str(api.post("/api/generate", json=body).json()["response"])
    stop_at = full.split()[2]
    cut = api.post("/api/generate", json={**body, "options": {"stop": [stop_at]}}).json()
    assert stop_at not in cut["response"] and cut["done_reason"] == "stop"
    assert full.startswith(cut["response"])


def test_format_json_and_schema(api: httpx.Client) -> None:
    body = {"model": "llama3.1:8b", "prompt": "Give JSON", "stream": False}
    as_json = api.post("/api/generate", json={**body, "format": "json"}).json()
    assert isinstance(json.loads(as_json["response"]), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    shaped = json.loads(
        api.post("/api/generate", json={**body, "format": schema}).json()["response"]
    )
    assert isinstance(shaped["name"], str) and isinstance(shaped["age"], int)
    bad = api.post("/api/generate", json={**body, "format": "xml"})
    assert bad.status_code == 500
    assert bad.json()["error"].startswith('invalid format: "\\"xml\\""; expected "json"')


def test_chat_stream_and_aggregate(api: httpx.Client) -> None:
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hi"}]}
    *middle, final = lines(api.post("/api/chat", json=body))
    for chunk in middle:
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert list(chunk["message"]) == ["role", "content"]  # type: ignore[arg-type]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    single = api.post("/api/chat", json={**body, "stream": False}).json()
    assert single["message"]["content"] == "".join(
        c["message"]["content"]  # type: ignore[index]
        for c in middle
    )


def test_thinking_models_think_and_others_refuse(emulator_url: str) -> None:
    api = httpx.Client(base_url=emulator_url, timeout=10)
    assert api.post("/api/pull", json={"model": "qwen3:0.6b", "stream": False}).status_code == 200
    chunks = lines(api.post("/api/generate", json={"model": "qwen3:0.6b", "prompt": "Why?"}))
    assert any("thinking" in c for c in chunks)
    no_think = lines(
        api.post("/api/generate", json={"model": "qwen3:0.6b", "prompt": "Why?", "think": False})
    )
    assert not any("thinking" in c for c in no_think)
    refused = api.post("/api/generate", json={"model": "llama3.1:8b", "prompt": "x", "think": True})
    assert refused.status_code == 400
    assert refused.json()["error"] == '"llama3.1:8b" does not support thinking'
    bad = api.post("/api/generate", json={"model": "qwen3:0.6b", "prompt": "x", "think": "lots"})
    assert bad.status_code == 400 and bad.json()["error"].startswith('invalid think value: "lots"')


def test_tool_calls(api: httpx.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "Use get_weather for Tokyo"}],
        "tools": [tool],
        "stream": False,
    }
    [call] = api.post("/api/chat", json=body).json()["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    api.post("/api/pull", json={"model": "phi3:mini", "stream": False})
    no_tools = api.post("/api/chat", json={**body, "model": "phi3:mini"})
    assert no_tools.status_code == 400
    assert no_tools.json()["error"] == "registry.ollama.ai/library/phi3:mini does not support tools"


def test_load_and_unload_shortcuts(api: httpx.Client) -> None:
    load = api.post("/api/generate", json={"model": "llama3.1:8b"}).json()
    assert list(load) == ["model", "created_at", "response", "done", "done_reason"]
    assert load["done_reason"] == "load"
    assert any(m["name"] == "llama3.1:8b" for m in api.get("/api/ps").json()["models"])
    unload = api.post("/api/chat", json={"model": "llama3.1:8b", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload" and unload["message"]["content"] == ""
    assert api.get("/api/ps").json()["models"] == []


def test_inference_errors(api: httpx.Client) -> None:
    cases = [
        ("/api/generate", b"", 400, "missing request body"),
        ("/api/generate", b"xyz", 400, "invalid character 'x' looking for beginning of value"),
        (
            "/api/generate",
            b'{"model":"llama3.1:8b","stream":"yes"}',
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool",
        ),
        ("/api/generate", b'{"prompt":"x"}', 404, "model '' not found"),
        ("/api/chat", b'{"messages":[]}', 400, "model is required"),
        ("/api/generate", b'{"model":"zzz:1b","prompt":"x"}', 404, "model 'zzz:1b' not found"),
        (
            "/api/generate",
            b'{"model":"llama3.1:8b","prompt":"x","options":{"top_k":"many"}}',
            500,
            'option "top_k" must be of type integer',
        ),
        (
            "/api/generate",
            b'{"model":"llama3.1:8b","prompt":"x","raw":true,"system":"s"}',
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/generate",
            b'{"model":"nomic-embed-text","prompt":"x"}',
            400,
            '"nomic-embed-text" does not support generate',
        ),
    ]
    for path, body, status, error in cases:
        r = api.post(path, content=body)
        assert (r.status_code, r.json()) == (status, {"error": error}), body


def test_names_resolve_like_ollama(api: httpx.Client) -> None:
    assert api.post("/api/pull", json={"model": "phi3:mini", "stream": False}).status_code == 200
    for name in ("PHI3:MINI", "library/phi3:mini", "registry.ollama.ai/library/phi3:mini"):
        r = api.post("/api/generate", json={"model": name, "prompt": "x", "stream": False})
        assert r.status_code == 200 and r.json()["model"] == name, "echoed verbatim"
    assert api.post("/api/show", json={"model": "nomic-embed-text"}).status_code == 200


def test_show(api: httpx.Client) -> None:
    info = api.post("/api/show", json={"model": "llama3.1:8b"}).json()
    assert list(info)[:4] == ["license", "modelfile", "parameters", "template"]
    assert info["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert info["parameters"].startswith("stop" + " " * 27 + '"')
    assert info["model_info"]["general.architecture"] == "llama"
    assert "completion" in info["capabilities"]
    missing = api.post("/api/show", json={})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})
    unknown = api.post("/api/show", json={"model": "nope"})
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"error": "model 'nope:latest' not found"},
    )


def test_pull_streams_progress_then_installs(api: httpx.Client) -> None:
    r = api.post("/api/pull", json={"model": "smollm2:135m"})
    assert r.headers["content-type"] == NDJSON_CT
    progress = lines(r)
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [p for p in progress if "digest" in p]
    assert layer and all(str(p["digest"]).startswith("sha256:") for p in layer)
    assert "completed" not in layer[0], "completed is absent while 0"
    assert any(m["name"] == "smollm2:135m" for m in api.get("/api/tags").json()["models"])
    again = lines(api.post("/api/pull", json={"model": "smollm2:135m"}))
    assert all(p.get("completed") == p.get("total") for p in again if "digest" in p)


def test_pull_failures(api: httpx.Client) -> None:
    unknown = lines(api.post("/api/pull", json={"model": "no-such-model:7b"}))
    assert unknown == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    single = api.post("/api/pull", json={"model": "no-such-model:7b", "stream": False})
    assert single.status_code == 500
    ok = api.post("/api/pull", json={"model": "phi3:mini", "stream": False})
    assert (ok.json(), ok.headers["content-type"]) == ({"status": "success"}, "application/json")
    bad = api.post("/api/pull", json={"model": "bad name!"})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid model name"})


def test_delete_and_copy(api: httpx.Client) -> None:
    copied = api.post("/api/copy", json={"source": "llama3.1:8b", "destination": "mine:v1"})
    assert copied.status_code == 200 and copied.content == b""
    assert api.request("DELETE", "/api/delete", json={"model": "mine:v1"}).status_code == 200
    gone = api.request("DELETE", "/api/delete", json={"model": "mine:v1"})
    assert (gone.status_code, gone.json()) == (404, {"error": "model 'mine:v1' not found"})
    empty = api.request("DELETE", "/api/delete", json={"model": ""})
    assert (empty.status_code, empty.json()) == (400, {"error": "model is required"})
    missing = api.post("/api/copy", json={"source": "nope:1", "destination": "x:1"})
    assert (missing.status_code, missing.json()) == (404, {"error": 'model "nope:1" not found'})


def test_embed_and_legacy_embeddings(api: httpx.Client) -> None:
    r = api.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]}).json()
    assert list(r) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert len(r["embeddings"]) == 2
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-9) for v in r["embeddings"])
    cut = api.post("/api/embed", json={"model": "nomic-embed-text", "input": "a", "dimensions": 8})
    assert len(cut.json()["embeddings"][0]) == 8
    empty = api.post("/api/embed", json={"model": "nomic-embed-text"}).json()
    assert empty == {"model": "nomic-embed-text", "embeddings": []}
    bad = api.post("/api/embed", json={"model": "nomic-embed-text", "input": [1]})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})
    legacy = api.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"}).json()
    assert list(legacy) == ["embedding"] and len(legacy["embedding"]) == 768
    unknown = api.post("/api/embeddings", json={"model": "zz", "prompt": "a"})
    assert unknown.json() == {"error": 'model "zz" not found, try pulling it first'}


def test_go_json_escapes_angle_brackets_and_ampersand(api: httpx.Client) -> None:
    info = api.post("/api/show", json={"model": "llama3.1:8b"})
    assert "\\u003c|start_header_id|\\u003e" in info.text and "<|" not in info.text
