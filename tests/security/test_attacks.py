"""What an attacker's first hour found, case by case, on SQLite and PostgreSQL and on all
three surfaces (`/gateway`, Ollama's `/api`, OpenAI's `/v1`); and what held that hour,
which must keep holding."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.security.conftest import Deployment

LLAMA, QWEN = "llama3.1:8b", "qwen2.5:0.5b"
NUL, SURROGATE = "a\x00b", "a\ud800b"

# -- 1 and 2: text no database can hold ----------------------------------------------------

# (surface, path, body with the bad text at `field`, field as the error names it)
BAD_TEXT_REQUESTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("gateway", "/gateway/generate", {"model": LLAMA, "prompt": "{}"}, "prompt"),
    ("gateway", "/gateway/generate/stream", {"model": LLAMA, "prompt": "{}"}, "prompt"),
    (
        "gateway",
        "/gateway/chat",
        {"model": LLAMA, "messages": [{"role": "user", "content": "{}"}]},
        "messages.0.content",
    ),
    (
        "gateway",
        "/gateway/chat/stream",
        {"model": LLAMA, "messages": [{"role": "user", "content": "{}"}]},
        "messages.0.content",
    ),
    ("gateway", "/gateway/batches", {"model": LLAMA, "prompts": ["ok", "{}"]}, "prompts.1"),
    (
        "gateway",
        "/gateway/batches",
        {"model": LLAMA, "prompts": ["ok"], "name": "{}"},
        "name",
    ),
    ("gateway", "/gateway/benchmarks", {"model": LLAMA, "test_prompts": ["{}"]}, "test_prompts.0"),
    ("gateway", "/gateway/comparisons", {"models": [LLAMA], "prompt": "{}"}, "prompt"),
    ("gateway", "/gateway/comparisons/stream", {"models": [LLAMA], "prompt": "{}"}, "prompt"),
    (
        "gateway",
        "/gateway/generate",
        {"model": LLAMA, "prompt": "x", "options": {"system_prompt": "{}"}},
        "options.system_prompt",
    ),
    ("ollama", "/api/generate", {"model": LLAMA, "prompt": "{}", "stream": False}, "prompt"),
    ("ollama", "/api/generate", {"model": LLAMA, "prompt": "{}"}, "prompt"),
    (
        "ollama",
        "/api/chat",
        {"model": LLAMA, "messages": [{"role": "user", "content": "{}"}]},
        "messages.0.content",
    ),
    ("ollama", "/api/show", {"model": "{}"}, "model"),
    ("ollama", "/api/embed", {"model": "nomic-embed-text", "input": ["{}"]}, "input.0"),
    (
        "openai",
        "/v1/chat/completions",
        {"model": LLAMA, "messages": [{"role": "user", "content": "{}"}]},
        "messages.0.content",
    ),
    (
        "openai",
        "/v1/chat/completions",
        {"model": LLAMA, "stream": True, "messages": [{"role": "user", "content": "{}"}]},
        "messages.0.content",
    ),
    ("openai", "/v1/completions", {"model": LLAMA, "prompt": "{}"}, "prompt"),
    (
        "anthropic",
        "/v1/messages",
        {"model": LLAMA, "max_tokens": 5, "messages": [{"role": "user", "content": "{}"}]},
        "messages.0.content",
    ),
]


def _with_text(body: dict[str, Any], text: str) -> bytes:
    """The body as JSON with `text` where `{}` stands (JSON escapes for NUL and surrogates)."""
    encoded = json.dumps(body).replace('"{}"', json.dumps(text))
    return encoded.encode()


def _names_field(surface: str, reply: httpx.Response, field: str) -> None:
    """The surface's own error shape, naming the field."""
    body = reply.json()
    if surface == "gateway":
        assert reply.status_code == 422, reply.text
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert body["errors"][0]["loc"] == [
            "body",
            *[int(p) if p.isdigit() else p for p in field.split(".")],
        ]
        assert body["detail"].startswith(f"{field}: ")
    elif surface == "ollama":
        assert reply.status_code == 400, reply.text
        assert body["error"].startswith(f"{field}: ")
    elif surface == "anthropic":
        assert reply.status_code == 400, reply.text
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith(f"{field}: ")
    else:
        assert reply.status_code == 400, reply.text
        assert body["error"]["param"] == field and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("text", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize(
    ("surface", "path", "body", "field"),
    BAD_TEXT_REQUESTS,
    ids=[f"{p}:{f}" for _, p, _, f in BAD_TEXT_REQUESTS],
)
def test_text_a_database_cannot_hold_is_refused_at_the_edge_naming_the_field(
    deployment: Deployment, text: str, surface: str, path: str, body: dict[str, Any], field: str
) -> None:
    """Case 2: a 200 always means stored, so what cannot be stored is refused before the
    run; nothing reaches a backend or the results."""
    alice, admin = deployment.client("alice"), deployment.client("admin")
    before = admin.get("/gateway/results/stats").json()["total_count"]
    reply = alice.post(
        path, content=_with_text(body, text), headers={"content-type": "application/json"}
    )
    _names_field(surface, reply, field)
    assert admin.get("/gateway/results/stats").json()["total_count"] == before


def test_one_request_cannot_blind_the_audit_log(deployment: Deployment) -> None:
    """Case 1: NUL in a body, in a path and in a query (each refused at the edge), then 20
    denied admin attempts: every one of them is in the audit log. (An entry that still
    reaches the database with text it refuses is stored escaped and flagged:
    tests/storage/test_audit_store.py.)"""
    bob, admin = deployment.client("bob"), deployment.client("admin")
    reply = bob.post("/api/show", content=_with_text({"model": "{}"}, "x\x00y"))
    assert reply.status_code == 400 and reply.json()["error"].startswith("model: ")
    reply = bob.get("/gateway/results/a%00b")
    assert reply.status_code == 422 and reply.json()["errors"][0]["loc"] == ["path"]
    reply = bob.get("/gateway/results", params={"model": "x\x00"})
    assert reply.status_code == 422 and reply.json()["errors"][0]["loc"] == ["query", "model"]
    assert deployment.raw("GET", "/v1/models/a%00b", key="bob")[0] == 400
    for _ in range(20):
        assert bob.get("/gateway/keys").status_code == 403
    entries = admin.get("/gateway/audit", params={"actor": "bob", "limit": 1000}).json()["items"]
    denied = [e for e in entries if e["action"] == "GET /gateway/keys"]
    assert len(denied) == 20 and all(e["outcome"] == "denied" for e in denied)
    # refused before the key was checked: filed under the key's listed prefix
    prefix = f"unverified {deployment.keys['bob'][:12]}"
    refused = admin.get("/gateway/audit", params={"actor": prefix}).json()["items"]
    assert sorted(e["status"] for e in refused) == [400, 400, 422, 422]
    assert {e["outcome"] for e in refused} == {"failed"}


# -- 3: reports, jobs and stats are their owner's ------------------------------------------


def test_reports_jobs_and_stats_are_readable_by_their_owner_and_admins_only(
    deployment: Deployment,
) -> None:
    """Case 3: bob (a user key for qwen* only) reads none of alice's batches, benchmarks,
    comparisons or jobs, nor her counts; an admin allowed only qwen* sees alice's reports
    cut to qwen runs."""
    alice, bob = deployment.client("alice"), deployment.client("bob")
    admin, auditor = deployment.client("admin"), deployment.client("auditor")
    batch = alice.post("/gateway/batches", json={"model": LLAMA, "prompts": ["a", "b"]})
    bench = alice.post("/gateway/benchmarks", json={"model": LLAMA, "test_prompts": ["a"]})
    comparison = alice.post(
        "/gateway/comparisons", json={"models": [LLAMA, QWEN], "prompt": "side by side"}
    )
    job = alice.post(
        "/gateway/batches", json={"model": LLAMA, "prompts": ["j1", "j2"], "background": True}
    )
    assert (batch.status_code, bench.status_code, comparison.status_code) == (200, 201, 201)
    assert job.status_code == 202
    ids = {
        "batches": batch.json()["id"],
        "benchmarks": bench.json()["id"],
        "comparisons": comparison.json()["id"],
    }
    job_id = job.json()["id"]
    assert alice.get(f"/gateway/batches/jobs/{job_id}/events").status_code == 200  # to its end

    for kind, report_id in ids.items():
        own = alice.get(f"/gateway/{kind}/{report_id}")
        assert own.status_code == 200 and own.json()["principal"] == "alice"
        assert own.json()["runs"] and all(r["principal"] == "alice" for r in own.json()["runs"])
        assert bob.get(f"/gateway/{kind}/{report_id}").status_code == 404
        assert report_id not in {i["id"] for i in bob.get(f"/gateway/{kind}").json()["items"]}
        assert report_id in {i["id"] for i in admin.get(f"/gateway/{kind}").json()["items"]}
        assert admin.get(f"/gateway/{kind}/{report_id}").status_code == 200
    assert bob.get(f"/gateway/batches/jobs/{job_id}").status_code == 404
    assert bob.get(f"/gateway/batches/jobs/{job_id}/events").status_code == 404
    assert admin.get(f"/gateway/batches/jobs/{job_id}").json()["status"] == "succeeded"

    bob_stats = bob.get("/gateway/results/stats").json()
    alice_stats = alice.get("/gateway/results/stats").json()
    all_stats = admin.get("/gateway/results/stats").json()
    assert bob_stats["by_type"]["reports"]["count"] == 0 and bob_stats["database"] is None
    assert alice_stats["by_type"]["reports"]["count"] >= 4  # its own: 2 batches, 1 + 1
    assert all_stats["total_count"] >= alice_stats["total_count"] and all_stats["database"]

    # the reader's allowlist cuts what it sees inside reports
    assert auditor.get(f"/gateway/batches/{ids['batches']}").status_code == 404
    assert auditor.get(f"/gateway/benchmarks/{ids['benchmarks']}").status_code == 404
    seen = auditor.get(f"/gateway/comparisons/{ids['comparisons']}").json()
    assert [r["model_name"] for r in seen["runs"]] == [QWEN]
    assert list(seen["report"]["results"]) == [QWEN]
    listed = auditor.get("/gateway/results", params={"limit": 500}).json()["items"]
    assert listed and {r["model_name"] for r in listed} == {QWEN}


# -- 4: only Ollama's API is relayed -------------------------------------------------------

TRAVERSALS = [
    "/api/..%2F_emulator/reset",
    "/api/..%2f_emulator%2freset",
    "/api/%2E%2E/_emulator/reset",
    "/api/show/..%2F..%2F_emulator/reset",
    "/api/blobs/..%2F..%2F_emulator/reset",
    "/api/_emulator/reset",
    "/api/tags/",
    "/api//generate",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_only_ollamas_api_paths_are_relayed(deployment: Deployment, path: str) -> None:
    """Case 4: an admin's request for a backend path outside Ollama's API is the gateway's
    404 and never reaches the backend (its faults, which a reset would clear, stay set)."""
    httpx.post(f"{deployment.emulator}/_emulator/faults", json={"stall_ms": 1}).raise_for_status()
    try:
        status, body = deployment.raw("POST", path, b"{}", key="admin")
        assert (status, body) == (404, b"404 page not found")
        state = httpx.get(f"{deployment.emulator}/_emulator/state").json()
        assert state["faults"]["stall_ms"] == 1
    finally:
        httpx.post(f"{deployment.emulator}/_emulator/reset").raise_for_status()


def test_a_known_path_with_another_method_is_405_from_the_gateway(deployment: Deployment) -> None:
    status, body = deployment.raw("GET", "/api/delete", key="admin")
    assert (status, body) == (405, b"405 method not allowed")


# -- 5: deeply nested JSON -----------------------------------------------------------------

DEEP = (
    b'{"model": "llama3.1:8b", "prompt": "x", "options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
)


@pytest.mark.parametrize(
    "path", ["/api/generate", "/api/show", "/api/chat", "/gateway/generate", "/v1/chat/completions"]
)
def test_deeply_nested_json_is_a_400_and_the_connection_stays_usable(
    deployment: Deployment, path: str
) -> None:
    """Case 5: depth 100,000 (a user key is enough) is a 400 on every surface; the next
    request on the same connection is answered."""
    alice = deployment.client("alice")
    reply = alice.post(path, content=DEEP, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert "nests deeper than the limit of 64 levels" in reply.text
    assert alice.get("/gateway/models").status_code == 200


def test_json_as_deep_as_the_limit_passes(deployment: Deployment) -> None:
    """64 levels (the default limit) are accepted: a JSON-schema `format` nested deeply."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(30):  # 2 levels each, plus the body and `format`: 62
        schema = {"type": "object", "properties": {"a": schema}}
    body = {"model": LLAMA, "prompt": "x", "options": {"format": schema, "max_tokens": 2}}
    reply = deployment.client("alice").post("/gateway/generate", json=body)
    assert reply.status_code == 200, reply.text


# -- 6: errors in the gateway's words ------------------------------------------------------

LIBRARY_WORDS = ("TransferEncodingError", "payload", "aiohttp", "httpx", "Traceback", "Errno")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": LLAMA, "prompt": "hello"}),
        ("/api/chat", {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}),
        ("/gateway/generate/stream", {"model": LLAMA, "prompt": "hello"}),
        ("/gateway/generate", {"model": LLAMA, "prompt": "hello"}),
        ("/gateway/comparisons/stream", {"models": [LLAMA, QWEN], "prompt": "hello"}),
        (
            "/v1/chat/completions",
            {"model": LLAMA, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
)
def test_a_backend_dying_mid_reply_is_told_in_the_gateways_words(
    deployment: Deployment, path: str, body: dict[str, Any]
) -> None:
    """Case 6: the emulator cuts the connection after 3 chunks."""
    faults = {"cut_after_chunks": 3}
    httpx.post(f"{deployment.emulator}/_emulator/faults", json=faults).raise_for_status()
    try:
        reply = deployment.client("alice").post(path, json=body)
    finally:
        httpx.post(f"{deployment.emulator}/_emulator/reset").raise_for_status()
    assert "the backend closed the connection mid-reply" in reply.text
    assert not any(word in reply.text for word in LIBRARY_WORDS), reply.text


# -- 7: readiness shows internals to admins only ---------------------------------------------


@pytest.mark.parametrize("key", [None, "alice", "bob", "admin"])
def test_readyz_shows_details_to_an_admin_key_only(deployment: Deployment, key: str | None) -> None:
    reply = deployment.client(key).get("/readyz")
    assert reply.status_code == 200
    if key == "admin":
        assert reply.json()["backends"][0]["url"] == deployment.emulator
    else:
        assert reply.json() == {"status": "ready"}
        assert deployment.emulator.split("//")[1] not in reply.text


# -- 8: bad text relayed to a backend --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", b'{"model": "llama3.1:8b", "prompt": "\xff\xfe bad", "stream": false}'),
        (
            "/api/chat",
            b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "\xc3"}]}',
        ),
        ("/gateway/generate", b'{"model": "llama3.1:8b", "prompt": "\xff"}'),
        (
            "/v1/chat/completions",
            b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "\xff"}]}',
        ),
    ],
)
def test_invalid_utf8_is_a_4xx_with_an_error_body(
    deployment: Deployment, path: str, body: bytes
) -> None:
    """Case 8: bodies that are not UTF-8 get a 4xx JSON error on every surface (on `/api`,
    the backend's own 400, as Ollama answers), never a 500 or plain text."""
    reply = deployment.client("alice").post(path, content=body)
    assert 400 <= reply.status_code < 500, reply.text
    assert reply.headers["content-type"].startswith(
        ("application/json", "application/problem+json")
    )


def test_the_emulator_answers_a_lone_surrogate_as_ollama_does(deployment: Deployment) -> None:
    """Case 8, at the source: the emulator itself answers 400 with an error body."""
    body = b'{"model": "llama3.1:8b", "prompt": "\\ud800", "stream": false}'
    reply = httpx.post(f"{deployment.emulator}/api/generate", content=body)
    assert reply.status_code == 400 and "error" in reply.json()


# -- what held, and must keep holding -------------------------------------------------------

SURFACE_POSTS = [
    "/gateway/generate",
    "/api/generate",
    "/v1/chat/completions",
]


@pytest.mark.parametrize("path", SURFACE_POSTS)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_bodies_are_413(deployment: Deployment, path: str, declared: bool) -> None:
    big = b'{"model": "llama3.1:8b", "prompt": "' + b"x" * (1_048_576 + 10) + b'"}'
    if declared:
        status, _ = deployment.raw("POST", path, big, key="alice")
    else:
        client = deployment.client("alice")
        status = client.post(path, content=iter([big[:1000], big[1000:]])).status_code
    assert status == 413


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "a%0D%0Ab", "a%00b", "%0A"]
)
def test_odd_model_names_on_the_gateway_are_4xx(deployment: Deployment, name: str) -> None:
    status, body = deployment.raw("GET", f"/gateway/models/{name}", key="alice")
    assert status in (404, 422), body
    status, body = deployment.raw(
        "POST",
        "/gateway/generate",
        json.dumps({"model": name.replace("%0D%0A", "\r\n"), "prompt": "x"}).encode(),
        key="alice",
        headers={"content-type": "application/json"},
    )
    assert status in (404, 422), body


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "llama3.1:8b", "prompt": "x", "options": {"temperature": NaN}}',
        b'{"model": "llama3.1:8b", "prompt": "x", "options": {"temperature": Infinity}}',
        b'{"model": "llama3.1:8b", "prompt": "x", "options": {"max_tokens": 1' + b"0" * 400 + b"}}",
        b'{"model": "llama3.1:8b", "prompt": "x", "options": {"top_k": -1e999}}',
    ],
)
@pytest.mark.parametrize("path", SURFACE_POSTS)
def test_nan_infinity_and_huge_numbers_are_4xx_or_served(
    deployment: Deployment, body: bytes, path: str
) -> None:
    alice = deployment.client("alice")
    if path == "/v1/chat/completions":
        body = body.replace(b'"prompt": "x"', b'"messages": [{"role": "user", "content": "x"}]')
        body = body.replace(b'"options": {', b'"x_options": {')
    reply = alice.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code < 500, reply.text


