"""Shapes shared by several resources: numbers and dates as JSON means them, model names,
execution options, results."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.ollama import ExecutionOptions, ModelExecutionResult


def _json_number(value: Any) -> Any:
    """JSON Schema numbers are never strings or booleans; pydantic's lax mode would coerce."""
    if isinstance(value, str | bytes | bool):
        raise ValueError("must be a JSON number")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]
"""An integer as JSON Schema means it: `3` and `3.0`, never `"3"` or `true`."""
JsonFloat = Annotated[float, BeforeValidator(_json_number)]


def _rfc3339(value: Any) -> Any:
    """date-time means RFC 3339 text; pydantic's lax mode would read `0.5` as a timestamp."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_rfc3339)]

NUMBER = BeforeValidator(_json_number)
"""Put after the bounds: `Annotated[int, Field(ge=1), NUMBER]` keeps minimum in the schema."""

# Ollama's name grammar: [host/][namespace/]model[:tag] (see shared/reference §2).
MODEL_NAME_PATTERN = (
    r"^(?:(?:[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}/)?[A-Za-z0-9_][A-Za-z0-9_-]{0,79}/)?"
    r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?$"
)

MODEL_NAME = Field(
    min_length=1,
    max_length=512,
    pattern=MODEL_NAME_PATTERN,
    description="An Ollama model name; `llama3.1` and `llama3.1:latest` are the same model.",
    examples=["llama3.1:8b"],
)


class Schema(BaseModel):
    """Base of every body: unknown fields are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


class OptionsIn(Schema):
    """Execution options; every field is optional and defaults as `ExecutionOptions` does."""

    temperature: Annotated[float, Field(ge=0, le=2), NUMBER] | None = Field(
        default=None, examples=[0.7], description="Sampling temperature; 0 is greedy."
    )
    top_p: Annotated[float, Field(ge=0, le=1), NUMBER] | None = Field(default=None, examples=[0.9])
    top_k: Annotated[int, Field(ge=1, le=1000), NUMBER] | None = Field(default=None, examples=[40])
    repeat_penalty: Annotated[float, Field(ge=0, le=5), NUMBER] | None = Field(
        default=None, examples=[1.1]
    )
    max_tokens: Annotated[int, Field(ge=1, le=131072), NUMBER] | None = Field(
        default=None, description="Most tokens to generate (num_predict)."
    )
    timeout: Annotated[int, Field(ge=1, le=3600), NUMBER] | None = Field(
        default=None, description="Seconds the run may take in all."
    )
    format: Literal["json"] | dict[str, Any] | None = Field(
        default=None, description='"json" or a JSON schema object the output must match.'
    )
    system_prompt: Annotated[str, Field(max_length=100_000)] | None = None
    context_window: Annotated[int, Field(ge=256, le=1_048_576), NUMBER] | None = Field(
        default=None, description="Context length in tokens (num_ctx)."
    )

    def to_execution_options(self) -> ExecutionOptions:
        return ExecutionOptions(**self.model_dump(exclude_none=True))


def execution_options(options: OptionsIn | None) -> ExecutionOptions | None:
    """The core's options for a body's optional `options` (None: the core's defaults)."""
    return options.to_execution_options() if options is not None else None


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
        # The fields, not `result.to_dict()`: no deep copy (`asdict`) of the metadata.
        return cls(
            id=stored_id,
            model_name=result.model_name,
            prompt=result.prompt,
            response=result.response,
            execution_time=result.execution_time,
            tokens_used=result.tokens_used,
            success=result.success,
            error_message=result.error_message,
            metadata=result.metadata,
        )
