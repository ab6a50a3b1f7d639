"""GET /gateway/usage: the usage ledger by team, key, model, backend or surface, hour or
day; CSV on request; a user key sees its own; bad input is a 422 naming the field; with
GATEWAY_PRICES each row carries a cost."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

ADMIN_KEY = "ogw_" + "u" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PRICES = (
    '{"currency": "EUR", "models": {"llama3*": {"prompt_per_million": 100, '
    '"output_per_million": 300, "per_gpu_hour": 3600}, "*": {"output_per_million": 1}}}'
)
RUN = {"model": "llama3.1:8b", "prompt": "hello there", "options": {"max_tokens": 5}}
COUNTS = ("requests", "failures", "prompt_tokens", "output_tokens")


@pytest.fixture
def gateway(emulator_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A gateway with an admin key, prices, and a user key `alice` (its headers)."""
    settings = gateway_settings([emulator_url], tmp_path, admin_key=ADMIN_KEY, prices=PRICES)
    with serving_in_thread(create_app(settings)) as url:
        made = httpx.post(
            f"{url}/gateway/keys", json={"name": "alice", "scope": "user"}, headers=ADMIN
        )
        assert made.status_code == 201, made.text
        yield url, {"Authorization": f"Bearer {made.json()['key']}"}


def _results(url: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/gateway/results", params={"limit": 500}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def _usage(url: str, headers: dict[str, str], **params: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/gateway/usage", params=params, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    return body


def test_rows_sum_the_stored_runs_by_key_and_a_user_sees_its_own(
    gateway: tuple[str, dict[str, str]],
) -> None:
    url, alice = gateway
    for headers in (ADMIN, ADMIN, alice):
        reply = httpx.post(f"{url}/gateway/generate", json=RUN, headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
    chat = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=alice, timeout=30)
    assert reply.status_code == 200, reply.text

    runs = _results(url)
    assert len(runs) == 4
    body = _usage(url, ADMIN, group_by="key")
    assert set(body) == {"rows", "currency"} and body["currency"] == "EUR"
    rows = {row["key"]: row for row in body["rows"]}
    assert set(rows) == {"bootstrap-admin", "alice"}
    for key, row in rows.items():
        mine = [r for r in runs if r["principal"] == key]
        assert set(row) == {
            "bucket", "key", "requests", "failures", "prompt_tokens", "output_tokens",
            "backend_seconds", "load_seconds", "cost",
        }  # fmt: skip
        assert row["requests"] == len(mine) == 2
        assert row["failures"] == 0
        assert row["prompt_tokens"] == sum(r["metadata"]["prompt_eval_count"] for r in mine)
        assert row["output_tokens"] == sum(r["tokens_used"] for r in mine)
        backend = sum(r["metadata"]["total_duration"] for r in mine) / 1e9
        assert row["backend_seconds"] == pytest.approx(backend, abs=1e-5)
        assert row["backend_seconds"] > 0
        load = sum(r["metadata"].get("load_duration", 0) for r in mine) / 1e9
        assert row["load_seconds"] == pytest.approx(load, abs=1e-5)
        # llama3*: 100 per million prompt tokens, 300 per million output, 3600 per hour
        cost = row["prompt_tokens"] * 1e-4 + row["output_tokens"] * 3e-4 + backend
        assert row["cost"] == pytest.approx(cost, rel=1e-4)
        hour = datetime.fromisoformat(row["bucket"].replace("Z", "+00:00"))
        assert hour.minute == hour.second == 0 and hour.tzinfo is not None

    own = _usage(url, alice, group_by="key")["rows"]
    assert [row["key"] for row in own] == ["alice"]
    assert own[0]["requests"] == 2
    by_surface = {
        r["surface"]: r["requests"] for r in _usage(url, alice, group_by="surface")["rows"]
    }
    assert by_surface == {"gateway": 1, "openai": 1}
    teams = _usage(url, ADMIN, group_by="team")["rows"]
    assert [(r["team"], r["requests"]) for r in teams] == [(None, 4)]
    days = _usage(url, ADMIN, group_by="model", bucket="day")["rows"]
    assert [(r["model"], r["requests"]) for r in days] == [("llama3.1:8b", 4)]
    assert days[0]["bucket"].endswith("T00:00:00Z")
    # A range that holds none of them: no rows.
    assert _usage(url, ADMIN, **{"from": "2020-01-01", "to": "2020-01-02"})["rows"] == []


def test_csv_when_asked_for(gateway: tuple[str, dict[str, str]]) -> None:
    url, alice = gateway
    reply = httpx.post(f"{url}/gateway/generate", json=RUN, headers=alice, timeout=30)
    assert reply.status_code == 200, reply.text
    reply = httpx.get(
        f"{url}/gateway/usage",
        params={"group_by": "model", "bucket": "day"},
        headers={**alice, "Accept": "text/csv"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(reply.text)))
    assert list(table[0]) == [
        "bucket", "model", "requests", "failures", "prompt_tokens", "output_tokens",
        "backend_seconds", "load_seconds", "cost",
    ]  # fmt: skip
    assert [(r["model"], r["requests"]) for r in table] == [("llama3.1:8b", "1")]
    assert float(table[0]["cost"]) > 0


def test_embeddings_are_counted_from_memory(gateway: tuple[str, dict[str, str]]) -> None:
    """Embeddings are not stored runs: the ledger adds them from memory within seconds."""
    url, alice = gateway
    body = {"model": "llama3.1:8b", "input": ["one text", "and another one"]}
    reply = httpx.post(f"{url}/v1/embeddings", json=body, headers=alice, timeout=30)
    assert reply.status_code == 200, reply.text
    tokens = reply.json()["usage"]["prompt_tokens"]
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = _usage(url, alice, group_by="surface")["rows"]
        if rows:
            break
        time.sleep(0.3)
    assert [(r["surface"], r["requests"], r["prompt_tokens"]) for r in rows] == [
        ("openai", 1, tokens)
    ]
    assert _results(url) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "user"}, "group_by"),
        ({"bucket": "week"}, "bucket"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-45"}, "to"),
        ({"from": "0001-01-01", "to": "9999-12-31"}, "from"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    gateway: tuple[str, dict[str, str]], params: dict[str, str], field: str
) -> None:
    url, _ = gateway
    reply = httpx.get(f"{url}/gateway/usage", params=params, headers=ADMIN)
    assert reply.status_code == 422, reply.text
    problem = reply.json()
    assert problem["errors"][0]["loc"] == ["query", field]
    assert field in problem["detail"]


def test_a_range_of_exactly_400_days_is_fine(gateway: tuple[str, dict[str, str]]) -> None:
    url, _ = gateway
    end = datetime.now(UTC)
    start = end - timedelta(days=400)
    params = {"from": start.isoformat(), "to": end.isoformat()}
    assert _usage(url, ADMIN, **params)["rows"] == []


def test_without_prices_rows_have_no_cost(emulator_url: str, tmp_path: Path) -> None:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        assert httpx.post(f"{url}/gateway/generate", json=RUN, timeout=30).status_code == 200
        body = httpx.get(f"{url}/gateway/usage", params={"group_by": "key"}).json()
    assert set(body) == {"rows"}
    assert [(r["key"], r["requests"]) for r in body["rows"]] == [(None, 1)]
    assert "cost" not in body["rows"][0]


def test_the_cli_prints_the_table(gateway: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, alice = gateway
    reply = httpx.post(f"{url}/gateway/generate", json=RUN, headers=alice, timeout=30)
    assert reply.status_code == 200, reply.text
    env = {"GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
           "GATEWAY_PRICES": PRICES}  # fmt: skip
    done = CliRunner().invoke(cli, ["usage", "--group-by", "key", "--since", "1d"], env=env)
    assert done.exit_code == 0, done.output
    head, *lines = done.output.splitlines()
    assert head.split() == [
        "BUCKET", "KEY", "REQUESTS", "FAILURES", "PROMPT_TOKENS", "OUTPUT_TOKENS",
        "BACKEND_S", "LOAD_S", "COST", "(EUR)",
    ]  # fmt: skip
    assert len(lines) == 1
    cells = lines[0].split()
    assert cells[1:4] == ["alice", "1", "0"]
    assert cells[0].endswith("T00:00:00Z")  # by day unless --bucket hour
    bad = CliRunner().invoke(cli, ["usage", "--group-by", "user"], env=env)
    assert bad.exit_code == 2 and "--group-by" in bad.output


def test_unstored_usage_is_flushed_at_shutdown(
    emulator_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding's usage waits in memory (no periodic flush within the test: its period
    is set to an hour); the app's shutdown adds it to the ledger."""
    import app.main

    monkeypatch.setattr(app.main, "USAGE_FLUSH_SECONDS", 3600.0)
    body = {"model": "llama3.1:8b", "input": "a text"}
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        reply = httpx.post(f"{url}/v1/embeddings", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        time.sleep(0.5)
        assert httpx.get(f"{url}/gateway/usage").json()["rows"] == []  # not yet
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        rows = httpx.get(f"{url}/gateway/usage", params={"group_by": "model"}).json()["rows"]
    assert [(r["model"], r["requests"]) for r in rows] == [("llama3.1:8b", 1)]
    assert rows[0]["prompt_tokens"] == reply.json()["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize(
    ("prices", "said"),
    [
        ('{"currency": "EUR", "models": {"llama3*": {"prompt_per_million": -1}}}',
         "GATEWAY_PRICES_MODELS_LLAMA3*_PROMPT_PER_MILLION"),
        ('{"currency": "EUR", "models": {"x": {}}}', "give prompt_per_million"),
        ('{"currency": "EUR",', "GATEWAY_PRICES: not valid JSON"),
        ('{"models": {"x": {"per_gpu_hour": 1}}}', "GATEWAY_PRICES_CURRENCY"),
    ],
)  # fmt: skip
def test_bad_prices_stop_the_start_with_exit_code_2(prices: str, said: str, tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_PRICES": prices,
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
