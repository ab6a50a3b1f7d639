"""The engine's state (`GET /_emulator/engine`) and how a runner's end is told, in the
words of Go's os/exec that Ollama's `llama runner process has terminated: ...` uses."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from app.emulator.llama_process import describe_exit


def test_the_filler_engine_is_always_running(emulator_url: str) -> None:
    reply = httpx.get(f"{emulator_url}/_emulator/engine", timeout=10)
    assert (reply.status_code, reply.json()) == (200, {"engine": "filler", "state": "running"})


@pytest.mark.parametrize(
    ("code", "told"),
    [
        ("import sys; sys.exit(3)", "exit status 3"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "signal: segmentation fault"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGILL)", "signal: illegal instruction"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "signal: killed"),
        ("import os; os.kill(os.getpid(), 40)", "signal: signal 40"),
    ],
)
def test_a_process_end_is_told_as_go_tells_it(code: str, told: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    info = os.waitid(os.P_PID, child.pid, os.WEXITED)
    assert info is not None
    child.returncode = 0  # reaped above
    description = describe_exit(info.si_code, info.si_status)
    # a core is dumped only where the limit allows it (`ulimit -c`): then Go says so too
    assert description in (told, f"{told} (core dumped)")
    assert description.endswith("(core dumped)") == (info.si_code == os.CLD_DUMPED)
