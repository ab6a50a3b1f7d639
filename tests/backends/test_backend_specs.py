"""Backend entries: tags, per-model limits and token variables, read and written back."""

from __future__ import annotations

import pytest

from app.backends.spec import parse_backend, spec_text
from app.settings import Settings


def test_tags_per_model_limits_and_token_variables_parse() -> None:
    spec = parse_backend("gpu1=http://10.0.0.5:11434;max=4;tags=a100,big;token_env=GPU1_TOKEN")
    assert spec.tags == ("a100", "big") and spec.token_env == "GPU1_TOKEN"
    assert spec.max_concurrency == 4 and spec.max_per_model is None
    assert parse_backend("http://h:1;max_per_model=2").max_per_model == 2
    assert parse_backend("http://h:1;tags= a , b,a").tags == ("a", "b")


@pytest.mark.parametrize(
    "text",
    [
        "http://h:1;max_per_model=0",
        "http://h:1;tags=",
        "http://h:1;tags=a b",
        "http://h:1;tags=a;tags=b",
        "http://h:1;token_env=1BAD",
        "http://h:1;token_env=A-B",
        "http://h:1;max=²",
        "http://h:1;weight=inf",
    ],
)
def test_bad_parameters_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bad parameter"):
        parse_backend(text)


def test_a_spec_is_written_back_as_it_is_read() -> None:
    text = "gpu1=http://h:1;max=4;max_per_model=2;weight=2.0;tags=a100,big;token_env=T"
    spec = parse_backend(text)
    assert spec_text(spec) == text and parse_backend(spec_text(spec)) == spec


def test_the_commas_of_tags_do_not_split_the_backend_list() -> None:
    settings = Settings(
        backends="gpu1=http://10.0.0.5:11434;max=4;tags=a100,big, http://10.0.0.6:11434/,"
        "cpu=http://10.0.0.7:11434;tags=cpu",
        _env_file=None,
    )
    assert settings.backends == [
        "gpu1=http://10.0.0.5:11434;max=4;tags=a100,big",
        "http://10.0.0.6:11434",
        "cpu=http://10.0.0.7:11434;tags=cpu",
    ]
    assert parse_backend(settings.backends[0]).tags == ("a100", "big")


def test_the_token_is_read_from_the_environment_and_only_a_usable_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = parse_backend("gpu=http://h:1;token_env=GPU_TOKEN")
    monkeypatch.delenv("GPU_TOKEN", raising=False)
    assert spec.token() is None
    monkeypatch.setenv("GPU_TOKEN", " abc.DEF-123 \n")
    assert spec.token() == "abc.DEF-123"
    for unusable in ("", "two words", "line\nbreak", "naïve"):
        monkeypatch.setenv("GPU_TOKEN", unusable)
        assert spec.token() is None
    assert "abc" not in repr(spec) and parse_backend("http://h:1").token() is None
