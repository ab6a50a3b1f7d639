"""OpenTelemetry traces from a real `serve` process to a small OTLP/HTTP receiver.

One `serve` per case (the tracer provider is per process), exporting to a receiver in
this test on loopback, in front of a recording proxy (the stand-in backend that notes the
`traceparent` it receives) and the emulator. A generation, a chat stream, an `/api`
relay and a background batch each make one trace: the request, the key check and rate
limit, the pool's choice, the backend call with the GenAI attributes and a first-token
event, the HTTP request whose `traceparent` the backend saw, the storage write (the
group commit, linked to the runs), the job continuing its request's trace. And with
tracing off: no SDK imported, no exporter thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.recording_proxy import RecordingProxy
from tests.support.servers import ROOT, free_port, serving_in_thread, stop_process, wait_until_up

MODEL = "llama3.1:8b"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without OTEL_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def _key(env: dict[str, str]) -> str:
    """An admin key with a rate limit (so the rate-limit span is made), created offline."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "tracer",
         "--scope", "admin", "--rpm", "10000"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.split()[-1]


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def _descends(spans: list[ReceivedSpan], span_id: str, ancestor: ReceivedSpan) -> bool:
    by_id = {s.span_id: s for s in spans}
    current = by_id.get(span_id)
    while current is not None:
        if current.span_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_span_id)
    return False


def _strings(span: ReceivedSpan) -> Iterator[str]:
    def walk(value: object) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from walk(v)

    yield span.name
    yield from walk(span.attributes)
    for name, attributes, _ in span.events:
        yield name
        yield from walk(attributes)


class Gateway:
    def __init__(self, url: str, key: str, log: Path, content: bool) -> None:
        self.url = url
        self.content = content
        self.headers = {"Authorization": f"Bearer {key}"}
        self.log = log


@pytest.fixture
def traced(
    request: pytest.FixtureRequest, emulator_url: str, tmp_path: Path
) -> Iterator[tuple[Gateway, OtlpReceiver, RecordingProxy]]:
    transport, content = request.param
    proxy = RecordingProxy(emulator_url)
    with otlp_receiver() as receiver, serving_in_thread(proxy) as backend:
        port = free_port()
        env = _clean_env(
            GATEWAY_BACKENDS=backend,
            GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
            GATEWAY_SPOOL_DIR=str(tmp_path / "spool"),
            GATEWAY_PORT=str(port),
            GATEWAY_HTTP_TRANSPORT=transport,
            GATEWAY_TRACE_CONTENT="true" if content else "false",
            GATEWAY_LOG_FORMAT="json",
            GATEWAY_BATCH_SYNC_MAX="1",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_SERVICE_NAME="gateway-under-test",
            OTEL_BSP_SCHEDULE_DELAY="50",
        )
        key = _key(env)
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                wait_until_up(url + "/healthz", proc)
                yield Gateway(url, key, log, content), receiver, proxy
            finally:
                stop_process(proc)


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def _server_span(spans: list[ReceivedSpan], route: str) -> ReceivedSpan:
    servers = [s for s in spans if s.kind == "server" and s.attributes.get("http.route") == route]
    assert len(servers) == 1, (route, [(s.name, s.attributes) for s in spans if s.kind == "server"])
    return servers[0]


