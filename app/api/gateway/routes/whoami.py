"""Who the caller is: the key's name and scope (what a front end shows and hides)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.common.auth import UserDep

router = APIRouter(prefix="/gateway/whoami", tags=["keys"])


class WhoAmI(BaseModel):
    name: str = Field(description="The key's name (`anonymous` when no key is needed).")
    scope: Literal["admin", "user"]
    anonymous: bool = Field(
        description="No key is needed: the gateway serves anonymous clients (bound to "
        "loopback, or GATEWAY_ALLOW_ANONYMOUS, while no key exists); they are admins."
    )
    models: list[str] | None = Field(
        default=None, description="The key's model allowlist (glob patterns); null: every model."
    )
    team: str | None = Field(default=None, description="The key's team; null: none.")


@router.get("", operation_id="whoami", response_model=WhoAmI)
async def whoami(principal: UserDep) -> WhoAmI:
    """The caller as the gateway sees it: a web console asks this first, without a key, to
    learn whether it must ask for one, and with one to learn its scope."""
    return WhoAmI(
        name=principal.name,
        scope=principal.scope,
        anonymous=principal.anonymous,
        models=list(principal.models) if principal.models is not None else None,
        team=principal.team,
    )
