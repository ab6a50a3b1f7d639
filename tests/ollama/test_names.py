"""Model-name normalisation: Ollama's rules for when two names are one model."""

from __future__ import annotations

import pytest

from app.ollama import model_key, normalize_model_name, same_model


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3.1", "llama3.1:latest"),
        ("llama3.1:8b", "llama3.1:8b"),
        ("library/llama3.1", "llama3.1:latest"),
        ("registry.ollama.ai/library/llama3.1:latest", "llama3.1:latest"),
        ("user/model:tag", "user/model:tag"),
        ("hf.co/org/m:Q4_K_M", "hf.co/org/m:Q4_K_M"),
        ("host:5000/ns/m", "host:5000/ns/m:latest"),
        ("  qwen2.5:0.5b  ", "qwen2.5:0.5b"),
    ],
)
def test_normalize_gives_the_short_display_form(name: str, expected: str) -> None:
    assert normalize_model_name(name) == expected


def test_names_differing_in_case_and_defaults_are_the_same_model() -> None:
    assert same_model("Llama3.2", "registry.ollama.ai/library/llama3.2:latest")
    assert model_key("LLAMA3.2") == model_key("llama3.2:latest")


def test_different_tags_are_different_models() -> None:
    assert not same_model("llama3.1:8b", "llama3.1")


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_model_name(bad)


def test_same_model_is_false_rather_than_raising_for_an_empty_name() -> None:
    assert not same_model("", "llama3.1")


@pytest.mark.parametrize("bad", [None, 3, ["llama3.1"], {"name": "llama3.1"}])
def test_a_name_that_is_not_a_string_is_refused_not_a_crash(bad: object) -> None:
    # What a JSON body holds may be anything; the remembered keys take strings only.
    with pytest.raises(ValueError, match="must be a string"):
        model_key(bad)  # type: ignore[arg-type]
    assert not same_model(bad, "llama3.1")  # type: ignore[arg-type]