@pytest.mark.parametrize(
    "traced",
    [("aiohttp", False), ("httpx", True)],
    ids=["aiohttp-no-content", "httpx-with-content"],
    indirect=True,
)
def test_each_request_is_one_trace_from_request_to_backend_to_database(
    traced: tuple[Gateway, OtlpReceiver, RecordingProxy],
) -> None:
    gateway, receiver, proxy = traced
    content = gateway.content
    secret = uuid.uuid4().hex[:12]
    prompts = {
        "generate": f"generate secret {secret}",
        "chat": f"chat secret {secret}",
        "relay": f"relay secret {secret}",
        "batch": f"batch secret {secret}",
    }
    ids = {name: _traceparent() for name in prompts}
    h = gateway.headers
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        generated = http.post(
            "/gateway/generate",
            json={"model": MODEL, "prompt": prompts["generate"]},
            headers={**h, "traceparent": ids["generate"][2]},
        )
        assert generated.status_code == 200, generated.text
        chat = http.post(
            "/gateway/chat/stream",
            json={"model": MODEL, "messages": [{"role": "user", "content": prompts["chat"]}]},
            headers={**h, "traceparent": ids["chat"][2]},
        )
        assert chat.status_code == 200 and "event: result" in chat.text, chat.text
        relayed = http.post(
            "/api/chat",
            json={"model": MODEL, "messages": [{"role": "user", "content": prompts["relay"]}]},
            headers={**h, "traceparent": ids["relay"][2]},
        )
        assert relayed.status_code == 200, relayed.text
        assert json.loads(relayed.text.strip().splitlines()[-1])["done"] is True
        batch = http.post(
            "/gateway/batches",
            json={"model": MODEL, "prompts": [prompts["batch"], prompts["batch"] + " again"]},
            headers={**h, "traceparent": ids["batch"][2]},
        )
        assert batch.status_code == 202, batch.text
        job = batch.json()["id"]
        deadline = time.monotonic() + 30
        while http.get(f"/gateway/jobs/{job}", headers=h).json()["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, "the batch job did not finish"
            time.sleep(0.1)
        stored = {
            r["prompt"]: r for r in http.get("/gateway/results?limit=50", headers=h).json()["items"]
        }
        metrics = http.get(
            "/metrics", headers={**h, "Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert metrics.headers["content-type"].startswith("application/openmetrics-text")

    def complete(spans: list[ReceivedSpan]) -> bool:
        """Every span the checks below look at has arrived (they come in batches)."""
        links = {link for s in spans if s.name == "gateway.storage.commit" for link in s.links}
        for case in ("generate", "chat", "relay"):
            trace = [s for s in spans if s.trace_id == ids[case][0]]
            names = {s.name for s in trace}
            wanted = {"gateway.auth.key_check", "gateway.rate_limit", "gateway.pool.choose",
                      "gateway.storage.save"}  # fmt: skip
            if not wanted <= names or not any(s.kind == "server" for s in trace):
                return False
            runs = [s for s in trace if s.name.startswith(("chat ", "text_completion "))]
            if not runs or not any(s.parent_span_id == runs[0].span_id for s in trace):
                return False
            saves = [s for s in trace if s.name == "gateway.storage.save"]
            if not all((s.trace_id, s.span_id) in links for s in saves):
                return False
        batch = [s for s in spans if s.trace_id == ids["batch"][0]]
        runs = [s for s in batch if s.name == f"text_completion {MODEL}"]
        return any(s.name == "gateway.job batch" for s in batch) and len(runs) == 2

    spans = receiver.wait_for(complete)
    assert {s.service for s in spans} == {"gateway-under-test"}

    cases = {
        "generate": ("/gateway/generate", "text_completion"),
        "chat": ("/gateway/chat/stream", "chat"),
        "relay": ("/api/chat", "chat"),
    }
    commits = [s for s in spans if s.name == "gateway.storage.commit"]
    for case, (route, operation) in cases.items():
        trace_id, parent, _ = ids[case]
        trace = [s for s in spans if s.trace_id == trace_id]
        # The incoming traceparent is continued: the server span is its child.
        server = _server_span(trace, route)
        assert server.parent_span_id == parent
        key_check = _one(trace, "gateway.auth.key_check")
        assert key_check.attributes["gateway.key.name"] == "tracer"
        assert _one(trace, "gateway.rate_limit").attributes["gateway.rate_limit.limited"] is False
        assert _descends(trace, key_check.span_id, server)
        # The pool's choice: candidates, the chosen backend, the wait for its slot.
        choice = _one(trace, "gateway.pool.choose")
        assert len(choice.attributes["gateway.pool.candidates"]) == 1, choice.attributes
        chosen = choice.attributes["gateway.pool.chosen"]
        assert chosen == choice.attributes["gateway.pool.candidates"][0]
        assert choice.attributes["gateway.pool.queue_wait"] >= 0
        # The backend call, with the GenAI conventions.
        run = _one(trace, f"{operation} {MODEL}")
        assert run.kind == "client"
        assert _descends(trace, run.span_id, server)
        attributes = run.attributes
        assert attributes["gen_ai.operation.name"] == operation
        assert attributes["gen_ai.system"] == "ollama"
        assert attributes["gen_ai.request.model"] == MODEL
        assert attributes["gen_ai.response.model"] == MODEL
        result = stored[prompts[case]]
        assert result["metadata"]["prompt_eval_count"] > 0
        assert attributes["gen_ai.usage.input_tokens"] == result["metadata"]["prompt_eval_count"]
        assert attributes["gen_ai.usage.output_tokens"] == result["metadata"]["eval_count"]
        assert attributes["gateway.backend"] == chosen
        first = [e for e in run.events if e[0] == "gen_ai.first_token"]
        assert len(first) == 1 and run.start_ns <= first[0][2] <= run.end_ns
        # The HTTP request to the backend is the run's child, and its traceparent reached
        # the backend.
        http_spans = [s for s in _children(trace, run) if s.kind == "client"]
        assert len(http_spans) == 1, [s.name for s in _children(trace, run)]
        seen = [
            a.traceparent
            for a in proxy.arrivals
            if a.traceparent and a.traceparent.split("-")[1] == trace_id
        ]
        assert len(seen) == 1, [a.traceparent for a in proxy.arrivals]
        assert seen[0].split("-")[2] == http_spans[0].span_id
        # The storage write: this run's save span, linked from one group-commit span.
        save = _one(trace, "gateway.storage.save")
        linking = [c for c in commits if (trace_id, save.span_id) in c.links]
        assert len(linking) == 1
        assert linking[0].trace_id != trace_id  # the commit is a trace of its own
        statements = [s for s in spans if s.parent_span_id == linking[0].span_id]
        assert statements, "the commit's SQL statements are its children"
        # Prompts and answers only with GATEWAY_TRACE_CONTENT=true.
        texts = [t for s in trace for t in _strings(s)]
        if content:
            assert any(prompts[case] in t for t in texts)
            assert result["response"][:20] in attributes["gen_ai.output.messages"]
        else:
            assert not any(secret in t for t in texts), [t for t in texts if secret in t]
            assert result["response"][:20] not in " ".join(texts)

    if not content:
        assert not any(secret in t for s in spans for t in _strings(s))

    # The job continues the trace of the request that started it; its runs are in it.
    batch_trace = [s for s in spans if s.trace_id == ids["batch"][0]]
    job_span = _one(batch_trace, "gateway.job batch")
    assert _server_span(batch_trace, "/gateway/batches").span_id != job_span.span_id
    job_runs = [s for s in batch_trace if s.name == f"text_completion {MODEL}"]
    assert len(job_runs) == 2
    assert all(_descends(batch_trace, r.span_id, job_span) for r in job_runs)

    # Log lines carry the trace next to the request id; latency histograms carry exemplars.
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines()
             if line.startswith("{")]  # fmt: skip
    access = [
        line for line in lines
        if line.get("logger") == "ollama_gateway.access" and line.get("route") == "/gateway/generate"
    ]  # fmt: skip
    assert access and access[0]["trace_id"] == ids["generate"][0]
    assert access[0]["request_id"] and access[0]["span_id"]
    assert (
        'trace_id="' in metrics.text and "gateway_request_duration_seconds_bucket" in metrics.text
    )


OFF_PROBE = """
import json, sys, threading, httpx
from app.main import create_app
from app.settings import Settings
from tests.support.servers import serving_in_thread

app = create_app(Settings())
with serving_in_thread(app) as url:
    answer = httpx.post(url + "/gateway/generate", json={"model": "llama3.1:8b", "prompt": "hi"},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    print(json.dumps({
        "modules": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
        "threads": [t.name for t in threading.enumerate()],
    }))
"""


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_tracing_off_imports_no_sdk_and_runs_no_exporter(
    on: bool, emulator_url: str, tmp_path: Path
) -> None:
    """With no OTLP endpoint a gateway serves without the SDK in `sys.modules` and no
    exporter thread; the same probe with one finds both (so the check can fail)."""
    env = _clean_env(
        GATEWAY_BACKENDS=emulator_url,
        GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        GATEWAY_SPOOL_DIR=str(tmp_path / "spool"),
        GATEWAY_LOG_LEVEL="warning",
    )
    if on:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
        env["OTEL_BSP_EXPORT_TIMEOUT"] = "100"
    out = subprocess.run(
        [sys.executable, "-c", OFF_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    sdk = [
        m for m in seen["modules"] if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))
    ]
    exporter_threads = [t for t in seen["threads"] if t.startswith("OtelBatch")]
    if on:
        assert sdk and exporter_threads
    else:
        # The API alone may be there (FastAPI imports it when it is installed); the SDK,
        # the exporters and the instrumentations are not.
        assert sdk == [] and exporter_threads == [], seen
        assert not any(m.startswith("opentelemetry.instrumentation") for m in seen["modules"])


GRPC_PROBE = """
import httpx
from app.main import create_app
from app.settings import Settings
from tests.support.servers import serving_in_thread

with serving_in_thread(create_app(Settings())) as url:
    answer = httpx.post(url + "/gateway/generate", json={"model": "llama3.1:8b", "prompt": "hi"},
                        timeout=60)
    assert answer.status_code == 200, answer.text
"""


def test_traces_go_over_grpc_when_the_protocol_says_so(emulator_url: str, tmp_path: Path) -> None:
    """`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`: the same spans reach a gRPC OTLP receiver (the
    process exports what is left as it ends)."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[str] = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: object, context: object) -> object:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    received.extend(span.name for span in scope_spans.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = _clean_env(
            GATEWAY_BACKENDS=emulator_url,
            GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
            GATEWAY_SPOOL_DIR=str(tmp_path / "spool"),
            GATEWAY_LOG_LEVEL="warning",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        )
        out = subprocess.run(
            [sys.executable, "-c", GRPC_PROBE], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=90,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    finally:
        server.stop(grace=None)
    assert f"text_completion {MODEL}" in received, received
    assert "POST /gateway/generate" in received
