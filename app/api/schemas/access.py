"""API keys and audit entries as the admin endpoints show them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    scope: Literal["admin", "user"] = "user"
    models: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S+$")]] | None = (
        Field(
            default=None,
            min_length=1,
            max_length=100,
            description="Glob patterns of the models the key may use (`llama3*`); null: any.",
        )
    )
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=1_000_000_000)


class KeyOut(BaseModel):
    id: str
    name: str
    scope: Literal["admin", "user"]
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    models: list[str] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
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
