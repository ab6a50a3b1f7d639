"""The backend registry's store: what a pool should hold, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from app.backends.pool import parse_backend
from app.fleet.registry import BackendRegistry, Member

CONFIGURED = [parse_backend("one=http://127.0.0.1:1"), parse_backend("two=http://127.0.0.1:2")]


def listed(members: list[Member]) -> list[tuple[str, str]]:
    return [(m.spec.name, m.source) for m in members]


async def test_added_and_removed_backends_are_laid_over_the_start_up_list(db_url: str) -> None:
    registry = BackendRegistry(db_url)
    try:
        assert listed(await registry.amembers(CONFIGURED)) == [
            ("one", "settings"),
            ("two", "settings"),
        ]
        await registry.aadd(parse_backend("gpu=http://127.0.0.1:3;max=2;weight=1.5"), CONFIGURED)
        members = await registry.amembers(CONFIGURED)
        assert listed(members)[-1] == ("gpu", "api")
        assert members[-1].spec == parse_backend("gpu=http://127.0.0.1:3;max=2;weight=1.5")

        for clash in ("gpu=http://127.0.0.1:9", "other=http://127.0.0.1:3", "one=http://x:1"):
            with pytest.raises(ValueError, match="already in the pool"):
                await registry.aadd(parse_backend(clash), CONFIGURED)

        # Removing a start-up backend is remembered: it stays out, for every process.
        assert (await registry.aremove("http://127.0.0.1:1/", CONFIGURED)).name == "one"
        assert listed(await registry.amembers(CONFIGURED)) == [("two", "settings"), ("gpu", "api")]
        with pytest.raises(ValueError, match="no backend named 'one'"):
            await registry.aremove("one", CONFIGURED)
        await registry.aremove("gpu", CONFIGURED)
        with pytest.raises(ValueError, match="last one"):
            await registry.aremove("two", CONFIGURED)
        with pytest.raises(ValueError, match="not 'all'"):
            await registry.aremove("all", CONFIGURED)

        # Added again through the API, a removed name comes back (from the registry).
        await registry.aadd(parse_backend("one=http://127.0.0.1:4"), CONFIGURED)
        members = await registry.amembers(CONFIGURED)
        assert listed(members) == [("two", "settings"), ("one", "api")]
        assert members[1].spec.url == "http://127.0.0.1:4"
    finally:
        await registry.aclose()


async def test_two_processes_adding_one_name_at_once_cannot_both_succeed(db_url: str) -> None:
    first, second = BackendRegistry(db_url), BackendRegistry(db_url)
    try:
        outcomes = await asyncio.gather(
            first.aadd(parse_backend("gpu=http://127.0.0.1:3"), CONFIGURED),
            second.aadd(parse_backend("gpu=http://127.0.0.1:4"), CONFIGURED),
            return_exceptions=True,
        )
        assert sum(o is None for o in outcomes) == 1, outcomes
        assert [type(o) for o in outcomes if o is not None] == [ValueError]
        assert [m.spec.name for m in await second.amembers(CONFIGURED)] == ["one", "two", "gpu"]
    finally:
        await first.aclose()
        await second.aclose()
