"""The prefix index's CPU cost per request at fleet size: fingerprinting a prompt, ranking
the backends by expected time to first token, and recording the run, against the same
ranking by expected wait alone (what the pool did without the index).

    python bench/prefix_cost.py [--backends 64] [--rounds 300]

Run by hand; prints a table of CPU microseconds per request (`time.process_time`, the median) for a
short chat and for agent prompts (a 20,000-token system prompt shared by every session,
then a history of tool results), with every backend's index holding prompts of other
sessions (`slots` prompts per backend, a fifth of them sharing the system prompt).
Each request is a session's next turn (the one before, its reply and a tool result), a new
session every 20 turns, its messages new objects as a parsed request's are (not timed);
each is leased (the index records the prompt where it runs) and served (the reply extends
it there), as a run through the gateway is. The session is named, as agents name theirs
(Claude Code's `X-Claude-Code-Session-Id`, Codex's `prompt_cache_key`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.backends.pool import BackendPool
from app.backends.spec import parse_backend

MODEL = "qwen2.5-coder:32b"
TURNS = 20
"""Turns of a session: each request extends the one before (its reply, a tool result), a
new session every `TURNS` requests."""
SYSTEM = ("You are a coding agent with these tools and rules. " * 1600)[:80_000]


def agent_messages(session: int, history_tokens: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    turns = max(1, history_tokens // 1500)
    for i in range(turns):
        messages.append({"role": "user", "content": f"tool {session}.{i} " + "x " * 2400})
        messages.append({"role": "assistant", "content": f"reply {session}.{i} " + "y " * 600})
    messages.append({"role": "user", "content": f"next {session}"})
    return messages


def fleet(backends: int, routing: bool, mixed: bool = False) -> BackendPool:
    """A pool of `backends`, each with the model loaded and other sessions' prompts cached.
    `mixed`: prompt rates differing by up to 2.5x, a quarter of the backends with the model
    not loaded, a third with 4-6 runs queued (seconds of wait)."""
    specs = [parse_backend(f"b{i}=http://b{i}.bench:11434;max=4") for i in range(backends)]
    pool = BackendPool(specs, prefix_routing=routing)
    for i, state in enumerate(pool.states):
        state.models, state.loaded = [MODEL], [MODEL]
        state.inventory_at = float("inf")
        state.record_prompt(MODEL, 4000, 0.5 + (i * 7 % 13) / 8 if mixed else 1.0)
        if mixed and i % 4 == 3:
            state.loaded = []
        if mixed and i % 3 == 0:  # queued runs the gate does not hold: waits, no blocking
            state.count_waiting(MODEL, False, 4 + i % 3, 1.5)
        for k in range(4):  # other sessions' prompts cached there
            other = agent_messages(1000 + i * 4 + k, 20_000)
            if (i + k) % 5:
                other[0] = {"role": "system", "content": f"other agent {i} {k}"}
            prompt = pool.chat_prompt(MODEL, other)
            if prompt is not None:
                state.prefixes.record(MODEL, prompt.keys, prompt.ends)
    return pool


async def measure(
    backends: int, rounds: int, messages: list[dict[str, str]], mixed: bool = False
) -> dict[str, float]:
    """Median CPU seconds per request of each pool, the two served turn by turn (the same
    machine state for both: each timed just after its body was parsed, as in a server; the
    median leaves out the turns a garbage collection fell in)."""
    pools = {"wait only": fleet(backends, False, mixed), "index": fleet(backends, True, mixed)}
    spent: dict[str, list[list[float]]] = {name: [] for name in pools}
    turn, session = messages, ""
    clock = time.process_time
    for r in range(rounds):
        if r % TURNS == 0:  # a new session: the same prompt, its first turn
            turn, session = list(messages), f"agent-{r}"
        for name, pool in pools.items():
            sent = json.loads(json.dumps(turn))  # as a request's body is parsed: new objects
            started = clock()
            prompt = pool.chat_prompt(MODEL, sent, session=session)
            fingerprinted = clock()
            ranked = await pool.candidates(MODEL, prompt=prompt)
            chosen = clock()
            async with pool.lease(ranked[0], MODEL, prompt=prompt) as state:
                pass  # the slot held: the index records the prompt as evaluated there
            leased = clock()
            pool.served(prompt, state, reply=f"done {r}", final={"prompt_eval_count": 10})
            done = clock()
            spent[name].append(
                [done - started, fingerprinted - started, chosen - fingerprinted,
                 leased - chosen, done - leased]
            )  # fmt: skip
        turn = [
            *turn,
            {"role": "assistant", "content": f"done {r}"},
            {"role": "user", "content": f"tool result {r} " + "z " * 40},
        ]
    for pool in pools.values():
        await pool.aclose()
    return {
        f"{name} {part}": statistics.median(row[i] for row in rows)
        for name, rows in spent.items()
        for i, part in enumerate(PARTS)
    }


PARTS = ("whole", "fingerprint", "rank", "lease", "served")
"""What `measure` times of each request: the whole, then each step."""


def report(backends: int = 64, rounds: int = 300) -> list[str]:
    """The table's lines."""
    cases: list[tuple[str, Any, bool]] = [
        ("short chat (3 messages)", [{"role": "user", "content": "hi"}] * 3, False),
        ("agent, 20k system + 10k history", agent_messages(1, 10_000), False),
        ("agent, 20k system + 40k history", agent_messages(1, 40_000), False),
        ("the same, mixed busy fleet", agent_messages(1, 40_000), True),
    ]
    lines = [
        f"prefix index, {backends} backends: CPU microseconds per request (process time, median; "
        "fingerprint, rank, lease and record, served; target: the index adds at most 100)",
        f"{'prompt':34} {'wait only':>10} {'with index':>11} {'index adds':>11}   "
        "(of which: fingerprint, rank, lease, served)",
    ]
    for label, messages, mixed in cases:
        got = asyncio.run(measure(backends, rounds, messages, mixed))
        wait, index = got["wait only whole"] * 1e6, got["index whole"] * 1e6
        parts = ", ".join(
            f"{(got[f'index {part}'] - got[f'wait only {part}']) * 1e6:.0f}" for part in PARTS[1:]
        )
        lines.append(f"{label:34} {wait:10.1f} {index:11.1f} {index - wait:11.1f}   ({parts})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    print("\n".join(report(args.backends, args.rounds)))


if __name__ == "__main__":
    main()
