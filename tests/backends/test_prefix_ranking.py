"""Ranking by expected time to first token across a large fleet, on the pool itself: the
push-out of a full cache is worked out for the best-ranked few only, a backend with a free
cache slot is still found behind them, and the best few are those that working out every
backend's row gives."""

from __future__ import annotations

import asyncio
import random

from app.backends import BackendPool, parse_backend
from app.backends.pool import DISPLACED_CANDIDATES

MODEL = "qwen2.5-coder:32b"


def conversation(tag: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"agent {tag} " + "rules " * 600},
        {"role": "user", "content": f"task {tag} " + "file " * 1500},
    ]


async def ranked_names(free: int, backends: int = 24) -> list[str]:
    specs = [parse_backend(f"b{i}=http://b{i}.test:11434;max=4") for i in range(backends)]
    pool = BackendPool(specs, prefix_routing=True)
    try:
        for i, state in enumerate(pool.states):
            state.models, state.loaded = [MODEL], [MODEL]
            state.inventory_at = float("inf")
            state.prefixes.slots = 2
            held = 1 if i == free else 2  # live conversations in its two slots
            for k in range(held):
                prompt = pool.chat_prompt(MODEL, conversation(f"{i}.{k}"))
                assert prompt is not None
                state.prefixes.record(MODEL, prompt.keys, prompt.ends)
        prompt = pool.chat_prompt(MODEL, conversation("new"))
        ranked = await pool.candidates(MODEL, prompt=prompt)
        assert prompt is not None and len(prompt.estimates) <= DISPLACED_CANDIDATES
        return [state.spec.name for state in ranked]
    finally:
        await pool.aclose()


def test_a_free_cache_slot_behind_the_few_worked_out_is_still_chosen() -> None:
    """Every backend but one holds two live conversations in its two slots: a new one
    goes where it pushes none out, wherever that backend stands in the fleet's order."""
    for free in (0, DISPLACED_CANDIDATES - 1, DISPLACED_CANDIDATES + 5, 23):
        names = asyncio.run(ranked_names(free))
        assert names[0] == f"b{free}", (free, names[:3])
        assert len(names) == 24


def test_a_backend_taken_out_of_the_pool_leaves_the_fleets_holders() -> None:
    """A backend removed from the pool takes its keys and its bit out of the pool's map of
    holders; one added after it gets a bit of its own, and finds nothing it did not hold."""

    async def run() -> None:
        specs = [parse_backend(f"b{i}=http://b{i}.test:11434;max=4") for i in range(3)]
        pool = BackendPool(specs, prefix_routing=True)
        try:
            prompt = pool.chat_prompt(MODEL, conversation("gone"))
            assert prompt is not None
            gone = pool.states[1]
            gone.prefixes.record(MODEL, prompt.keys, prompt.ends)
            assert pool.prefix_holders.levels(prompt.keys) == [
                (gone.prefixes.bit, len(prompt.keys))
            ]
            pool.remove("b1")
            assert gone.prefixes.bit == 0 and len(pool.prefix_holders) == 0
            added = pool.add("b3=http://b3.test:11434;max=4")
            assert added.prefixes.bit and pool.prefix_holders.levels(prompt.keys) == []
            bits = [state.prefixes.bit for state in pool.states]
            assert len(set(bits)) == len(bits)
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_a_sessions_home_wins_within_the_estimates_noise_only() -> None:
    """A session's next turn stays on its home when another backend is expected faster by
    less than the tie margins (its prompt rate a hair better); it moves when the other is
    clearly faster."""

    async def chosen(other_rate: float) -> str:
        specs = [parse_backend(f"b{i}=http://b{i}.test:11434;max=4") for i in range(3)]
        pool = BackendPool(specs, prefix_routing=True)
        try:
            for state, rate in zip(pool.states, (0.25e-3, other_rate, 1e-3), strict=True):
                state.models, state.loaded = [MODEL], [MODEL]
                state.inventory_at = float("inf")
                state.record_prompt(MODEL, 4000, 4000 * rate)
            first = pool.chat_prompt(MODEL, conversation("s"), session="s")
            await pool.candidates(MODEL, prompt=first)
            pool.served(first, pool.states[0], reply="done")  # its home: b0
            turn = [*conversation("s"), {"role": "assistant", "content": "done"}]
            turn.append({"role": "user", "content": "and now?"})
            again = pool.chat_prompt(MODEL, turn, session="s")
            assert again is not None
            ranked = await pool.candidates(MODEL, prompt=again)
            home, other = again.estimates["b0"].ttft, again.estimates["b1"].ttft
            if other_rate < 0.25e-3:
                assert other < home, "the other is expected faster"
            return ranked[0].spec.name
        finally:
            await pool.aclose()

    assert asyncio.run(chosen(0.2499e-3)) == "b0", "a hair faster: the home stays"
    assert asyncio.run(chosen(0.25e-3)) == "b0", "tied: the home"
    assert asyncio.run(chosen(0.15e-3)) == "b1", "clearly faster: the session moves"


