"""The filler engine: deterministic answers with no model behind them (see `text.py`).

The same model, prompt and seed always give the same pieces; thinking models think,
tools are called when the user names them (and not again once a tool's result has come, which
is answered in words: see `continuation.asking`), `format` gives valid JSON. Counters are made
up from the text and the emulated pace (`prompt_eval_count` past the loaded model's
prompt cache, see `prompt_cache`): the state's `first_token_delay_ms`, and
`prompt_eval_ms_per_token` for each token of `prompt_eval_count`, before the first piece
(the slot is held meanwhile, as a GPU evaluating a prompt), and `token_delay_ms` before
each next one (read as each piece goes, so a change made
mid-stream through /_emulator/faults applies at once).
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator
from typing import Any

from app.emulator import text
from app.emulator.catalog import Spec
from app.emulator.continuation import Conversation, Prefill, conversation, prefill_of, rest_after
from app.emulator.engine import Embedded, EmbedJob, Event, Finished, GenerationJob, Piece
from app.emulator.errors import OllamaError
from app.emulator.prompt_cache import rendered, split
from app.emulator.state import State

__all__ = ["FillerEngine", "normalise"]

JSON = dict[str, Any]
Answer = tuple[list[str], list[str], text.ToolCall | None]
"""Thinking pieces, answer pieces, and the tool call that replaces the answer (if any)."""


class FillerEngine:
    """Made-up text and vectors, paced by the emulator's state (an `Engine`)."""

    def __init__(self, state: State) -> None:
        self.state = state

    # -- generate and chat -----------------------------------------------------------

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        """The whole answer is made at once; the events then come at the emulated pace.

        A chat ending in the start of its own answer gets the rest of it (see
        `continuation`)."""
        options = job.options
        seed_value = options.get("seed", -1)
        seed = int(seed_value) if isinstance(seed_value, int | float) and seed_value >= 0 else 0
        temperature = float(options.get("temperature", 0.8))
        if job.kind == "generate":
            conv = Conversation(job.system, job.prompt, job.prompt)
        else:
            conv = conversation(job.system, job.messages)
        answer = self._answer(job, conv, seed, temperature)
        prefill = prefill_of(job.messages) if job.kind == "chat" else None
        if prefill is not None:
            before = conversation(job.system, prefill.before)
            continued = self._continue(self._answer(job, before, seed, temperature), prefill)
            if continued is not None:
                answer = continued
        thinking, pieces, tool = answer
        reason = "stop"
        if tool is None:
            num_predict = options.get("num_predict")
            stop = [str(s) for s in options.get("stop") or []]
            pieces, reason = text.apply_limits(
                pieces, int(num_predict) if num_predict is not None else None, stop
            )

        eval_count = len(thinking) + len(pieces) + (1 if tool else 0)
        prompt = rendered(job, self.state.vocabulary)
        said = split("".join(thinking)) + split("".join(pieces))
        evaluated = job.cache.evaluate(prompt, said) if job.cache is not None else len(prompt)
        prompt_seconds = evaluated * self.state.prompt_eval_ms_per_token / 1000
        metrics = self._metrics(evaluated, eval_count, job.cold)
        events: list[Event] = [Piece(thinking=piece) for piece in thinking]
        events += [Piece(content=piece) for piece in pieces]
        if tool is not None:
            call = {"index": 0, "name": tool.name, "arguments": tool.arguments}
            events.append(
                Piece(tool_calls=[{"id": "call_" + secrets.token_hex(8)[:8], "function": call}])
            )
        context = None
        if job.kind == "generate" and not job.raw:
            # Ollama's: the tokens of the whole prompt (the context sent, the template and
            # the new prompt) and of the answer, which a next generate may send back
            context = self.state.vocabulary.ids([*prompt, *split("".join(pieces))])
        finished = Finished(reason, metrics, context)
        if job.stream:
            return self._paced(events, finished, prompt_seconds)
        return self._all_at_once(events, finished, eval_count, prompt_seconds)

    def _answer(
        self, job: GenerationJob, conv: Conversation, seed: int, temperature: float
    ) -> Answer:
        """The undisturbed answer to `conv`: thinking, text pieces (before `num_predict`
        and `stop`) or a tool call."""
        name = job.spec.name
        thinks = "thinking" in job.spec.capabilities and job.think is not False
        thinking = text.thinking_pieces(name, conv.history, seed) if thinks else []
        tool = None
        answered = bool(job.messages) and job.messages[-1].get("role") == "tool"
        if job.kind == "chat" and job.tools and conv.last_user and not answered:
            # A tool's result is answered in words, not by calling the tool again.
            tool = text.tool_call_for(job.tools, conv.last_user, seed)
        if tool is not None:
            return thinking, [], tool
        if job.wants_json:
            return (
                thinking,
                text.json_pieces(name, conv.system + conv.history, seed, job.schema),
                None,
            )
        length = self.state.config.reply_tokens
        pieces = text.answer_pieces(name, conv.system + conv.history, seed, temperature, length)
        return thinking, pieces, None

    @staticmethod
    def _continue(answer: Answer, prefill: Prefill) -> Answer | None:
        """What follows `prefill` in `answer`, or None when `answer` does not start with it."""
        thinking, pieces, tool = answer
        if tool is not None:
            return None
        if prefill.content:
            rest = rest_after(pieces, prefill.content)
            return None if rest is None else ([], rest, None)
        thought = rest_after(thinking, prefill.thinking)
        return None if thought is None else (thought, pieces, None)

    def _metrics(self, prompt_tokens: int, eval_count: int, cold: bool) -> dict[str, int]:
        token_ns = int(self.state.token_delay_ms * 1_000_000) or 2_000_000
        first_ns = int(self.state.first_token_delay_ms * 1_000_000)
        per_token_ns = int(self.state.prompt_eval_ms_per_token * 1_000_000)
        load = 30_000_000 if cold else 2_000_000
        if per_token_ns:
            prompt_ns = first_ns + prompt_tokens * per_token_ns
        else:
            prompt_ns = first_ns or prompt_tokens * 200_000
        evals = max(eval_count, 1)
        return {
            "total_duration": load + prompt_ns + evals * token_ns + 1_000_000,
            "load_duration": load,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": evals,
            "eval_duration": evals * token_ns,
        }

    async def _paced(
        self, events: list[Event], finished: Finished, prompt_seconds: float
    ) -> AsyncIterator[Event]:
        """Streamed: each piece after its delay (the first after the prompt's evaluation
        too); the end after the first delay if no piece."""
        state = self.state
        first = True
        for event in events:
            if first:
                delay = state.first_token_delay_ms / 1000 + prompt_seconds
                first = False
            else:
                delay = state.token_delay_ms / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            yield event
        if first and state.first_token_delay_ms / 1000 + prompt_seconds > 0:
            await asyncio.sleep(state.first_token_delay_ms / 1000 + prompt_seconds)
        yield finished

    async def _all_at_once(
        self, events: list[Event], finished: Finished, eval_count: int, prompt_seconds: float
    ) -> AsyncIterator[Event]:
        """One reply: the whole generation's time, then every piece."""
        await asyncio.sleep(self.state.first_token_delay_ms / 1000 + prompt_seconds)
        delay = self.state.token_delay_ms / 1000 * eval_count
        if delay > 0:
            await asyncio.sleep(delay)
        for event in events:
            yield event
        yield finished

    # -- embeddings ------------------------------------------------------------------

    def check_embed(self, spec: Spec, inputs: list[str], truncate: bool) -> None:
        if not truncate and any(text.tokens_of(i) > spec.context_length for i in inputs):
            raise OllamaError(400, "the input length exceeds the context length")

    async def embed(self, job: EmbedJob) -> Embedded:
        spec = job.spec
        dims = spec.embedding_length
        if job.dimensions is not None and 0 < job.dimensions < dims:
            dims = job.dimensions
        vectors = [
            normalise(text.embedding(spec.name, i, spec.embedding_length)[:dims])
            for i in job.inputs
        ]
        tokens = sum(text.tokens_of(i) for i in job.inputs)
        load = 30_000_000 if job.cold else 2_000_000
        return Embedded(vectors, load + tokens * 300_000 + 1_000_000, load, tokens)

    async def embedding(self, spec: Spec, prompt: str) -> list[float]:
        return [v * 3.0 for v in text.embedding(spec.name, prompt, spec.embedding_length)]

    def status(self) -> JSON:
        """Always running: there is no model process to lose."""
        return {"engine": "filler", "state": "running"}


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
