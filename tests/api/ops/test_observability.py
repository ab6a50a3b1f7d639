"""Request ids, Prometheus metrics, JSON access logs, nosniff and CORS."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings, set_faults
from tests.support.servers import answer_lifespan, free_port, running_process, serving_in_thread

RUN = {"model": "llama3.1:8b", "prompt": "hello", "options": {"max_tokens": 4}}


@pytest.fixture
def gateway(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        yield url


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if sample == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_change_after_requests(gateway: str, emulator_url: str) -> None:
    before = httpx.get(f"{gateway}/metrics").text
    assert httpx.post(f"{gateway}/gateway/generate", json=RUN, timeout=10).status_code == 200
    set_faults(emulator_url, token_delay_ms=100)  # the stream stays open a while
    with httpx.stream("POST", f"{gateway}/gateway/generate/stream", json=RUN) as reply:
        during = httpx.get(f"{gateway}/metrics").text
        reply.read()
    assert httpx.post(f"{gateway}/gateway/generate", json={}).status_code == 422
    after = httpx.get(f"{gateway}/metrics").text

    route = {"route": "/gateway/generate", "method": "POST"}
    assert (
        metric(after, "gateway_requests_total", **route, status="200")
        == metric(before, "gateway_requests_total", **route, status="200") + 1
    )
    assert metric(after, "gateway_requests_total", **route, status="422") == 1
    assert metric(after, "gateway_request_duration_seconds_count", route="/gateway/generate") == 2
    assert metric(during, "gateway_inflight_streams") == 1
    assert metric(after, "gateway_inflight_streams") == 0
    out = metric(after, "gateway_tokens_total", team="", model="llama3.1:8b", direction="output")
    before_out = metric(
        before, "gateway_tokens_total", team="", model="llama3.1:8b", direction="output"
    )
    assert out - before_out == 8
    assert (
        metric(after, "gateway_tokens_total", team="", model="llama3.1:8b", direction="prompt") > 0
    )
    assert metric(after, "gateway_backend_seconds_total", team="", model="llama3.1:8b") > 0
    assert metric(after, "gateway_time_to_first_token_seconds_count", model="llama3.1:8b") == 2
    assert metric(after, "gateway_runs_total", model="llama3.1:8b", surface="gateway",
                  outcome="succeeded") == 2  # fmt: skip
    assert metric(after, "gateway_backend_up") == 1
    assert "gateway_backend_queue_depth" in after and "gateway_backend_outstanding" in after
    backend = next(
        found.group(1)
        for found in [re.search(r'gateway_backend_up\{backend="([^"]+)"\}', after)]
        if found
    )
    assert metric(after, "gateway_backend_tokens_total", backend=backend,
                  model="llama3.1:8b") == out  # fmt: skip


def test_the_grafana_dashboard_reads_metrics_the_gateway_exports(gateway: str) -> None:
    """Every metric deploy/grafana's dashboard queries is one `/metrics` has, once a run
    was made (histograms and counters by their sample names)."""
    assert httpx.post(f"{gateway}/gateway/generate", json=RUN, timeout=10).status_code == 200
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in httpx.get(f"{gateway}/metrics").text.splitlines()
        if line and not line.startswith("#")
    }
    dashboard = json.loads(
        (Path(__file__).resolve().parents[3] / "deploy/grafana/ollama-gateway.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {name for expr in exprs for name in re.findall(r"\b(gateway_[a-z_]+)", expr)}
    assert len(queried) >= 10
    # Rows escaped and the spool may have no sample yet; their families are still listed.
    families = httpx.get(f"{gateway}/metrics").text
    missing = [q for q in queried if q not in exported and f"# TYPE {q}" not in families
               and f"# TYPE {q.removesuffix('_total')}" not in families]  # fmt: skip
    assert missing == []


def test_openmetrics_is_served_to_a_scraper_that_asks(gateway: str) -> None:
    """Prometheus asking for OpenMetrics gets it (the format exemplars need); the text
    format stays the default."""
    plain = httpx.get(f"{gateway}/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    asked = httpx.get(
        f"{gateway}/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    )
    assert asked.headers["content-type"].startswith("application/openmetrics-text")
    assert asked.text.rstrip().endswith("# EOF")


def test_runs_through_every_surface_are_counted(gateway: str) -> None:
    httpx.post(f"{gateway}/api/generate", json={**RUN, "stream": False})
    httpx.post(f"{gateway}/v1/completions", json={"model": "llama3.1:8b", "prompt": "x"})
    text = httpx.get(f"{gateway}/metrics").text
    for surface in ("ollama", "openai"):
        assert metric(text, "gateway_runs_total", model="llama3.1:8b", surface=surface,
                      outcome="succeeded") == 1  # fmt: skip


class HeaderRecorder:
    """A stand-in backend that records the request headers it gets."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = (
            b'{"models":[]}'
            if scope["path"] in ("/api/tags", "/api/ps")
            else b'{"version":"0.33.0"}'
        )
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json; charset=utf-8")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def test_the_request_id_is_echoed_and_passed_to_the_backend(tmp_path: Path) -> None:
    recorder = HeaderRecorder()
    with (
        serving_in_thread(recorder) as backend,
        serving_in_thread(create_app(gateway_settings([backend], tmp_path))) as url,
    ):
        given = httpx.get(f"{url}/api/version", headers={"X-Request-ID": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        assert recorder.seen[-1]["x-request-id"] == "trace-42"
        made = httpx.get(f"{url}/api/version")
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
        assert recorder.seen[-1]["x-request-id"] == made.headers["x-request-id"]
        odd = httpx.get(f"{url}/api/version", headers={"X-Request-ID": "bad id\t<x>"})
        assert odd.headers["x-request-id"] != "bad id\t<x>"


def test_every_response_says_nosniff(gateway: str) -> None:
    replies = [
        httpx.post(f"{gateway}/gateway/generate", json=RUN),
        httpx.post(f"{gateway}/gateway/generate", json={"model": 3}),
        httpx.post(f"{gateway}/gateway/generate/stream", json=RUN),
        httpx.post(f"{gateway}/api/generate", json=RUN),
        httpx.get(f"{gateway}/nowhere"),
        httpx.post(f"{gateway}/gateway/generate", content=b"x" * (2 << 20)),
    ]
    assert [r.status_code for r in replies] == [200, 422, 200, 200, 404, 413]
    assert all(r.headers["x-content-type-options"] == "nosniff" for r in replies)


def test_cors_is_off_by_default_and_on_for_listed_origins(
    gateway: str, emulator_url: str, tmp_path: Path
) -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    closed = httpx.options(f"{gateway}/gateway/generate", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    settings = gateway_settings([emulator_url], tmp_path, cors_origins=["https://ui.example"])
    with serving_in_thread(create_app(settings)) as url:
        opened = httpx.options(f"{url}/gateway/generate", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "https://ui.example"
        other = httpx.options(
            f"{url}/gateway/generate", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_serve_writes_json_log_lines_with_the_request_id(emulator_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "GATEWAY_BACKENDS": emulator_url,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/logs.db",
        "GATEWAY_LOG_LEVEL": "info",
    }
    args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/healthz", env=env) as proc:
        httpx.post(f"{url}/gateway/generate", json=RUN, headers={"X-Request-ID": "log-me-1"})
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("request_id") == "log-me-1"]
    assert access and access[-1]["logger"] == "ollama_gateway.access"
    assert access[-1]["status"] == 200 and access[-1]["route"] == "/gateway/generate"
