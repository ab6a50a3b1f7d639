"""API keys (admin): create (the key is in the reply, once), list, change (team, quotas),
revoke."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status

from app.access.keys import UNSET, UnknownTeam
from app.api.common.deps import ServicesDep
from app.api.common.errors import ApiError
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.access import KeyCreate, KeyCreated, KeyOut, KeyUpdate

router = APIRouter(prefix="/gateway/keys", tags=["keys"])


@router.post(
    "",
    operation_id="create_key",
    response_model=KeyCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        404: {"model": Problem, "description": "No team has the name given as `team`."},
        409: {"model": Problem, "description": "An active key has that name."},
    },
)
async def create_key(body: KeyCreate, services: ServicesDep) -> KeyCreated:
    """Create a key; `key` is shown in this reply only (only its hash is stored)."""
    try:
        new = await services.keys.acreate(
            body.name,
            body.scope,
            models=body.models,
            requests_per_minute=body.requests_per_minute,
            tokens_per_minute=body.tokens_per_minute,
            team=body.team,
            quotas=body.quotas.model_dump(exclude_none=True) if body.quotas is not None else None,
        )
    except UnknownTeam as exc:
        raise _unknown_team(exc) from exc
    except ValueError as exc:
        code = 409 if "exists" in str(exc) else 422
        raise ApiError(code, "Key not created", str(exc)) from exc
    return KeyCreated(**new.record, key=new.key)


@router.get("", operation_id="list_keys", response_model=list[KeyOut])
async def list_keys(
    services: ServicesDep,
    include_revoked: bool = Query(default=False, description="Also revoked keys."),
) -> list[KeyOut]:
    """The keys, active ones (and revoked ones with `include_revoked`); never the keys
    themselves, only their ids, names, scopes, limits and prefixes."""
    return [KeyOut(**r) for r in await services.keys.alist(include_revoked)]


def _unknown_team(exc: UnknownTeam) -> ApiError:
    return ApiError(404, "Team not found", str(exc))


@router.patch(
    "/{key}",
    operation_id="update_key",
    response_model=KeyOut,
    responses={
        404: {
            "model": Problem,
            "description": "No active key with that id or name, or no "
            "team has the name given as `team`.",
        },
    },
)
async def update_key(key: str, body: KeyUpdate, services: ServicesDep) -> KeyOut:
    """Set a key's team and/or quotas by id or name: the fields sent replace the old ones
    (null: no team, no quotas); it takes effect at once on this replica, within
    `GATEWAY_KEY_CACHE_SECONDS` on the others."""
    sent = body.model_fields_set
    quotas = body.quotas.model_dump(exclude_none=True) if body.quotas is not None else None
    try:
        record = await services.keys.aupdate(
            key,
            team=body.team if "team" in sent else UNSET,
            quotas=quotas if "quotas" in sent else UNSET,
        )
    except UnknownTeam as exc:
        raise _unknown_team(exc) from exc
    except ValueError as exc:
        raise ApiError(422, "Key not changed", str(exc)) from exc
    if record is None:
        raise ApiError(404, "Not found", f"no active key with id or name {key!r}")
    return KeyOut(**record)


@router.delete(
    "/{key}",
    operation_id="revoke_key",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": Problem, "description": "No active key with that id or name."}},
)
async def revoke_key(key: str, services: ServicesDep) -> Response:
    """Revoke a key by id or name; it stops working at once in this process."""
    if await services.keys.arevoke(key) is None:
        raise ApiError(404, "Not found", f"no active key with id or name {key!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
