"""`PlacementAdmin`: the placement rules a pool follows, read and replaced at run time.

The rules start as GATEWAY_PLACEMENT (`Settings.placement`). Rules replaced through the
API (`/gateway/placement`) are stored with the backend registry (`placement_rules`), so
every process and replica sharing the database follows them within its next registry
round (2 s) and restarts keep them: once stored, they win over GATEWAY_PLACEMENT. Without
the registry (`GATEWAY_BACKEND_REGISTRY=false`) a change stays in the process that made it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from app.backends.placement import Placement, parse_placement
from app.backends.pool import BackendPool
from app.fleet.registry import BackendRegistry

__all__ = ["PlacementAdmin"]

logger = logging.getLogger(__name__)


class PlacementAdmin:
    """The placement rules of `pool` (see the module docstring)."""

    def __init__(self, pool: BackendPool, registry: BackendRegistry | None) -> None:
        self.pool = pool
        self.registry = registry
        self.configured = pool.placement
        """The start-up rules (GATEWAY_PLACEMENT)."""
        self._unreadable: str | None = None

    def rules(self) -> dict[str, list[str]]:
        """The rules this process follows now, in order."""
        return self.pool.placement.as_json()

    async def aget(self) -> dict[str, list[str]]:
        """The rules, after following the stored ones (a change from another replica)."""
        await self.areload()
        return self.rules()

    async def aset(self, rules: Mapping[str, Any]) -> dict[str, list[str]]:
        """Replace the rules (for every process, with the registry). ValueError for rules
        that are not rules (see `app.backends.placement.parse_placement`)."""
        placement = parse_placement(rules)
        if self.registry is not None:
            await self.registry.aset_placement(json.dumps(placement.as_json()))
        self._apply(placement)
        return self.rules()

    async def areload(self) -> None:
        """Follow the stored rules (run with the backend registry's rounds)."""
        if self.registry is None:
            return
        stored = await self.registry.aplacement()
        if stored is None:
            self._apply(self.configured)
            return
        try:
            placement = parse_placement(stored)
        except ValueError as exc:
            if stored != self._unreadable:
                self._unreadable = stored
                logger.warning("stored placement rules unreadable, not followed: %s", exc)
            return
        self._apply(placement)

    def _apply(self, placement: Placement) -> None:
        if placement != self.pool.placement:
            self.pool.placement = placement
            logger.info("placement rules now: %s", json.dumps(placement.as_json()))
