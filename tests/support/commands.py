"""Run the gateway's commands as a deployment does: a process of its own, its output in a
file (read afterwards, e.g. to check no secret was written), stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.servers import ROOT, stop_process, wait_until_up


def gateway_argv(command: Sequence[str]) -> list[str]:
    """`ollama-gateway ARGS` as this checkout runs it (`python -m app.cli ARGS`)."""
    assert command[0] == "ollama-gateway", command
    return [sys.executable, "-m", "app.cli", *command[1:]]


def clean_env(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """This environment without any GATEWAY_ variable of ours, plus `env`; the checkout
    importable from `cwd` (which holds no .env file of a developer)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**base, "PYTHONPATH": str(ROOT), **env}


@contextlib.contextmanager
def started(
    command: Sequence[str], env: dict[str, str], log: Path, cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` (an `ollama-gateway` command line) running, output to `log`."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            gateway_argv(command),
            cwd=cwd,
            env=clean_env(env, cwd),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        stop_process(proc, timeout=15)


@contextlib.contextmanager
def serving(
    command: Sequence[str], env: dict[str, str], log: Path, cwd: Path, url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` started and answering `url`/healthz; its log in the error if it is not."""
    with started(command, env, log, cwd) as proc:
        try:
            wait_until_up(f"{url}/healthz", proc, deadline_s=60)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}\n--- {log.name}:\n{log.read_text(errors='replace')}"
            ) from None
        yield proc


def run(command: Sequence[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` run to its end (60 s at most), its output captured."""
    return subprocess.run(
        gateway_argv(command),
        cwd=cwd,
        env=clean_env(env, cwd),
        capture_output=True,
        text=True,
        timeout=60,
    )
