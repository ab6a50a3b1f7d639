"""A backend's slot gate: interactive before batch, the batch share, per-model limits."""

from __future__ import annotations

import asyncio

import pytest

from app.backends.gate import SlotGate

pytestmark = pytest.mark.timeout(10)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_slot_goes_to_the_interactive_request_first() -> None:
    gate = SlotGate(2, None, 0.5)
    started: list[str] = []

    async def run(name: str, batch: bool) -> None:
        await gate.acquire(None, batch)
        started.append(name)

    await run("b0", True)
    await run("b1", True)
    waiting = [asyncio.create_task(run(f"b{i}", True)) for i in range(2, 5)]
    await settle()
    interactive = asyncio.create_task(run("i", False))
    await settle()
    assert started == ["b0", "b1"]
    gate.release(None, True)
    await settle()
    assert started == ["b0", "b1", "i"], "the interactive request goes ahead of the batch"
    for _ in range(3):
        gate.release(None, True)
        await settle()
    assert started == ["b0", "b1", "i", "b2", "b3", "b4"]
    await asyncio.gather(interactive, *waiting)


async def test_batch_runs_hold_at_most_their_share_while_interactive_requests_wait() -> None:
    gate = SlotGate(4, 1, 0.5)
    await gate.acquire("x", False)
    blocked = asyncio.create_task(gate.acquire("x", False))  # its model is at its limit
    await settle()
    await gate.acquire("y", True)
    await gate.acquire("z", True)
    third = asyncio.create_task(gate.acquire("w", True))
    await settle()
    assert gate.running == 3 and not third.done(), "a slot stays for interactive requests"
    blocked.cancel()  # no interactive request waits any more
    await settle()
    assert third.done() and gate.running == 4


async def test_one_model_at_its_limit_leaves_the_free_slots_to_others() -> None:
    gate = SlotGate(None, 2, 0.5)
    await gate.acquire("m", False)
    await gate.acquire("m", False)
    third = asyncio.create_task(gate.acquire("m", False))
    await settle()
    await gate.acquire("other", False)
    assert not third.done() and gate.by_model == {"m": 2, "other": 1}
    gate.release("m", False)
    await settle()
    assert third.done() and gate.by_model == {"m": 2, "other": 1}


async def test_a_waiter_that_gives_up_keeps_no_slot() -> None:
    gate = SlotGate(1, None, 0.5)
    await gate.acquire(None, False)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await gate.acquire(None, False)
    granted_then_cancelled = asyncio.create_task(gate.acquire(None, False))
    await settle()
    gate.release(None, False)  # granted to the waiter ...
    granted_then_cancelled.cancel()  # ... which is cancelled before it runs again
    await settle()
    assert granted_then_cancelled.cancelled() and gate.running == 0
    await gate.acquire(None, False)
    assert gate.running == 1
