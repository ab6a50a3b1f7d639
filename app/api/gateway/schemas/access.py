"""API keys and audit entries as the admin endpoints show them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.gateway.schemas.common import NUMBER

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
QuotaInt = Annotated[int, Field(ge=0, le=10**15), NUMBER]
QuotaFloat = Annotated[float, Field(ge=0, le=10**15), NUMBER]
# Model names are ASCII (Ollama's own names: letters, digits, `_-.:/`), and globs add `*?[]`:
# printable ASCII without spaces, a class every regex engine reads the same way (`\S` is not:
# Python and the Rust engine count U+0085 as a space, generators of schema-valid data may not).
ModelPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
ModelPatterns = list[ModelPattern]


class QuotasIn(BaseModel):
    """Quotas of a key or a team, each optional (null or absent: no such quota). Days and
    months are those of `GATEWAY_QUOTA_TZ` (UTC unless set)."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_day: QuotaInt | None = Field(
        default=None, description="Prompt and output tokens a day."
    )
    tokens_per_month: QuotaInt | None = Field(
        default=None, description="Prompt and output tokens a month."
    )
    requests_per_day: QuotaInt | None = Field(
        default=None,
        description="Requests that run models a day (each run of a background job counts).",
    )
    backend_seconds_per_day: QuotaFloat | None = Field(
        default=None,
        description="Seconds of the backends' own time (Ollama's total_duration) a day.",
    )


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    scope: Literal["admin", "user"] = "user"
    models: ModelPatterns | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Glob patterns of the models the key may use (`llama3*`); null: any.",
    )
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=1_000_000_000)
    team: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=NAME_PATTERN,
        description="The team the key belongs to (it must exist); null: none.",
    )
    quotas: QuotasIn | None = Field(default=None, description="The key's own quotas.")


class KeyUpdate(BaseModel):
    """What to change of a key: the fields sent (null clears one), the others stay."""

    model_config = ConfigDict(extra="forbid")

    team: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=NAME_PATTERN,
        description="The key's team (it must exist); null: none.",
    )
    quotas: QuotasIn | None = Field(
        default=None, description="The key's quotas, replacing the old ones; null: none."
    )


class KeyOut(BaseModel):
    id: str
    name: str
    scope: Literal["admin", "user"]
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    models: list[str] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    team: str | None = Field(default=None, description="The key's team; null: none.")
    quotas: dict[str, int | float] | None = Field(
        default=None, description="The key's quotas (those that are set); null: none."
    )
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, never again.")


class AuditOut(BaseModel):
    id: str
    created_at: datetime
    actor: str = Field(description="The key's name, or anonymous / invalid-key.")
    action: str = Field(description="Method and route, e.g. `POST /gateway/generate`.")
    target: str | None = Field(default=None, description="The model (or other object).")
    outcome: Literal["allowed", "denied", "failed"] | str
    status: int | None = None
    duration_ms: float | None = None
    surface: str | None = None
    client: str | None = None
    text_escaped: bool = Field(
        default=False,
        description="True when the database refused the entry as it was and its text was "
        "stored escaped (NUL and lone surrogates as `\\u` escapes, long text cut).",
    )


class AuditPage(BaseModel):
    items: list[AuditOut]


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    models: ModelPatterns | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Glob patterns of the models the team's keys may use, narrowing each "
        "key's own allowlist; null: any.",
    )
    quotas: QuotasIn | None = Field(
        default=None, description="The team's quotas, shared by all its keys."
    )


class TeamUpdate(BaseModel):
    """What to change of a team: the fields sent (null clears one), the others stay."""

    model_config = ConfigDict(extra="forbid")

    models: ModelPatterns | None = Field(default=None, min_length=1, max_length=100)
    quotas: QuotasIn | None = None


class TeamOut(BaseModel):
    name: str
    models: list[str] | None = None
    quotas: dict[str, int | float] | None = Field(
        default=None, description="The team's quotas (those that are set); null: none."
    )
    created_at: datetime


class QuotaLine(BaseModel):
    quota: Literal[
        "tokens_per_day", "tokens_per_month", "requests_per_day", "backend_seconds_per_day"
    ]
    window: str = Field(description="The window: a day (`2026-12-05`) or a month (`2026-12`).")
    limit: int | float | None = Field(
        description="The quota; null: none (what is used still counts)."
    )
    used: int | float
    left: int | float | None = Field(description="What is left in the window; null: no quota.")
    resets_at: datetime = Field(description="When the window ends.")


class QuotaOwner(BaseModel):
    name: str
    quotas: list[QuotaLine]


class QuotasOut(BaseModel):
    key: QuotaOwner = Field(description="The key's own quotas.")
    team: QuotaOwner | None = Field(description="Its team's quotas; null: the key has no team.")
    time_zone: str = Field(description="The time zone of the windows (`GATEWAY_QUOTA_TZ`).")
