"""The usage ledger as `/gateway/usage` shows it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UsageRow(BaseModel):
    """What one group used in one bucket. Only the field named by `group_by` is present
    (`team`, `key`, `model`, `backend` or `surface`; null: no team, an anonymous run, no
    backend answered)."""

    bucket: str = Field(description="The bucket's start (UTC, RFC 3339): an hour or a day.")
    team: str | None = Field(default=None, description="With group_by=team.")
    key: str | None = Field(default=None, description="With group_by=key: the key's name.")
    model: str | None = Field(default=None, description="With group_by=model.")
    backend: str | None = Field(default=None, description="With group_by=backend: its URL.")
    surface: str | None = Field(
        default=None,
        description="With group_by=surface: gateway, ollama, openai, anthropic, responses, "
        "transcription or speech.",
    )
    requests: int = Field(description="Runs (stored or not; failed ones too).")
    failures: int = Field(description="Of them, runs that failed or were cancelled.")
    prompt_tokens: int
    output_tokens: int
    backend_seconds: float = Field(
        description="The backends' own time for the runs (Ollama's total_duration): GPU time."
    )
    load_seconds: float = Field(description="Of it, loading models (Ollama's load_duration).")
    cost: float | None = Field(
        default=None,
        description="Only with GATEWAY_PRICES set: tokens and backend time priced per model, "
        "in the page's `currency`.",
    )


class UsagePage(BaseModel):
    rows: list[UsageRow]
    currency: str | None = Field(
        default=None, description="The currency of `cost` (only with GATEWAY_PRICES set)."
    )
