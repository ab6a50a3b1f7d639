"""Placement rules and the emulator's prompt cache: their rules on their own (the prefix
index that replaced conversation affinity: tests/backends/test_prefix_index.py)."""

from __future__ import annotations

import pytest

from app.backends.placement import Placement, PlacementRule, parse_placement
from app.backends.spec import parse_backend
from app.emulator.prompt_cache import PromptCache
from app.ollama.names import model_key


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
