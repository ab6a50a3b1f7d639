"""Placement rules: which backends each model may run on (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, RootModel
from pydantic.config import JsonDict

from app.api.common.deps import FleetDep
from app.api.common.errors import ApiError

router = APIRouter(prefix="/gateway/placement", tags=["backends"])

EXAMPLE: JsonDict = {"llama3.1:70b": ["gpu1", "gpu2"], "qwen2.5:*": ["tag:small"]}


class PlacementRulesBody(RootModel[dict[str, list[str]]]):
    """Placement rules: a JSON object from model glob to a list of backend names or
    `tag:NAME`, first match wins (in the object's order). A model runs only on the
    backends its rule allows, and a pull without a target goes to one of them; a model no
    rule matches runs anywhere. Globs match the model's normalised name, case-insensitively
    (`llama3.1` is `llama3.1:latest`; `qwen2.5:*` is every tag of `qwen2.5`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})


@router.get("", operation_id="get_placement", response_model=PlacementRulesBody)
async def get_placement(fleet: FleetDep) -> PlacementRulesBody:
    """The placement rules in force: those last set here (shared by every process and
    replica on the database), else `GATEWAY_PLACEMENT`."""
    return PlacementRulesBody(await fleet.placement.aget())


@router.put("", operation_id="set_placement", response_model=PlacementRulesBody)
async def set_placement(body: PlacementRulesBody, fleet: FleetDep) -> PlacementRulesBody:
    """Replace the placement rules (`{}`: none, every model anywhere). Stored in the
    database: every process and replica follows them within 5 s, and restarts keep them
    (over `GATEWAY_PLACEMENT`). Requests already routed are not moved."""
    try:
        rules = await fleet.placement.aset(body.root)
    except ValueError as exc:
        raise ApiError(422, "Placement rules not set", str(exc)) from exc
    return PlacementRulesBody(rules)
