"""`ollama-gateway serve` processes that tests start, kill (SIGKILL), stop (SIGTERM) and
start again: replicas of one deployment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tests.support.servers import ROOT, free_port, stop_process, wait_until_up

__all__ = ["Replica", "replicas", "wait_for"]

START_DEADLINE_S = 60.0
"""A replica's start: imports and the schema take a few seconds, many more on a shared,
loaded machine (2 cores, 8 processes ready to run: 20 s was not enough)."""


class Replica:
    """One `ollama-gateway serve` process; `kill()` is SIGKILL, `start()` again after it."""

    def __init__(self, env: dict[str, str], args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "GATEWAY_PORT": str(self.port)}
        self.args = list(args)
        self.proc: Any = None

    def start(self) -> Replica:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_up(self.url + "/healthz", self.proc, deadline_s=START_DEADLINE_S)
        return self

    def drain(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`ollama-gateway drain` for this replica's port, as a preStop hook runs it:
        returns when its requests in flight are done."""
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "drain"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def terminate(self) -> None:
        """SIGTERM, as a deploy or Kubernetes sends it; `wait()` for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return int(self.proc.wait(timeout=timeout))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15)


@contextlib.contextmanager
def replicas(n: int, env: dict[str, str]) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(n):
            started.append(Replica(env).start())
        yield started
    finally:
        for replica in started:
            replica.stop()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
