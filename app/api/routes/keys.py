"""API keys (admin): create (the key is in the reply, once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status

from app.api.deps import ServicesDep
from app.api.errors import ApiError, Problem
from app.api.schemas.access import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/gateway/keys", tags=["keys"])


@router.post(
    "",
    operation_id="create_key",
    response_model=KeyCreated,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": Problem, "description": "An active key has that name."}},
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
        )
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
