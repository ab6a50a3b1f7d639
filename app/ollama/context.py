"""Context documents laid into a prompt: `CONTEXT_TEMPLATE`, `build_context_prompt` (which
trims documents to a context window) and `context_spec`, the run `run_with_context` makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.ollama.errors import InvalidRequest
from app.ollama.metadata import RunMetadata
from app.ollama.options import RequestPlan
from app.ollama.run_spec import RunSpec, require_model_name, require_prompt

__all__ = ["CHARS_PER_TOKEN", "CONTEXT_TEMPLATE", "build_context_prompt", "context_spec"]

#: How `run_with_context` lays out documents; its name is recorded in each result.
CONTEXT_TEMPLATE_NAME = "documents-v1"
CONTEXT_TEMPLATE = (
    "Use the following context documents to answer the question. "
    "If they do not contain the answer, say so.\n\n"
    "{documents}"
    "Question: {prompt}"
)
_DOCUMENT_TEMPLATE = "[Document {number}]\n{text}\n\n"
#: Rough characters per token used to fit documents into `context_window`.
CHARS_PER_TOKEN = 4
#: A document cut shorter than this many tokens is dropped instead of kept as a stub.
_MIN_DOCUMENT_TOKENS = 16


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def build_context_prompt(
    prompt: str,
    documents: Sequence[str],
    *,
    context_window: int | None = None,
    reserved_output_tokens: int = 0,
) -> tuple[str, RunMetadata]:
    """Lay `documents` and `prompt` into `CONTEXT_TEMPLATE`, trimmed to fit the window.

    Without `context_window` every document goes in whole. With it, the budget is the
    window minus the question, the template and the tokens reserved for the answer
    (estimated at `CHARS_PER_TOKEN` characters a token, since a tokenizer is not at hand);
    documents are taken in order while they fit, the first that does not is cut to the
    remaining budget, and the rest are dropped. Returns the prompt and a description of
    what was used (indices are 0-based positions in `documents`).
    """
    used: list[int] = []
    truncated: list[int] = []
    dropped: list[int] = []
    parts: list[str] = []
    budget: int | None = None
    if context_window is not None:
        overhead = _estimate_tokens(CONTEXT_TEMPLATE.format(documents="", prompt=prompt))
        budget = context_window - overhead - reserved_output_tokens
    for i, doc in enumerate(documents):
        block = _DOCUMENT_TEMPLATE.format(number=i + 1, text=doc)
        if budget is None:
            parts.append(block)
            used.append(i)
            continue
        cost = _estimate_tokens(block)
        if cost <= budget:
            parts.append(block)
            used.append(i)
            budget -= cost
            continue
        frame = _estimate_tokens(_DOCUMENT_TEMPLATE.format(number=i + 1, text=""))
        room_chars = (budget - frame) * CHARS_PER_TOKEN
        if budget - frame >= _MIN_DOCUMENT_TOKENS and not truncated:
            parts.append(_DOCUMENT_TEMPLATE.format(number=i + 1, text=doc[:room_chars]))
            used.append(i)
            truncated.append(i)
            budget = 0
        else:
            dropped.append(i)
    full = CONTEXT_TEMPLATE.format(documents="".join(parts), prompt=prompt)
    info: RunMetadata = {
        "context_template": CONTEXT_TEMPLATE_NAME,
        "context_docs_total": len(documents),
        "context_docs_used": used,
        "context_docs_truncated": truncated,
        "context_docs_dropped": dropped,
        "context_estimated_tokens": _estimate_tokens(full),
    }
    return full, info


def context_spec(
    model_name: str, prompt: str, context_docs: Sequence[str], plan: RequestPlan
) -> RunSpec:
    """A validated generate run of `prompt` with `context_docs` laid in.

    The documents are trimmed to the plan's `num_ctx`, leaving room for the answer (its
    `num_predict`, but never more than half the window). The run's `prompt` is the full
    prompt; `metadata` records the documents used and the caller's `question`.
    """
    prompt = require_prompt(prompt)
    if isinstance(context_docs, str) or not isinstance(context_docs, Sequence):
        raise InvalidRequest("context_docs must be a list of strings")
    for i, doc in enumerate(context_docs):
        if not isinstance(doc, str):
            raise InvalidRequest(f"context_docs[{i}] must be a string, got {type(doc).__name__}")
    window = plan.options.get("num_ctx")
    reserved = 0
    if window is not None:
        num_predict = plan.options.get("num_predict", -1)
        # Leave room for the answer, but never more than half the window.
        reserved = min(num_predict, window // 2) if num_predict > 0 else window // 2
    full_prompt, info = build_context_prompt(
        prompt, context_docs, context_window=window, reserved_output_tokens=reserved
    )
    return RunSpec(
        kind="generate",
        model=require_model_name(model_name),
        prompt=full_prompt,
        plan=plan,
        metadata={**info, "question": prompt},  # a RunMetadata
    )
