"""BackendPool routing: the backend that has the model, else the first healthy one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from app.backends import BackendError, BackendPool, BackendUnavailable, parse_backend
from app.ollama import same_model
from tests.support.servers import running_emulator


@pytest.fixture(scope="module")
def second_emulator() -> Iterator[str]:
    with running_emulator(models=["phi3:mini"]) as url:
        yield url


async def test_picks_the_backend_that_has_the_model(
    emulator_url: str, second_emulator: str, down_url: str
) -> None:
    pool = BackendPool([down_url, emulator_url, second_emulator])
    assert (await pool.pick("phi3:mini")).base_url == second_emulator
    # Ollama's rules: the name compares case-insensitively with defaults applied.
    assert (await pool.pick("library/PHI3:mini", has_model=same_model)).base_url == second_emulator
    assert (await pool.pick("llama3.1:8b")).base_url == emulator_url
    await pool.aclose()


async def test_an_unknown_model_is_a_404_naming_close_names(
    emulator_url: str, second_emulator: str, down_url: str
) -> None:
    pool = BackendPool([down_url, second_emulator, emulator_url])
    # No backend has it: a 404 that names the close names, rather than a guess.
    with pytest.raises(BackendError) as caught:
        await pool.pick("phi3:mni")
    assert caught.value.status == 404 and "close names: phi3:mini" in str(caught.value)
    assert (await pool.pick(None)).base_url == second_emulator, "no model: first healthy"
    await pool.aclose()


async def test_no_reachable_backend_raises(down_url: str) -> None:
    from tests.support.servers import free_port

    pool = BackendPool([down_url, f"http://127.0.0.1:{free_port()}"], health_timeout=0.5)
    with pytest.raises(BackendUnavailable, match="no backend is reachable"):
        await pool.pick("x")
    await pool.aclose()


async def test_a_single_backend_is_chosen_without_probing(down_url: str) -> None:
    pool = BackendPool([down_url])
    assert (await pool.pick("anything")).base_url == down_url
    await pool.aclose()


def test_a_pool_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        BackendPool([])


async def test_reconcile_keeps_unchanged_backends_and_never_empties_the_pool() -> None:
    pool = BackendPool(["a=http://127.0.0.1:1", "b=http://127.0.0.1:2"])
    a, b = pool.states
    a.failures = 1  # state a process keeps: it must survive a reconcile
    wanted = [
        (parse_backend("b=http://127.0.0.1:2"), "settings"),
        (parse_backend("c=http://127.0.0.1:3;max=2"), "api"),
        (parse_backend("dup=http://127.0.0.1:3"), "api"),  # same URL as c: left out
    ]
    changes = pool.reconcile(wanted)
    assert [s.spec.name for s in pool.states] == ["b", "c"]
    assert pool.states[0] is b and [s.source for s in pool.states] == ["settings", "api"]
    assert changes.removed == [a] and [s.spec.name for s in changes.added] == ["c"]

    # A changed spec replaces the state; the same list again changes nothing.
    c = pool.states[1]
    changes = pool.reconcile([(b.spec, "settings"), (parse_backend("c=http://127.0.0.1:3"), "api")])
    assert changes.removed == [c] and pool.states[1] is not c
    assert not pool.reconcile([(b.spec, "settings"), (pool.states[1].spec, "api")])

    assert not pool.reconcile([]) and len(pool.states) == 2, "the pool never goes empty"
    assert pool.describe()[1]["source"] == "api"
    for state in (a, c):
        await state.client.aclose()
    await pool.aclose()


async def test_watch_runs_the_membership_sync_of_the_pools_owner() -> None:
    pool = BackendPool(["a=http://127.0.0.1:1"], health_timeout=0.2)
    pool.membership_interval = 0.05
    rounds: list[float] = []

    async def sync() -> None:
        rounds.append(asyncio.get_running_loop().time())
        if len(rounds) == 2:
            raise RuntimeError("one bad round must not stop the loop")

    pool.membership_sync = sync
    watcher = asyncio.create_task(pool.watch(10))
    try:
        for _ in range(100):
            if len(rounds) >= 4:
                break
            await asyncio.sleep(0.02)
        assert len(rounds) >= 4
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await pool.aclose()
