"""Quotas per key and per team (issue 27): checked before runs start on every surface, a
429 in each surface's own shape naming the quota with `Retry-After` at the window's end,
charged after each run, windows moved by a clock the test sets (no waiting for a day), on
SQLite and PostgreSQL; concurrency (what may overshoot); a batch job whose key runs out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.access import KeyStore
from app.main import create_app
from tests.api.conftest import gateway_settings, set_faults
from tests.support.databases import fresh_pg_database
from tests.support.servers import serving_in_thread

MODEL = "llama3.1:8b"
EMBED = "nomic-embed-text:latest"
RUN = {"model": MODEL, "prompt": "hello", "options": {"max_tokens": 4}}


class MovableClock:
    """What time it is for the gateway's quota windows; the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Gateway:
    url: str
    admin: str
    clock: MovableClock
    database_url: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin}"}

    def post(self, path: str, body: Any, key: str | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}{path}", json=body, headers={**self.headers(key), **kw}, timeout=30
        )

    def key(self, name: str, **body: Any) -> str:
        reply = self.post("/gateway/keys", {"name": name, **body})
        assert reply.status_code == 201, reply.text
        key: str = reply.json()["key"]
        return key

    def quotas(self, key: str) -> dict[str, Any]:
        reply = httpx.get(f"{self.url}/gateway/quotas", headers=self.headers(key), timeout=10)
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body


def tokens_of(result: dict[str, Any]) -> int:
    """Prompt and output tokens of a run as `/gateway/generate` answers it."""
    meta = result["metadata"]
    return int(meta.get("prompt_eval_count") or 0) + int(meta.get("eval_count") or 0)


def used(status: dict[str, Any], owner: str, quota: str) -> float:
    entry = status[owner]
    assert entry is not None
    line = next(q for q in entry["quotas"] if q["quota"] == quota)
    return float(line["used"])


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    else:
        with fresh_pg_database() as url:
            yield url


