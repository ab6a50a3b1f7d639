"""llama.cpp supervised, as Ollama runs it in a runner process: a native crash of the
runner (SIGSEGV sent to it) is Ollama's error for the request in flight, a restart with
the cause in the log, and a `/readyz` that says the local model is down until it is back.
The install check (`ollama-gateway local-model check`) names such a crash and the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.real_model.conftest import MODEL, serving_local_model
from tests.support.servers import ROOT, stop_process

SEGV = "llama runner process has terminated: signal: segmentation fault"
LONG = {"model": MODEL, "options": {"num_predict": 400, "temperature": 0.0},
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}  # fmt: skip


def local_engine(url: str) -> dict[str, Any]:
    """The local backend's runner, as `/readyz` shows it (details: no key is needed)."""
    ready = httpx.get(f"{url}/readyz", timeout=10).json()
    engine: dict[str, Any] = next(b["engine"] for b in ready["backends"] if "engine" in b)
    return engine


class ReadyzWatch:
    """`/readyz` asked every few milliseconds in a thread, each answer kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                reply = client.get(f"{self.url}/readyz")
                self.answers.append((reply.status_code, reply.json()))
                time.sleep(0.01)

    def __enter__(self) -> ReadyzWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def until_ready(self, after: int, timeout: float = 90) -> None:
        """Wait for a 200 among the answers from index `after` on."""
        deadline = time.monotonic() + timeout
        while not any(code == 200 for code, _ in self.answers[after:]):
            assert time.monotonic() < deadline, self.answers[-1:]
            time.sleep(0.05)


def down_answers(answers: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The `/readyz` answers that said the local model was down."""
    return [body for code, body in answers if code == 503 and "local_model" in body["missing"]]


def test_a_runner_crash_mid_run_is_ollamas_error_then_a_restart(tmp_path: Path) -> None:
    with serving_local_model(tmp_path) as (url, log):
        first = local_engine(url)
        assert first["state"] == "running" and first["restarts"] == 0

        # A streamed chat: the runner dies after the first tokens have gone out.
        with (
            ReadyzWatch(url) as watch,
            httpx.stream("POST", f"{url}/api/chat", json=LONG, timeout=120) as reply,
        ):
            lines = reply.iter_lines()
            assert json.loads(next(lines))["done"] is False
            crashed_at = len(watch.answers)
            os.kill(first["pid"], signal.SIGSEGV)
            rest = [json.loads(line) for line in lines if line.strip()]
            assert reply.status_code == 200  # sent with the first line, as Ollama does
            assert rest[-1]["error"].startswith(SEGV), rest[-1]
            assert not any(line.get("done") for line in rest)
            watch.until_ready(crashed_at)
        down = down_answers(watch.answers[crashed_at:])
        assert down, "readyz never said the local model was down"
        local = next(b for b in down[0]["backends"] if "engine" in b)
        assert local["healthy"] is False and local["engine"]["state"] == "restarting"
        assert local["engine"]["last_exit"].startswith("signal: segmentation fault")
        assert "segmentation fault" in local["error"]

        # The next request is answered by the new runner.
        answered = httpx.post(
            f"{url}/api/chat",
            json={**LONG, "stream": False, "options": {"num_predict": 8, "temperature": 0.0}},
            timeout=120,
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["message"]["content"].strip()
        second = local_engine(url)
        assert second["state"] == "running" and second["restarts"] == 1
        assert second["pid"] != first["pid"]

        # A chat not streamed: the crash is its reply, Ollama's 500 and error.
        result: dict[str, httpx.Response] = {}
        asking = threading.Thread(
            target=lambda: result.update(
                reply=httpx.post(f"{url}/api/chat", json={**LONG, "stream": False}, timeout=120)
            )
        )
        asking.start()
        deadline = time.monotonic() + 60
        while not local_engine(url)["busy"]:
            assert time.monotonic() < deadline and asking.is_alive()
            time.sleep(0.02)
        os.kill(second["pid"], signal.SIGSEGV)
        asking.join(timeout=120)
        assert result["reply"].status_code == 500
        assert result["reply"].json()["error"].startswith(SEGV)

        deadline = time.monotonic() + 90
        while local_engine(url)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert local_engine(url)["restarts"] == 2
        logged = log.read_text()
        for pid in (first["pid"], second["pid"]):
            assert f"{SEGV} (pid {pid}, during a run); restarting it" in logged, logged


def runner_of(parent: int, timeout: float = 60) -> int:
    """The pid of the llama runner that process `parent` starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and b"app.emulator.llama_runner" in cmdline:
                return int(entry.name)
        time.sleep(0.01)
    raise AssertionError(f"process {parent} started no llama runner")


def test_the_check_names_a_crash_and_the_portable_rebuild() -> None:
    args = [sys.executable, "-m", "app.cli", "local-model", "check"]
    ok = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 1 token at num_ctx 2048" in ok.stdout

    check = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.kill(runner_of(check.pid), signal.SIGSEGV)
        _, err = check.communicate(timeout=120)
    finally:
        stop_process(check)
    lines = err.decode().strip().splitlines()
    assert check.returncode == 1 and len(lines) == 1, err
    assert "signal: segmentation fault" in lines[0]
    assert "pip cache remove llama_cpp_python;" in lines[0]
    assert "CMAKE_ARGS=-DGGML_NATIVE=OFF" in lines[0] and "llama-cpp-python==" in lines[0]
