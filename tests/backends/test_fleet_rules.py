"""Placement rules, conversation affinity and the emulator's prompt cache: their rules on
their own, and affinity's limit (a backend with no free slot is not waited for) over
emulator processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from app.backends.affinity import ConversationAffinity
from app.backends.placement import Placement, PlacementRule, parse_placement
from app.backends.spec import parse_backend
from app.emulator.prompt_cache import PromptCache
from app.ollama import ModelRunner
from app.ollama.names import model_key
from tests.backends.test_fleet_routing import MODEL, emulators, manager_for, warm


def test_the_first_matching_rule_decides_on_the_normalised_name() -> None:
    rules = parse_placement(
        '{"llama3.1": ["a"], "LLAMA3*": ["tag:gpu"], "qwen2.5:*": ["b", "tag:small"]}'
    )

    def where(model: str) -> str | None:
        rule = rules.rule_for(model_key(model), model_key)
        return None if rule is None else rule.pattern

    assert where("library/llama3.1:latest") == "llama3.1"  # a name: that model only
    assert where("llama3.1:8b") == "LLAMA3*"
    assert where("Qwen2.5:0.5b") == "qwen2.5:*"
    assert where("qwen2.5") == "qwen2.5:*"  # qwen2.5:latest
    assert where("mistral") is None
    gpu, small = parse_backend("g=http://h:1;tags=gpu"), parse_backend("s=http://h:2;tags=small")
    rule = PlacementRule("x", ("b", "tag:small"))
    assert not rule.allows(gpu) and rule.allows(small)
    assert rule.allows(parse_backend("b=http://h:3"))
    assert rules.as_json() == {
        "llama3.1": ["a"],
        "LLAMA3*": ["tag:gpu"],
        "qwen2.5:*": ["b", "tag:small"],
    }
    assert parse_placement("") == Placement() and not parse_placement({})


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ({"a[b": ["x"]}, "without its ']'"),
        ({"a[[b]]": ["x"]}, "nests"),
        ({"": ["x"]}, "not a model glob"),
        ({"a b": ["x"]}, "not a model glob"),
        ({"a": []}, "non-empty list"),
        ({"a": "x"}, "non-empty list"),
        ({"a": ["tag:"]}, "neither a backend name"),
        ({"a": ["x,y"]}, "neither a backend name"),
        ({"a": [3]}, "neither a backend name"),
    ],
)
def test_bad_rules_are_refused_with_what_is_wrong(rules: object, words: str) -> None:
    with pytest.raises(ValueError, match="placement") as raised:
        parse_placement(rules)
    assert words in str(raised.value)


def test_affinity_remembers_the_backend_of_a_conversation_by_its_prefix() -> None:
    affinity = ConversationAffinity(ttl=60, max_entries=2)
    turn1 = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    affinity.remember("m", turn1, "hello", "b1")
    turn2 = [*turn1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    assert affinity.prefer("m", turn2) == "b1"
    assert affinity.prefer("other", turn2) is None, "keyed by the model too"
    changed = [*turn1, {"role": "assistant", "content": "HELLO"}, {"role": "user", "content": "?"}]
    assert affinity.prefer("m", changed) is None
    assert affinity.prefer("m", turn1) is None, "no assistant message: nothing to continue"
    # a later turn served elsewhere wins; an earlier prefix is still known
    affinity.remember("m", turn2, "fine", "b2")
    turn3 = [*turn2, {"role": "assistant", "content": "fine"}, {"role": "user", "content": "!"}]
    assert affinity.prefer("m", turn3) == "b2"
    # bounded: the least recently used entry goes first
    affinity.remember("m", [{"role": "user", "content": "x"}], "y", "b3")
    assert len(affinity) == 2 and affinity.prefer("m", turn2) is None
    assert affinity.prefer("m", turn3) == "b2"
    # expired and turned off
    gone = ConversationAffinity(ttl=0.05)
    gone.remember("m", turn1, "hello", "b1")
    assert gone.prefer("m", turn2) == "b1"
    asyncio.run(asyncio.sleep(0.06))
    assert gone.prefer("m", turn2) is None
    off = ConversationAffinity(ttl=0)
    off.remember("m", turn1, "hello", "b1")
    assert off.prefer("m", turn2) is None and len(off) == 0


def test_the_prompt_cache_counts_only_the_tokens_past_the_longest_cached_prefix() -> None:
    cache = PromptCache(slots=2)
    first = ["<bos>", "a", "b", "c"]
    assert cache.evaluate(first, ["x", "y"]) == 4
    assert cache.evaluate([*first, "x", "y", "<end>", "d"], []) == 2, "extends the slot"
    assert cache.evaluate(first, []) == 1, "all cached: the last token is evaluated again"
    other = ["<bos>", "q"]
    assert cache.evaluate(other, []) == 1  # shares <bos>; forks into the oldest slot
    assert cache.evaluate(["z"], []) == 1  # nothing shared: at least one
    assert cache.evaluate(first, []) == 3, "pushed out by two others: only <bos> left"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("limit", "held"), [(";max=1", 1), ("", 4)])
async def test_affinity_does_not_wait_for_a_backend_with_no_free_slot(
    limit: str, held: int
) -> None:
    """Two backends: the next turn goes back to its backend while it has a free slot, and
    elsewhere while its slots are held (`max=1`: one; no `max`: the 4 it counts as)."""
    with emulators(2) as urls:
        for url in urls:
            warm(url)
        manager = manager_for([f"b{i}={url}{limit}" for i, url in enumerate(urls)])
        runner = ModelRunner(manager)
        try:
            messages = [{"role": "user", "content": "Tell me about the sea."}]
            first = await runner.async_chat(MODEL, messages, save_output=False)
            home = (first.metadata or {})["backend"]
            messages += [
                {"role": "assistant", "content": first.response},
                {"role": "user", "content": "And the waves?"},
            ]
            again = await runner.async_chat(MODEL, messages, save_output=False)
            assert (again.metadata or {})["backend"] == home
            assert (again.metadata or {})["prompt_eval_count"] < 10

            # home's slots are held (leases, as long runs hold them): the turn goes on
            # elsewhere rather than queue behind them
            [state] = [s for s in manager.pool.states if s.spec.url == home]
            async with contextlib.AsyncExitStack() as leases:
                for _ in range(held):
                    await leases.enter_async_context(manager.pool.lease(state, MODEL))
                moved = await runner.async_chat(MODEL, messages, save_output=False)
            back = await runner.async_chat(MODEL, messages, save_output=False)
        finally:
            await manager.aclose()
    assert (moved.metadata or {})["backend"] != home
    assert (moved.metadata or {})["prompt_eval_count"] > 10, "a cold prompt cache there"
    # the same turn again once the slot is free: back home, where its prefix is cached
    assert (back.metadata or {})["backend"] == home
    assert (back.metadata or {})["prompt_eval_count"] < 10
