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
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from app.emulator.engine import GenerationJob

__all__ = ["DEFAULT_SLOTS", "PromptCache", "rendered", "split"]

DEFAULT_SLOTS = 4
"""Ollama's `OLLAMA_NUM_PARALLEL` when memory allows."""

_TOKEN = re.compile(r"\w+|[^\w\s]")


def split(text: str) -> list[str]:
    """`text`'s tokens, roughly as a BPE tokenizer would split it."""
    return _TOKEN.findall(text)


def rendered(job: GenerationJob) -> list[str]:
    """The prompt as the model reads it: the request's messages through a chat template."""
    if job.kind == "generate" and job.raw:
        return split(job.prompt) or ["<|bos|>"]
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
