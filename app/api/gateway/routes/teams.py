"""Teams (admin): a key belongs to at most one; a team's model allowlist narrows its keys'
own and its quotas are shared by its keys."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.access.keys import UNSET
from app.access.teams import TeamConflict, TeamNotFound
from app.api.common.deps import ServicesDep
from app.api.common.errors import ApiError
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.access import TeamCreate, TeamOut, TeamUpdate

router = APIRouter(prefix="/gateway/teams", tags=["teams"])

NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No team has that name."}
}


def _quotas(body: TeamCreate | TeamUpdate) -> dict[str, object] | None:
    return body.quotas.model_dump(exclude_none=True) if body.quotas is not None else None


@router.post(
    "",
    operation_id="create_team",
    response_model=TeamOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": Problem, "description": "A team has that name."}},
)
async def create_team(body: TeamCreate, services: ServicesDep) -> TeamOut:
    """Create a team, with its model allowlist and quotas (each optional)."""
    try:
        record = await services.teams.acreate(body.name, models=body.models, quotas=_quotas(body))
    except TeamConflict as exc:
        raise ApiError(409, "Team exists", str(exc)) from exc
    except ValueError as exc:
        raise ApiError(422, "Team not created", str(exc)) from exc
    return TeamOut(**record)


@router.get("", operation_id="list_teams", response_model=list[TeamOut])
async def list_teams(services: ServicesDep) -> list[TeamOut]:
    """The teams, by name."""
    return [TeamOut(**r) for r in await services.teams.alist()]


@router.get("/{name}", operation_id="get_team", response_model=TeamOut, responses=NOT_FOUND)
async def get_team(name: str, services: ServicesDep) -> TeamOut:
    """One team."""
    try:
        return TeamOut(**await services.teams.aget(name))
    except TeamNotFound as exc:
        raise ApiError(404, "Not found", str(exc)) from exc


@router.patch("/{name}", operation_id="update_team", response_model=TeamOut, responses=NOT_FOUND)
async def update_team(name: str, body: TeamUpdate, services: ServicesDep) -> TeamOut:
    """Change a team's model allowlist and/or quotas: the fields sent replace the old ones
    (null: any model, no quotas). Its keys see the change at once on this replica, within
    `GATEWAY_KEY_CACHE_SECONDS` on the others."""
    sent = body.model_fields_set
    try:
        record = await services.teams.aupdate(
            name,
            models=body.models if "models" in sent else UNSET,
            quotas=_quotas(body) if "quotas" in sent else UNSET,
        )
    except TeamNotFound as exc:
        raise ApiError(404, "Not found", str(exc)) from exc
    except ValueError as exc:
        raise ApiError(422, "Team not changed", str(exc)) from exc
    return TeamOut(**record)


@router.delete(
    "/{name}",
    operation_id="delete_team",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "Active keys still belong to the team."},
    },
)
async def delete_team(name: str, services: ServicesDep) -> Response:
    """Delete a team that no active key belongs to (move or revoke its keys first)."""
    try:
        await services.teams.adelete(name)
    except TeamNotFound as exc:
        raise ApiError(404, "Not found", str(exc)) from exc
    except TeamConflict as exc:
        raise ApiError(409, "Team has keys", str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