@contextlib.contextmanager
def gateway(
    emulator_url: str, tmp_path: Path, database_url: str, clock: MovableClock, **extra: Any
) -> Iterator[Gateway]:
    settings = gateway_settings(
        [emulator_url], tmp_path, database_url=database_url, key_cache_seconds=0, **extra
    )
    store = KeyStore(database_url)
    try:
        admin = store.create(f"root-{os.getpid()}-{time.monotonic_ns()}", "admin").key
    finally:
        store.close()
    with serving_in_thread(create_app(settings, clock=clock)) as url:
        yield Gateway(url, admin, clock, database_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, emulator_url: str, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway (its clock at 23:00 UTC on a day) with an admin key, on either database."""
    clock = MovableClock(datetime(2026, 12, 5, 23, 0, 0, tzinfo=UTC))
    with database(request.param, tmp_path) as url, gateway(emulator_url, tmp_path, url, clock) as g:
        yield g


# -- every surface refuses a spent team quota --------------------------------------------


def surface_requests() -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    """(surface, path, body, extra headers) of a request on each surface that runs a model."""
    chat = [{"role": "user", "content": "hi"}]
    anthropic = {"anthropic-version": "2023-06-01"}
    return [
        ("gateway", "/gateway/generate", RUN, {}),
        ("gateway", "/gateway/chat", {"model": MODEL, "messages": chat}, {}),
        ("gateway", "/gateway/batches", {"model": MODEL, "prompts": ["a", "b"]}, {}),
        ("gateway", "/gateway/comparisons/stream", {"models": [MODEL], "prompt": "hi"}, {}),
        ("ollama", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}, {}),
        ("ollama", "/api/chat", {"model": MODEL, "messages": chat}, {}),
        ("ollama", "/api/embed", {"model": EMBED, "input": "hi"}, {}),
        ("openai", "/v1/chat/completions", {"model": MODEL, "messages": chat}, {}),
        ("openai", "/v1/completions", {"model": MODEL, "prompt": "hi"}, {}),
        ("openai", "/v1/embeddings", {"model": EMBED, "input": "hi"}, {}),
        ("openai", "/v1/responses", {"model": MODEL, "input": "hi"}, {}),
        (
            "anthropic",
            "/v1/messages",
            {"model": MODEL, "max_tokens": 8, "messages": chat},
            anthropic,
        ),
    ]


def refusal_message(surface: str, reply: httpx.Response) -> str:
    """The message of a 429, checked to be in the surface's own shape."""
    body = reply.json()
    if surface == "gateway":
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert body["status"] == 429
        return str(body["detail"])
    if surface == "ollama":
        assert set(body) == {"error"}
        return str(body["error"])
    if surface == "openai":
        assert body["error"]["type"] == "rate_limit_error"
        return str(body["error"]["message"])
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    return str(body["error"]["message"])


def test_a_team_quota_is_shared_by_its_keys_refused_on_every_surface_and_opens_next_day(
    gw: Gateway,
) -> None:
    assert gw.post("/gateway/teams", {"name": "x"}).status_code == 201
    alice, bob = gw.key("alice", team="x"), gw.key("bob", team="x")
    # One run measures what a request costs; both keys' runs are charged to the team.
    first = gw.post("/gateway/generate", RUN, alice)
    assert first.status_code == 200
    one = used(gw.quotas(alice), "team", "tokens_per_day")
    assert one == tokens_of(first.json()) > 0
    assert used(gw.quotas(alice), "key", "tokens_per_day") == one
    limit = int(one * 3)
    reply = httpx.patch(
        f"{gw.url}/gateway/teams/x",
        json={"quotas": {"tokens_per_day": limit}},
        headers=gw.headers(),
        timeout=10,
    )
    assert reply.status_code == 200 and reply.json()["quotas"] == {"tokens_per_day": limit}
    # Requests of either key pass until the team's sum reaches N.
    charged = {"alice": one, "bob": 0.0}
    for turn in range(60):
        name, key = ("bob", bob) if turn % 2 == 0 else ("alice", alice)
        total = used(gw.quotas(key), "team", "tokens_per_day")
        if total >= limit:
            break
        reply = gw.post("/gateway/generate", RUN, key)
        assert reply.status_code == 200, reply.text
        charged[name] += tokens_of(reply.json())
    status = gw.quotas(bob)
    assert used(status, "team", "tokens_per_day") == charged["alice"] + charged["bob"] >= limit
    assert used(status, "key", "tokens_per_day") == charged["bob"] > 0  # bob's own share
    line = next(q for q in status["team"]["quotas"] if q["quota"] == "tokens_per_day")
    assert line["limit"] == limit and line["left"] == 0 and line["window"] == "2026-12-05"

    expected = f"team 'x' quota tokens_per_day ({limit}) is spent"
    for key in (alice, bob):
        for surface, path, body, extra in surface_requests():
            reply = gw.post(path, body, key, **extra)
            assert reply.status_code == 429, (path, reply.text)
            assert reply.headers["retry-after"] == "3600", path  # 23:00 to midnight UTC
            assert expected in refusal_message(surface, reply), (path, reply.text)
    # Requests that run nothing still answer: the key sees why.
    assert httpx.get(f"{gw.url}/api/tags", headers=gw.headers(bob), timeout=10).status_code == 200

    gw.clock.now += timedelta(hours=1, seconds=1)  # the next day's window opens
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    generated = gw.post("/gateway/generate", RUN, alice)
    chatted = gw.post("/v1/chat/completions", chat, bob)
    assert generated.status_code == 200 and chatted.status_code == 200
    status = gw.quotas(alice)
    line = next(q for q in status["team"]["quotas"] if q["quota"] == "tokens_per_day")
    assert line["window"] == "2026-12-06"
    assert line["used"] == tokens_of(generated.json()) + chatted.json()["usage"]["total_tokens"]


def test_a_key_quota_and_the_month_window(emulator_url: str, tmp_path: Path) -> None:
    clock = MovableClock(datetime(2026, 12, 31, 12, 0, 0, tzinfo=UTC))
    url = f"sqlite+aiosqlite:///{tmp_path}/g.db"
    with gateway(emulator_url, tmp_path, url, clock) as gw:
        key = gw.key("carol", quotas={"tokens_per_month": 1})
        assert gw.post("/v1/completions", {"model": MODEL, "prompt": "hi"}, key).status_code == 200
        reply = gw.post("/v1/completions", {"model": MODEL, "prompt": "hi"}, key)
        assert reply.status_code == 429
        assert reply.headers["retry-after"] == str(12 * 3600)  # to the first of January
        assert "key 'carol' quota tokens_per_month (1) is spent" in reply.json()["error"]["message"]
        clock.now = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
        assert gw.post("/v1/completions", {"model": MODEL, "prompt": "hi"}, key).status_code == 200


def test_quota_windows_follow_the_configured_time_zone(emulator_url: str, tmp_path: Path) -> None:
    # 23:00 UTC is midnight in Paris (UTC+1 in December): a new day there.
    clock = MovableClock(datetime(2026, 12, 5, 22, 30, 0, tzinfo=UTC))
    url = f"sqlite+aiosqlite:///{tmp_path}/g.db"
    with gateway(emulator_url, tmp_path, url, clock, quota_tz="Europe/Paris") as gw:
        key = gw.key("dave", quotas={"requests_per_day": 1})
        assert gw.post("/gateway/generate", RUN, key).status_code == 200
        reply = gw.post("/gateway/generate", RUN, key)
        assert reply.status_code == 429 and reply.headers["retry-after"] == "1800"
        clock.now = datetime(2026, 12, 5, 23, 0, 1, tzinfo=UTC)
        assert gw.post("/gateway/generate", RUN, key).status_code == 200
        assert gw.quotas(key)["time_zone"] == "Europe/Paris"


# -- concurrency -------------------------------------------------------------------------


async def _race(gw: Gateway, key: str, n: int) -> list[tuple[int, int]]:
    """n requests at once: each one's status and the tokens its run used (0: refused)."""
    async with httpx.AsyncClient(base_url=gw.url, headers=gw.headers(key), timeout=60) as c:
        replies = await asyncio.gather(*(c.post("/gateway/generate", json=RUN) for _ in range(n)))
    return [(r.status_code, tokens_of(r.json()) if r.status_code == 200 else 0) for r in replies]


def test_requests_per_day_admits_exactly_its_number_of_50_concurrent_requests(
    gw: Gateway, emulator_url: str
) -> None:
    """On one replica the check and the count are one step: exactly the quota passes."""
    key = gw.key("racer", quotas={"requests_per_day": 10})
    set_faults(emulator_url, first_token_delay_ms=200)  # the runs overlap
    codes = [code for code, _ in asyncio.run(_race(gw, key, 50))]
    assert codes.count(200) == 10 and codes.count(429) == 40, codes
    assert used(gw.quotas(key), "key", "requests_per_day") == 10


def test_50_concurrent_requests_racing_the_last_tokens_overshoot_by_at_most_those_in_flight(
    gw: Gateway, emulator_url: str
) -> None:
    """Tokens are known when a run ends: the runs admitted before the quota is reached (in
    flight) may overshoot it, each charged in full; none is admitted after."""
    key = gw.key("tokens", quotas={"tokens_per_day": 10**6})
    for _ in range(3):
        assert gw.post("/gateway/generate", RUN, key).status_code == 200
    before = used(gw.quotas(key), "key", "tokens_per_day")
    limit = int(before + 1)  # the last token of the quota
    reply = httpx.patch(
        f"{gw.url}/gateway/keys/tokens",
        json={"quotas": {"tokens_per_day": limit}},
        headers=gw.headers(),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    set_faults(emulator_url, first_token_delay_ms=300)  # all 50 are in flight at once
    wave = asyncio.run(_race(gw, key, 50))
    admitted = [tokens for code, tokens in wave if code == 200]
    assert admitted and len(admitted) + [c for c, _ in wave].count(429) == 50, wave
    after = used(gw.quotas(key), "key", "tokens_per_day")
    assert after == before + sum(admitted)  # every admitted run charged in full, none lost
    assert after - limit < sum(admitted)  # the overshoot: at most the runs that were in flight
    again = asyncio.run(_race(gw, key, 50))  # once spent, none passes
    assert [code for code, _ in again] == [429] * 50
    assert used(gw.quotas(key), "key", "tokens_per_day") == after


def test_two_replicas_share_the_counters_in_the_database(emulator_url: str, tmp_path: Path) -> None:
    clock = MovableClock(datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC))
    with (
        fresh_pg_database() as url,
        gateway(emulator_url, tmp_path, url, clock, quota_sync_seconds=0.1) as one,
    ):
        settings = gateway_settings(
            [emulator_url], tmp_path / "b", database_url=url, key_cache_seconds=0,
            quota_sync_seconds=0.1,
        )  # fmt: skip
        with serving_in_thread(create_app(settings, clock=clock)) as other_url:
            two = Gateway(other_url, one.admin, clock, url)
            assert one.post("/gateway/teams", {"name": "shared"}).status_code == 201
            key = one.key("both", team="shared")
            reply = httpx.patch(
                f"{one.url}/gateway/teams/shared",
                json={"quotas": {"requests_per_day": 6}},
                headers=one.headers(),
                timeout=10,
            )
            assert reply.status_code == 200
            codes = []
            for i in range(10):
                codes.append(
                    (one if i % 2 else two).post("/gateway/generate", RUN, key).status_code
                )
                time.sleep(0.3)  # longer than a sync: each replica has seen the other's
            assert codes == [200] * 6 + [429] * 4, codes
            assert used(two.quotas(key), "team", "requests_per_day") == 6


# -- a batch job whose key runs out ------------------------------------------------------


def test_a_batch_job_stops_taking_runs_when_its_key_runs_out(gw: Gateway) -> None:
    key = gw.key("batcher", quotas={"requests_per_day": 4})
    prompts = [f"prompt {i}" for i in range(8)]
    reply = gw.post(
        "/gateway/batches",
        {"model": MODEL, "prompts": prompts, "background": True, "max_concurrent": 2},
        key,
    )
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        job = httpx.get(f"{gw.url}/gateway/jobs/{job_id}", headers=gw.headers(key), timeout=10)
        if job.json()["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    job_body = job.json()
    # The submission counted one request, each run one more: 3 runs, then the quota is spent.
    assert job_body["status"] == "failed", job_body
    reason = "key 'batcher' quota requests_per_day (4) is spent"
    assert reason in job_body["error"] and "3 of 8 runs finished" in job_body["error"]
    assert job_body["completed"] == 3 and job_body["succeeded"] == 3
    batch = httpx.get(
        f"{gw.url}/gateway/batches/{job_body['batch_id']}", headers=gw.headers(key), timeout=10
    )
    assert batch.status_code == 200 and len(batch.json()["runs"]) == 3, batch.text
    events = httpx.get(
        f"{gw.url}/gateway/jobs/{job_id}/events", headers=gw.headers(key), timeout=10
    ).text
    assert reason in events  # the done event says why
    status = gw.quotas(key)
    assert used(status, "key", "requests_per_day") == 4
    # the job's runs are charged to the key that started it
    assert used(status, "key", "tokens_per_day") == sum(tokens_of(r) for r in batch.json()["runs"])


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quotas", "field"),
    [
        ({"tokens_per_day": -1}, "tokens_per_day"),
        ({"tokens_per_month": "lots"}, "tokens_per_month"),
        ({"requests_per_day": 1.5}, "requests_per_day"),
        ({"backend_seconds_per_day": -0.5}, "backend_seconds_per_day"),
        ({"backend_seconds_per_day": "1h"}, "backend_seconds_per_day"),
        ({"gpus_per_day": 3}, "gpus_per_day"),
    ],
)
def test_a_bad_quota_is_a_422_naming_the_field(
    quotas: dict[str, Any], field: str, emulator_url: str, tmp_path: Path
) -> None:
    clock = MovableClock(datetime(2026, 12, 5, tzinfo=UTC))
    with gateway(emulator_url, tmp_path, f"sqlite+aiosqlite:///{tmp_path}/g.db", clock) as gw:
        replies = [
            gw.post("/gateway/keys", {"name": "k", "quotas": quotas}),
            gw.post("/gateway/teams", {"name": "t", "quotas": quotas}),
        ]
        assert gw.post("/gateway/teams", {"name": "ok"}).status_code == 201
        replies.append(
            httpx.patch(f"{gw.url}/gateway/teams/ok", json={"quotas": quotas}, headers=gw.headers())
        )
        gw.key("fine")
        replies.append(
            httpx.patch(
                f"{gw.url}/gateway/keys/fine", json={"quotas": quotas}, headers=gw.headers()
            )
        )
        for reply in replies:
            assert reply.status_code == 422, reply.text
            assert field in reply.text, reply.text
        assert [q for q in gw.quotas(gw.key("k2"))["key"]["quotas"] if q["limit"]] == []


def test_the_command_line_creates_keys_with_a_team_and_quotas(
    emulator_url: str, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/g.db"
    clock = MovableClock(datetime(2026, 12, 5, 23, 0, tzinfo=UTC))
    env = {**os.environ, "GATEWAY_DATABASE_URL": url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app.cli", "keys", "create", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    with gateway(emulator_url, tmp_path, url, clock) as gw:
        assert gw.post("/gateway/teams", {"name": "ml"}).status_code == 201
        made = cli("--name", "cli-key", "--team", "ml", "--requests-per-day", "1",
                   "--tokens-per-day", "1000", "--tokens-per-month", "9000",
                   "--backend-seconds-per-day", "2.5")  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "team 'ml'" in made.stdout and "requests_per_day=1" in made.stdout
        key = made.stdout.split()[-1]
        keys = httpx.get(f"{gw.url}/gateway/keys", headers=gw.headers(), timeout=10).json()
        record = next(k for k in keys if k["name"] == "cli-key")
        assert record["team"] == "ml"
        assert record["quotas"] == {
            "tokens_per_day": 1000,
            "tokens_per_month": 9000,
            "requests_per_day": 1,
            "backend_seconds_per_day": 2.5,
        }
        assert gw.post("/gateway/generate", RUN, key).status_code == 200
        assert gw.post("/gateway/generate", RUN, key).status_code == 429
        bad = cli("--name", "neg", "--tokens-per-day", "-5")
        assert bad.returncode == 2 and "tokens_per_day" in bad.stderr
        unknown = cli("--name", "lost", "--team", "nobody")
        assert unknown.returncode == 2 and "no team named 'nobody'" in unknown.stderr


def test_keys_without_a_team_or_quotas_work_as_before_and_are_counted(gw: Gateway) -> None:
    key = gw.key("plain")
    for _ in range(3):
        assert gw.post("/gateway/generate", RUN, key).status_code == 200
    status = gw.quotas(key)
    assert status["team"] is None
    assert used(status, "key", "requests_per_day") == 3
    assert all(q["limit"] is None and q["left"] is None for q in status["key"]["quotas"])
    # a user key sees only its own; an admin may ask for any key's
    other = httpx.get(
        f"{gw.url}/gateway/quotas", params={"key": "root"}, headers=gw.headers(key), timeout=10
    )
    assert other.status_code == 403
    seen = httpx.get(
        f"{gw.url}/gateway/quotas", params={"key": "plain"}, headers=gw.headers(), timeout=10
    )
    assert seen.status_code == 200 and seen.json()["key"]["name"] == "plain"
