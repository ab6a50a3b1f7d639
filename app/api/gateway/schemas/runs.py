"""Bodies of the run endpoints: generate, chat, batches, benchmarks, comparisons."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

from app.api.gateway.schemas.common import (
    MODEL_NAME,
    MODEL_NAME_PATTERN,
    JsonInt,
    OptionsIn,
    ResultOut,
    Schema,
)

PROMPT = Field(
    min_length=1,
    max_length=200_000,
    description="The prompt text.",
    examples=["Explain recursion in one paragraph."],
)

PromptText = Annotated[str, Field(min_length=1, max_length=200_000)]
"""One prompt of a batch or a benchmark's list: not empty, within `PROMPT`'s length."""


class GenerateRequest(Schema):
    model: str = MODEL_NAME
    prompt: str = PROMPT
    options: OptionsIn | None = None
    context_docs: list[Annotated[str, Field(max_length=200_000)]] | None = Field(
        default=None,
        max_length=100,
        description="Documents laid into the prompt before the question (run_with_context).",
    )
    save: StrictBool = Field(default=True, description="Store the result (it is, unless false).")


class PromptMessage(Schema):
    """A system or user turn: its content must not be empty."""

    role: Literal["system", "user"]
    content: str = Field(min_length=1, max_length=200_000)


class ReplyMessage(Schema):
    """An assistant or tool turn: its content may be empty (e.g. a turn of tool calls)."""

    role: Literal["assistant", "tool"]
    content: str = Field(max_length=200_000)


Message = Annotated[PromptMessage | ReplyMessage, Field(discriminator="role")]


class ChatRequest(Schema):
    model: str = MODEL_NAME
    messages: list[Message] = Field(min_length=1, max_length=500)
    options: OptionsIn | None = None
    save: StrictBool = Field(default=True, description="Store the result (it is, unless false).")


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
    prompts: list[PromptText] = Field(min_length=1, max_length=100)
    options: OptionsIn | None = None
    max_concurrent: JsonInt = Field(default=3, ge=1, le=16)
    name: str | None = Field(default=None, max_length=200, description="A name for the batch.")
    background: StrictBool | None = Field(
        default=None,
        description=(
            "Run as a job (202, follow its events) or wait for the results (200). "
            "Default: a job when there are more prompts than GATEWAY_BATCH_SYNC_MAX."
        ),
    )


class BatchOut(BaseModel):
    id: str | None = Field(description="The stored batch's id.")
    model: str
    results: list[ResultOut]
    succeeded: int
    failed: int


class BatchJobOut(BaseModel):
    """A batch running in the background; `batch_id` names the stored batch once done."""

    id: str
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    total: int
    completed: int
    succeeded: int
    failed: int
    batch_id: str | None = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class BatchProgress(BaseModel):
    """One finished prompt of a background batch."""

    index: int
    success: bool
    error_message: str | None = None
    tokens_used: int | None = None


REPORT_BACKGROUND = Field(
    default=None,
    description=(
        "Run as a job (202, follow `/gateway/jobs/{id}/events`) or wait for the report "
        "(201). Default: a job when there are more runs than GATEWAY_BATCH_SYNC_MAX."
    ),
)


class BenchmarkRequest(Schema):
    model: str = MODEL_NAME
    test_prompts: list[PromptText] = Field(min_length=1, max_length=50)
    options: OptionsIn | None = None
    background: StrictBool | None = REPORT_BACKGROUND


class ComparisonStreamRequest(Schema):
    """A comparison streamed as it runs (every model at once)."""

    models: list[Annotated[str, Field(max_length=512, pattern=MODEL_NAME_PATTERN)]] = Field(
        min_length=1,
        max_length=8,
        json_schema_extra={"uniqueItems": True},
        description="The models to compare, each once.",
    )

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError("models must not repeat a model")
        return models

    prompt: str = PROMPT
    options: OptionsIn | None = None


class ComparisonRequest(ComparisonStreamRequest):
    """A comparison: the prompt on each model in turn, one report."""

    background: StrictBool | None = REPORT_BACKGROUND


class ModelChunkEvent(ChunkEvent):
    """`event: chunk` of a streamed comparison: a piece of one model's answer."""

    model: str = Field(description="The model whose answer this piece continues.")


class ReportOut(BaseModel):
    """A stored benchmark or comparison report."""

    id: str | None = Field(description="The stored report's id.")
    report: dict[str, Any]
