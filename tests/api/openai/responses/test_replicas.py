"""A stored conversation is the database's, not a process's: two `ollama-gateway serve`
processes on one database (SQLite file, PostgreSQL) take turns in one three-turn
`previous_response_id` chain, and each turn is answered from the whole conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.api.openai.responses.conftest import ADMIN_KEY, MODEL
from tests.support.databases import fresh_pg_database
from tests.support.replicas import replicas


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/shared.db"
        return
    with fresh_pg_database() as url:
        yield url


def test_a_chain_whose_turns_go_to_two_replicas(
    emulator_url: str, database_url: str, tmp_path: Path
) -> None:
    env = {
        "GATEWAY_BACKENDS": emulator_url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_REQUEST_TIMEOUT": "30",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    with replicas(2, env) as (a, b):
        first, second = (
            openai.OpenAI(base_url=f"{r.url}/v1", api_key=ADMIN_KEY, max_retries=0) for r in (a, b)
        )
        one = first.responses.create(model=MODEL, input="Where do rivers start?")
        two = second.responses.create(
            model=MODEL, input="And where do they end?", previous_response_id=one.id
        )
        three = first.responses.create(
            model=MODEL, input="Name one.", previous_response_id=two.id, stream=False
        )
        # each replica reads what the other stored
        assert second.responses.retrieve(three.id).output_text == three.output_text
        assert first.responses.retrieve(two.id).previous_response_id == one.id
        listed = second.responses.input_items.list(three.id, order="asc")
        assert [i.type for i in listed.data] == ["message"] * 5
        # the answer is the whole conversation's: sent whole, it is the same
        whole = second.responses.create(
            model=MODEL, store=False,
            input=[{"role": "user", "content": "Where do rivers start?"},
                   {"role": "assistant", "content": one.output_text},
                   {"role": "user", "content": "And where do they end?"},
                   {"role": "assistant", "content": two.output_text},
                   {"role": "user", "content": "Name one."}],
        )  # fmt: skip
        alone = first.responses.create(model=MODEL, input="Name one.", store=False)
    assert whole.output_text == three.output_text != alone.output_text
