"""Shapes shared by several resources: execution options, results, pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.ollama import ExecutionOptions, ModelExecutionResult

T = TypeVar("T")

MODEL_NAME = Field(
    min_length=1,
    max_length=350,
    description="An Ollama model name; `llama3.1` and `llama3.1:latest` are the same model.",
    examples=["llama3.1:8b"],
)


class Schema(BaseModel):
    """Base of every body: unknown fields are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


class OptionsIn(Schema):
    """Execution options; every field is optional and defaults as `ExecutionOptions` does."""

    temperature: float | None = Field(default=None, ge=0, le=2, examples=[0.7])
    top_p: float | None = Field(default=None, ge=0, le=1, examples=[0.9])
    top_k: int | None = Field(default=None, ge=1, le=1000, examples=[40])
    repeat_penalty: float | None = Field(default=None, ge=0, le=5, examples=[1.1])
    max_tokens: int | None = Field(
        default=None, ge=1, le=131072, description="Most tokens to generate (num_predict)."
    )
    timeout: int | None = Field(
        default=None, ge=1, le=3600, description="Seconds the run may take in all."
    )
    format: str | dict[str, Any] | None = Field(
        default=None, description='"json" or a JSON schema object the output must match.'
    )
    system_prompt: str | None = Field(default=None, max_length=100_000)
    context_window: int | None = Field(
        default=None, ge=256, le=1_048_576, description="Context length in tokens (num_ctx)."
    )

    def to_execution_options(self) -> ExecutionOptions:
        return ExecutionOptions(**self.model_dump(exclude_none=True))


class ResultOut(BaseModel):
    """A stored run: the `ModelExecutionResult` fields plus the id it is stored under."""

    id: str | None = Field(default=None, description="The stored result's id.")
    model_name: str
    prompt: str
    response: str
    execution_time: float = Field(description="Seconds the run took, wall clock.")
    tokens_used: int | None = Field(default=None, description="Tokens generated (eval_count).")
    success: bool
    error_message: str | None = None
    metadata: dict[str, Any] | None = None

    @classmethod
    def from_result(cls, result: ModelExecutionResult, stored_id: str | None) -> ResultOut:
        return cls(id=stored_id, **result.to_dict())


class Page(BaseModel, Generic[T]):
    """One page of a list; pass `next_cursor` back as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None = Field(default=None, description="Null on the last page.")


class Timestamped(BaseModel):
    created_at: datetime
