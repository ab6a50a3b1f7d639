"""Bodies of the stored-output endpoints: results, reports, stats."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.gateway.schemas.common import JsonInt, Schema

Surface = Literal[
    "gateway", "ollama", "openai", "anthropic", "responses", "transcription", "speech"
]
Kind = Literal[
    "generate", "chat", "stream", "batch_item", "benchmark", "comparison", "context", "output",
    "speech",
]  # fmt: skip


class StoredResult(BaseModel):
    """A stored run: the `ModelExecutionResult` fields, how it was made, and links."""

    id: str
    kind: Kind
    surface: Surface = Field(
        default="gateway",
        description="The API the run came through: `gateway` (/gateway), `ollama` (/api), "
        "`openai` (/v1), `anthropic` (/v1/messages), `responses` (/v1/responses), "
        "`transcription` (/v1/audio/transcriptions), `speech` (/v1/audio/speech).",
    )
    principal: str | None = Field(
        default=None, description="The API key (by name) the run was made with; null: anonymous."
    )
    status: Literal["succeeded", "failed", "cancelled"]
    model_name: str
    prompt: str
    response: str
    execution_time: float
    tokens_used: int | None = None
    success: bool
    error_message: str | None = None
    metadata: dict[str, Any] | None = None
    backend: str | None = None
    batch_id: str | None = None
    benchmark_id: str | None = None
    comparison_id: str | None = None
    size_bytes: int
    created_at: datetime


class ResultPage(BaseModel):
    items: list[StoredResult]
    next_cursor: str | None = Field(default=None, description="Null on the last page.")


class TypeStats(BaseModel):
    count: int
    size_bytes: int


class OutputStats(BaseModel):
    """What is stored; for a user key, of its own runs and reports only."""

    by_type: dict[str, TypeStats] = Field(
        description="outputs, results (the same runs), configs, reports."
    )
    total_count: int
    total_size_bytes: int
    database: str | None = Field(
        default=None, description="The database URL, password hidden (admins only)."
    )


class CleanupRequest(Schema):
    days_old: JsonInt = Field(default=30, ge=0, le=36500, description="Remove older than this.")


class CleanupOut(BaseModel):
    removed: int


class ReportSummary(BaseModel):
    """A stored batch, benchmark or comparison (without its runs)."""

    id: str
    type: Literal["batch", "benchmark", "comparison"]
    principal: str | None = Field(
        default=None, description="The API key (by name) that made it; null: anonymous."
    )
    created_at: datetime
    size_bytes: int
    name: str | None = None
    model: str | None = None
    models: list[str] | None = None
    prompt: str | None = None
    total: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    summary: dict[str, Any] | None = None
    report: dict[str, Any] | None = None


class ReportDetail(ReportSummary):
    runs: list[StoredResult] = Field(description="The runs linked to it, oldest first.")


class ReportPage(BaseModel):
    items: list[ReportSummary]
    next_cursor: str | None = None
