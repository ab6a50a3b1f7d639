"""Bodies of the run endpoints: generate, chat, batches, benchmarks, comparisons."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas.common import MODEL_NAME, OptionsIn, ResultOut, Schema

PROMPT = Field(
    min_length=1,
    max_length=200_000,
    description="The prompt text.",
    examples=["Explain recursion in one paragraph."],
)


class GenerateRequest(Schema):
    model: str = MODEL_NAME
    prompt: str = PROMPT
    options: OptionsIn | None = None
    context_docs: list[str] | None = Field(
        default=None,
        max_length=100,
        description="Documents laid into the prompt before the question (run_with_context).",
    )
    save: bool = Field(default=True, description="Store the result (it is, unless false).")


class Message(Schema):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=200_000)


class ChatRequest(Schema):
    model: str = MODEL_NAME
    messages: list[Message] = Field(min_length=1, max_length=500)
    options: OptionsIn | None = None
    save: bool = Field(default=True, description="Store the result (it is, unless false).")


class ChunkEvent(BaseModel):
    """`event: chunk` of a streamed run."""

    content: str
    index: int
    thinking: str | None = None


class ErrorEvent(BaseModel):
    """`event: error` of a streamed run: the run failed (it is stored as failed)."""

    code: str = Field(examples=["backend_unavailable", "model_not_found", "timeout"])
    message: str
    result_id: str | None = None


class BatchRequest(Schema):
    model: str = MODEL_NAME
    prompts: list[str] = Field(min_length=1, max_length=100)
    options: OptionsIn | None = None
    max_concurrent: int = Field(default=3, ge=1, le=16)
    name: str | None = Field(default=None, max_length=200, description="A name for the batch.")


class BatchOut(BaseModel):
    id: str | None = Field(description="The stored batch's id.")
    model: str
    results: list[ResultOut]
    succeeded: int
    failed: int


class BenchmarkRequest(Schema):
    model: str = MODEL_NAME
    test_prompts: list[str] = Field(min_length=1, max_length=50)
    options: OptionsIn | None = None


class ComparisonRequest(Schema):
    models: list[str] = Field(min_length=1, max_length=8)
    prompt: str = PROMPT
    options: OptionsIn | None = None


class ReportOut(BaseModel):
    """A stored benchmark or comparison report."""

    id: str | None = Field(description="The stored report's id.")
    report: dict[str, Any]
