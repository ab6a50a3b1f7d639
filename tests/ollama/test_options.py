"""Options: the seed's names translated to Ollama's, wrong types refused before sending."""

from __future__ import annotations

from typing import Any

import pytest

from app.ollama import ExecutionOptions, plan_from_dict, plan_from_execution_options
from app.ollama.run_spec import RunSpec


def test_execution_options_are_translated_to_ollama_names() -> None:
    plan = plan_from_execution_options(
        ExecutionOptions(
            temperature=0.2,
            max_tokens=64,
            context_window=1024,
            system_prompt="Be brief.",
            format="json",
            timeout=12,
        )
    )
    assert plan.options == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "num_predict": 64,
        "num_ctx": 1024,
    }
    assert plan.system == "Be brief."
    assert plan.format == "json"
    assert plan.timeout == 12.0


def test_dict_options_accept_both_vocabularies() -> None:
    plan = plan_from_dict(
        {"max_tokens": 5, "temperature": 1, "stop": ["\n"], "system_prompt": "S", "seed": 7}
    )
    assert plan.options == {"num_predict": 5, "temperature": 1.0, "stop": ["\n"], "seed": 7}
    assert plan.system == "S"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 4.5}, "top_k"),
        ({"num_predict": True}, "num_predict"),
        ({"stop": "\n"}, "stop"),
        ({"use_mmap": 1}, "use_mmap"),
        ({"temprature": 0.1}, "unknown option"),
        ({"format": "xml"}, "format"),
        ({"timeout": -1}, "timeout"),
        ({"max_tokens": 3, "num_predict": 4}, "together"),
    ],
)
def test_wrong_options_raise_value_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_from_dict(options)


def test_wrongly_typed_execution_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        plan_from_execution_options(ExecutionOptions(max_tokens="many"))  # type: ignore[arg-type]


def test_generate_payload_carries_system_and_options() -> None:
    plan = plan_from_execution_options(ExecutionOptions(system_prompt="Sys", max_tokens=9))
    body = RunSpec(kind="generate", model="m", prompt="p", plan=plan).payload()
    assert body["system"] == "Sys"
    assert body["prompt"] == "p"
    assert body["options"]["num_predict"] == 9
    assert "stream" not in body


def test_chat_payload_puts_the_system_prompt_first_unless_the_history_has_one() -> None:
    plan = plan_from_execution_options(ExecutionOptions(system_prompt="Sys"))
    user = [{"role": "user", "content": "hi"}]
    body = RunSpec(kind="chat", model="m", prompt="hi", plan=plan, messages=user).payload()
    assert body["messages"][0] == {"role": "system", "content": "Sys"}
    own = [{"role": "system", "content": "Mine"}, *user]
    body = RunSpec(kind="chat", model="m", prompt="hi", plan=plan, messages=own).payload()
    assert [m["content"] for m in body["messages"]] == ["Mine", "hi"]
