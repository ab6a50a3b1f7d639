"""The prompt cache of a loaded model, counted as Ollama counts `prompt_eval_count`.

Ollama (llama.cpp underneath) keeps, in each parallel slot of a loaded model, the tokens it
last evaluated there: that request's prompt and the tokens it generated. A request whose
prompt starts with a slot's tokens evaluates only the tokens past that common prefix (at
least one), so the next turn of a chat on the same server counts little more than its new
message. A cold load starts with empty slots.

Here a prompt is rendered into tokens as a chat template would (`rendered`): a marker per
message role, the message's words and punctuation, an end marker, and the assistant marker
the answer follows. After a generation its slot holds the prompt and the answer's tokens
(thinking included: a next turn that leaves the thinking out diverges there, as it does on
Ollama). As in Ollama's runner (`findBestCacheSlot`): a prompt that extends a slot's whole
content goes on in that slot; otherwise the least recently used slot takes it, with a copy
of the longest prefix any slot shares with it, so the other slots keep their conversations.

A generate request's `context` (the token ids an earlier reply gave back) is read back into
the tokens it stands for (`Vocabulary`) ahead of the new prompt, as Ollama detokenizes it,
so a generate that carries its conversation's context finds it cached like a chat does.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Sequence
from typing import Any, Literal, Protocol

__all__ = ["DEFAULT_SLOTS", "VOCABULARY_SIZE", "PromptCache", "Vocabulary", "rendered", "split"]

DEFAULT_SLOTS = 4
"""Ollama's `OLLAMA_NUM_PARALLEL` when memory allows."""

_TOKEN = re.compile(r"\w+|[^\w\s]")
VOCABULARY_SIZE = 128_000
"""Token ids are below this, as a real model's vocabulary is bounded."""


def split(text: str) -> list[str]:
    """`text`'s tokens, roughly as a BPE tokenizer would split it."""
    return _TOKEN.findall(text)


class Prompted(Protocol):
    """What `rendered` reads of a request (an engine's `GenerationJob` has it all)."""

    @property
    def kind(self) -> Literal["generate", "chat"]: ...
    @property
    def prompt(self) -> str: ...
    @property
    def system(self) -> str: ...
    @property
    def raw(self) -> bool: ...
    @property
    def messages(self) -> list[dict[str, Any]]: ...
    @property
    def context(self) -> list[int]: ...


class Vocabulary:
    """Token ids and back, as a model's vocabulary: an id is a checksum of the token's text
    (the next free id when another token has it), and the text of each id given out is
    kept, so a `context` sent back reads as the tokens it was made of. Bounded: at most
    `VOCABULARY_SIZE` tokens get ids of their own; later ones share (and read back as the
    first)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._texts: dict[int, str] = {}

    def ids(self, tokens: Sequence[str]) -> list[int]:
        known = self._ids
        return [known.get(token) or self._add(token) for token in tokens]

    def _add(self, token: str) -> int:
        i = zlib.crc32(token.encode("utf-8", "surrogatepass")) % VOCABULARY_SIZE
        if len(self._texts) >= VOCABULARY_SIZE:
            return i
        while i in self._texts or i == 0:  # 0 is kept free: `known.get` reads it as absent
            i = (i + 1) % VOCABULARY_SIZE
        self._ids[token] = i
        self._texts[i] = token
        return i

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The tokens `ids` stand for (an id never given out reads as `<|id|>`)."""
        texts = self._texts
        return [texts.get(i) or f"<|{i}|>" for i in ids]


def rendered(job: Prompted, vocabulary: Vocabulary | None = None) -> list[str]:
    """The prompt as the model reads it: the request's messages through a chat template;
    a generate's `context` first, read back through `vocabulary`."""
    if job.kind == "generate" and job.raw:
        return split(job.prompt) or ["<|bos|>"]
    if job.kind == "generate" and job.context and vocabulary is not None:
        out = vocabulary.tokens(job.context)
    else:
        out = ["<|bos|>"]
    if job.kind == "generate":
        turns = [("system", job.system)] if job.system else []
        turns.append(("user", job.prompt))
    else:
        roles = [str(m.get("role") or "") for m in job.messages]
        turns = [("system", job.system)] if job.system and "system" not in roles else []
        turns += [
            (role, str(m.get("content") or "")) for role, m in zip(roles, job.messages, strict=True)
        ]
    for role, content in turns:
        out += [f"<|{role}|>", *split(content), "<|end|>"]
    out.append("<|assistant|>")
    return out


class PromptCache:
    """The slots of one loaded model (see the module docstring)."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        self.slots: list[list[str]] = []
        self.size = max(1, slots)
        self._lock = threading.Lock()

    def evaluate(self, prompt: Sequence[str], answer: Sequence[str]) -> int:
        """The tokens of `prompt` to evaluate (past the best slot's common prefix, at least
        one); the slot then holds `prompt` and `answer`."""
        with self._lock:
            best, shared = -1, 0
            for i, held in enumerate(self.slots):
                common = _common_prefix(held, prompt)
                if common > shared:
                    best, shared = i, common
            if best >= 0 and shared == len(self.slots[best]):
                self.slots.pop(best)  # the prompt extends that slot: it goes on there
            elif len(self.slots) >= self.size:
                self.slots.pop(0)  # else the least recently used slot takes a copy of the
                # shared prefix, and the slot it came from is kept for its own conversation
            self.slots.append([*prompt, *answer])
        return max(1, len(prompt) - shared) if prompt else 1


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
