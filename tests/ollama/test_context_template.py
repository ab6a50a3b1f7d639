"""`build_context_prompt`: documents in a fixed template, trimmed to the context window."""

from __future__ import annotations

from app.ollama import build_context_prompt


def test_without_a_window_every_document_is_used_in_order() -> None:
    prompt, info = build_context_prompt("What?", ["alpha", "beta"])
    assert prompt.index("[Document 1]\nalpha") < prompt.index("[Document 2]\nbeta")
    assert prompt.endswith("Question: What?")
    assert info["context_docs_used"] == [0, 1]
    assert info["context_docs_dropped"] == []


def test_a_small_window_cuts_the_first_document_that_does_not_fit_and_drops_the_rest() -> None:
    docs = ["a" * 400, "b" * 4000, "c" * 400]
    prompt, info = build_context_prompt("Q", docs, context_window=700)
    assert info["context_docs_used"] == [0, 1]
    assert info["context_docs_truncated"] == [1]
    assert info["context_docs_dropped"] == [2]
    assert "c" * 50 not in prompt
    assert info["context_estimated_tokens"] <= 700


def test_reserved_output_tokens_shrink_the_budget() -> None:
    docs = ["x" * 2000]
    _, roomy = build_context_prompt("Q", docs, context_window=1000)
    _, tight = build_context_prompt("Q", docs, context_window=1000, reserved_output_tokens=990)
    assert roomy["context_docs_used"] == [0]
    assert tight["context_docs_dropped"] == [0]