def test_duplicate_keys_the_last_wins_for_the_check_and_the_run(deployment: Deployment) -> None:
    """bob may use qwen* only: a body naming llama then qwen is checked and run as qwen; one
    naming qwen then llama is refused."""
    bob = deployment.client("bob")
    ok = b'{"model": "llama3.1:8b", "model": "qwen2.5:0.5b", "prompt": "x"'
    refused = b'{"model": "qwen2.5:0.5b", "model": "llama3.1:8b", "prompt": "x"'
    for path, end in (("/gateway/generate", b"}"), ("/api/generate", b', "stream": false}')):
        reply = bob.post(path, content=ok + end, headers={"content-type": "application/json"})
        assert reply.status_code == 200, reply.text
        model = reply.json()["model" if path == "/api/generate" else "model_name"]
        assert model.startswith("qwen")
        refused_reply = bob.post(
            path, content=refused + end, headers={"content-type": "application/json"}
        )
        assert refused_reply.status_code == 403, refused_reply.text


ADMIN_ENDPOINTS = [
    ("GET", "/gateway/keys"),
    ("POST", "/gateway/keys"),
    ("GET", "/gateway/audit"),
    ("GET", "/gateway/config"),
    ("PATCH", "/gateway/config"),
    ("GET", "/gateway/backends"),
    ("POST", "/gateway/backends"),
    ("POST", "/gateway/pulls"),
    ("POST", "/gateway/results/cleanup"),
    ("GET", "/metrics"),
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/copy"),
    ("POST", "/api/create"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
def test_every_admin_endpoint_is_403_for_a_user_key(
    deployment: Deployment, method: str, path: str
) -> None:
    reply = deployment.client("alice").request(method, path, json={})
    assert reply.status_code == 403, reply.text


def test_a_revoked_key_is_401_on_every_surface(deployment: Deployment) -> None:
    admin = deployment.client("admin")
    made = admin.post("/gateway/keys", json={"name": "short-lived", "scope": "user"})
    assert made.status_code == 201
    key = made.json()["key"]
    assert admin.delete("/gateway/keys/short-lived").status_code in (200, 204)
    revoked = deployment.client()
    revoked.headers["Authorization"] = f"Bearer {key}"
    for method, path in (
        ("POST", "/gateway/generate"),
        ("POST", "/api/generate"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/api/tags"),
    ):
        assert revoked.request(method, path, json={}).status_code == 401
