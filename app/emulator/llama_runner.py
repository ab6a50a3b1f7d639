"""The llama.cpp runner: the child process that holds the model, as Ollama's runner does.

`python -m app.emulator.llama_runner --gguf PATH --fd N` loads the GGUF file with
`llama-cpp-python` at `DEFAULT_NUM_CTX`, says `ready` on the socket `N` (its parent's
socket pair, see `llama_process.py`) and then runs one request at a time: a generation
streams its text as `piece`s and ends with `done` (the reason and Ollama's counters); an
embedding answers `vectors`; a failure that Python sees answers `error`. A `cancel` for the
running request stops it at the next token. A native crash takes only this process down:
the engine in the emulator sees the socket end, answers the request in flight with
Ollama's error and starts another runner.

The runner ends when its socket does (its parent is gone); Ctrl-C in the terminal is for
the parent, which ends it that way.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from app.emulator.llama_process import encode

__all__ = ["DEFAULT_NUM_CTX", "GenerationStats", "LlamaModel", "main"]

DEFAULT_NUM_CTX = 2048


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


class LlamaModel:
    """One GGUF model in this process: prompts, runs (with a reload for another
    `num_ctx`, as Ollama does) and embeddings."""

    def __init__(self, gguf: Path, num_ctx: int = DEFAULT_NUM_CTX) -> None:
        import llama_cpp  # the optional extra: only this process imports it

        self._llama_cpp: Any = llama_cpp
        self.gguf = gguf
        self._embedder: Any = None
        started = time.perf_counter_ns()
        self._llm = self._load(num_ctx)
        self._unreported_load_ns = time.perf_counter_ns() - started
        meta = self._llm.metadata
        arch = meta.get("general.architecture", "llama")
        self.train_ctx = int(meta.get(f"{arch}.context_length") or num_ctx)
        self.template = str(meta.get("tokenizer.chat_template") or "")
        self._stop_ids = {self._llm.token_eos()}
        for text in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
            ids = self._llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self._stop_ids.add(ids[0])

    def _load(self, num_ctx: int) -> Any:
        return self._llama_cpp.Llama(model_path=str(self.gguf), n_ctx=num_ctx, verbose=False)

    # -- prompts ---------------------------------------------------------------------

    def prompt_for(self, job: dict[str, Any]) -> str:
        """The text the model reads: the chat template applied, except for a raw generate."""
        messages: list[dict[str, Any]] = job.get("messages") or []
        if job.get("kind") == "chat":
            last = messages[-1] if len(messages) > 1 else {}
            if (
                last.get("role") == "assistant"
                and last.get("content")
                and not last.get("tool_calls")
            ):
                # A trailing assistant message is continued, as Ollama does: the turns before
                # it, the assistant's turn opened, and its text so far.
                return self.chat_prompt(messages[:-1]) + str(last["content"])
            return self.chat_prompt(messages)
        if job.get("raw"):
            return str(job.get("prompt") or "")
        system = str(job.get("system") or "")
        turns = [{"role": "system", "content": system}] if system else []
        turns.append({"role": "user", "content": str(job.get("prompt") or "")})
        return self.chat_prompt(turns)

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

    def generate(
        self,
        prompt: str,
        options: dict[str, Any],
        json_schema: dict[str, Any] | None,
        wants_json: bool,
    ) -> Iterator[str | GenerationStats]:
        """Text pieces as the model writes them, then the run's `GenerationStats`."""
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

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """L2-normalised mean-pooled embeddings, and the number of input tokens."""
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


class Runner:
    """The loop of the runner process: requests read by a thread (so that a `cancel`
    reaches a running generation), run one at a time in the main thread."""

    def __init__(self, sock: socket.socket, model: LlamaModel) -> None:
        self.sock = sock
        self.model = model
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cancelled: set[int] = set()
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def read(self) -> None:
        """Hand each request to the main thread (a cancel: mark it); end the process at
        the end of the socket, even in the middle of a run."""
        with self.sock.makefile("rb") as lines:
            for line in lines:
                message = json.loads(line)
                if message.get("op") == "cancel":
                    with self._lock:
                        self.cancelled.add(int(message["id"]))
                else:
                    self.requests.put(message)
        os._exit(0)

    def is_cancelled(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self.cancelled

    def serve(self) -> None:
        threading.Thread(target=self.read, name="requests", daemon=True).start()
        while True:
            message = self.requests.get()
            job_id = int(message["id"])
            try:
                if not self.is_cancelled(job_id):
                    self.run(job_id, message)
            except Exception as exc:  # Python's failures are the request's answer
                self.send({"id": job_id, "error": f"{type(exc).__name__}: {exc}", "status": 500})
            finally:
                with self._lock:
                    self.cancelled.discard(job_id)

    def run(self, job_id: int, message: dict[str, Any]) -> None:
        if message.get("op") == "embed":
            vectors, tokens = self.model.embed([str(t) for t in message.get("texts") or []])
            self.send({"id": job_id, "vectors": vectors, "tokens": tokens})
            return
        prompt = self.model.prompt_for(message)
        run = self.model.generate(
            prompt, message.get("options") or {}, message.get("schema"),
            bool(message.get("wants_json")),
        )  # fmt: skip
        for item in run:
            if isinstance(item, GenerationStats):
                self.send({"id": job_id, "done": item.done_reason, "metrics": item.metrics()})
                return
            if self.is_cancelled(job_id):
                return
            self.send({"id": job_id, "piece": item})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gguf", required=True, type=Path)
    parser.add_argument("--fd", required=True, type=int, help="this end of the socket pair")
    parser.add_argument("--num-ctx", type=int, default=DEFAULT_NUM_CTX)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it (see the docstring)
    sock = socket.socket(fileno=args.fd)
    model = LlamaModel(args.gguf, args.num_ctx)
    runner = Runner(sock, model)
    runner.send({"ready": True, "pid": os.getpid(), "train_ctx": model.train_ctx})
    runner.serve()


if __name__ == "__main__":
    main()