async def compare_with_every_row_worked_out(seed: int) -> int:
    """Random fleets (limits, weights, prompt rates or none, models loaded or not, queued
    runs, cached prompts, sessions with homes) and requests: the ranking that works out
    rows in the bounds' order ranks the best `DISPLACED_CANDIDATES` exactly as working out
    every row does, with the same estimates; returns the requests compared."""
    rnd = random.Random(seed)
    backends = rnd.choice([2, 5, 9, 16, 24])
    specs = [
        parse_backend(
            f"b{i}=http://b{i}.test:11434"
            + (f";max={rnd.randint(1, 4)}" if rnd.random() < 0.7 else "")
            + (f";weight={rnd.choice([0.5, 2, 3])}" if rnd.random() < 0.3 else "")
        )
        for i in range(backends)
    ]
    pool = BackendPool(specs, prefix_routing=True)
    systems = [f"system {k} " + "rules " * rnd.randint(50, 2000) for k in range(3)]
    sessions: dict[int, list[dict[str, str]]] = {}
    compared = 0
    try:
        for state in pool.states:
            state.models = [MODEL]
            state.loaded = [MODEL] if rnd.random() < 0.75 else []
            state.inventory_at = float("inf")
            if rnd.random() < 0.8:
                state.record_prompt(MODEL, 4000, rnd.uniform(0.2, 3.0))
            if rnd.random() < 0.3:  # queued runs (the gate is not held: nothing blocks)
                state.count_waiting(MODEL, False, rnd.randint(1, 8), rnd.uniform(0.1, 3.0))
        for turn in range(80):
            sid = rnd.randint(0, 15)
            messages = sessions.get(sid) or [{"role": "system", "content": rnd.choice(systems)}]
            messages = [
                *messages,
                {"role": "user", "content": f"{turn} " + "x" * rnd.randint(1, 5000)},
            ]
            prompt = pool.chat_prompt(MODEL, messages, session=f"s{sid}")
            assert prompt is not None
            pool.exhaustive_ranking = True
            every = [s.spec.name for s in await pool.candidates(MODEL, prompt=prompt)]
            every_estimates = dict(prompt.estimates)
            pool.exhaustive_ranking = False
            chosen = await pool.candidates(MODEL, prompt=prompt)
            names = [s.spec.name for s in chosen]
            assert names[:DISPLACED_CANDIDATES] == every[:DISPLACED_CANDIDATES], (seed, turn)
            assert sorted(names) == sorted(every)
            assert prompt.estimates == every_estimates, (seed, turn)
            compared += 1
            async with pool.lease(chosen[0], MODEL, prompt=prompt) as state:
                pass
            reply = "ok " * rnd.randint(1, 500)
            pool.served(prompt, state, reply=reply, final={"prompt_eval_count": 100})
            sessions[sid] = [*messages, {"role": "assistant", "content": reply}]
    finally:
        await pool.aclose()
    return compared


def test_the_best_few_are_ranked_as_working_out_every_backend_ranks_them() -> None:
    assert sum(asyncio.run(compare_with_every_row_worked_out(seed)) for seed in range(40)) == 3200
