"""The console's Usage page and the quotas on the Keys page (issue 27), in headless Chromium
against a real gateway and the emulator: stacked charts with an accessible name, the tables
and the CSV download, each quota of the key signed in as a meter of what is used, and a user
key that sees its own usage only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.ui.conftest import Console, screenshot, set_delays, sign_in

TEAM = "research"
TEAM_QUOTAS = {"tokens_per_day": 400, "requests_per_day": 10}
BOB_QUOTAS = {"tokens_per_day": 300, "backend_seconds_per_day": 60}


def ask(console: Console, key: str, model: str, times: int = 1) -> None:
    with console.api(key) as api:
        for i in range(times):
            answer = api.post(
                "/api/generate", json={"model": model, "prompt": f"Hello {i}", "stream": False}
            )
            assert answer.status_code == 200, answer.text


def usage(console: Console, key: str, group_by: str) -> list[dict[str, Any]]:
    with console.api(key) as api:
        answer = api.get("/gateway/usage", params={"group_by": group_by, "bucket": "day"})
        assert answer.status_code == 200, answer.text
        rows: list[dict[str, Any]] = answer.json()["rows"]
    return rows


def wait_for_usage(console: Console, names: set[str], timeout: float = 20) -> None:
    """The ledger is written with the group commit, not per request: wait for its rows."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {row["key"] for row in usage(console, console.admin_key, "key")}
        if names <= seen:
            return
        time.sleep(0.3)
    raise AssertionError(f"the ledger holds keys {seen}, not yet {names}")


def bob_in_research(console: Console) -> str:
    """A team with quotas, and a user key `bob` in it with quotas of its own."""
    with console.api() as api:
        team = api.post("/gateway/teams", json={"name": TEAM, "quotas": TEAM_QUOTAS})
        assert team.status_code == 201, team.text
        made = api.post(
            "/gateway/keys",
            json={"name": "bob", "scope": "user", "team": TEAM, "quotas": BOB_QUOTAS},
        )
        assert made.status_code == 201, made.text
        key: str = made.json()["key"]
    return key


def table_rows(page: Any, caption: str) -> list[list[str]]:
    rows = page.get_by_role("table", name=caption).locator("tbody tr")
    return [row.locator("td").all_text_contents() for row in rows.all()]


def test_the_usage_page_charts_tokens_and_backend_time_per_team_and_model(
    page: Any, console: Console, tmp_path: Path
) -> None:
    set_delays(console.emulator)
    bob = bob_in_research(console)
    ask(console, bob, "llama3.1:8b", times=3)
    ask(console, console.user_key, "qwen2.5:0.5b", times=2)
    wait_for_usage(console, {"bob", "alice"})
    by_team = {row["team"]: row for row in usage(console, console.admin_key, "team")}
    research = by_team[TEAM]
    assert research["requests"] == 3 and research["prompt_tokens"] + research["output_tokens"] > 0

    # An admin key of the team, with quotas of its own: its bars are in the screenshot.
    with console.api() as api:
        made = api.post(
            "/gateway/keys",
            json={"name": "lead", "scope": "admin", "team": TEAM, "quotas": BOB_QUOTAS},
        )
        assert made.status_code == 201, made.text
    sign_in(page, console, made.json()["key"])
    page.get_by_role("navigation", name="Console").get_by_role(
        "link", name="Usage", exact=True
    ).click()
    page.wait_for_url("**/ui/usage*")
    # Per team (the admin's default), over the last 7 days: two stacked charts with names.
    tokens_chart = page.get_by_role("img", name="Stacked bar chart of tokens")
    tokens_chart.wait_for()
    assert TEAM in (tokens_chart.get_attribute("aria-label") or "")
    assert tokens_chart.locator("canvas").count() == 1
    page.get_by_role("img", name="Stacked bar chart of backend seconds").wait_for()
    totals = {row[0]: row for row in table_rows(page, "Totals per team")}
    assert set(totals) == {TEAM, "(no team)"}
    assert totals[TEAM][1] == "3"
    tokens = research["prompt_tokens"] + research["output_tokens"]
    assert totals[TEAM][3] == f"{tokens:,}"
    # The lead's bars: nothing used by its key, the team's use (bob's) on the team's.
    page.get_by_role("meter", name="Tokens per day (key lead)").wait_for()
    assert page.get_by_role("meter", name="Tokens per day (key lead)").get_attribute("value") == "0"
    team_bar = page.get_by_role("meter", name=f"Tokens per day (team {TEAM})")
    assert float(team_bar.get_attribute("value") or -1) == tokens
    # Per model, over the last 24 hours: one row per model and hour.
    page.get_by_label("Group by").select_option("model")
    page.get_by_label("Time range").select_option("1")
    page.get_by_role("table", name="usage rows, per hour and model").wait_for()
    assert page.url.endswith("/ui/usage?group_by=model&days=1")
    models = {row[0]: row for row in table_rows(page, "Totals per model")}
    assert set(models) == {"llama3.1:8b", "qwen2.5:0.5b"}
    assert models["llama3.1:8b"][1] == "3" and models["qwen2.5:0.5b"][1] == "2"
    assert "per hour" in (
        page.get_by_role("img", name="Stacked bar chart of tokens").get_attribute("aria-label")
        or ""
    )
    rows = table_rows(page, "usage rows, per hour and model")
    assert {row[1] for row in rows} == {"llama3.1:8b", "qwen2.5:0.5b"}
    assert all(row[0].endswith(":00 UTC") for row in rows)
    # The CSV download: the same query, answered as text/csv.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    saved = tmp_path / "usage.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "usage-per-model-1d.csv"
    lines = saved.read_text(encoding="utf-8").strip().splitlines()
    assert "requests" in lines[0] and "model" in lines[0]
    assert any("llama3.1:8b" in line for line in lines[1:])
    page.get_by_label("Group by").select_option("team")
    page.get_by_label("Time range").select_option("7")
    page.get_by_role("table", name="Totals per team").wait_for()
    page.wait_for_load_state("networkidle")
    screenshot(page, "usage")


def test_a_user_key_sees_its_own_usage_and_its_quotas_as_bars(page: Any, console: Console) -> None:
    set_delays(console.emulator)
    bob = bob_in_research(console)
    ask(console, bob, "llama3.1:8b", times=2)
    ask(console, console.user_key, "qwen2.5:0.5b", times=3)
    wait_for_usage(console, {"bob", "alice"})
    own = usage(console, bob, "model")
    assert {row["model"] for row in own} == {"llama3.1:8b"}
    used = sum(row["prompt_tokens"] + row["output_tokens"] for row in own)

    sign_in(page, console, bob)
    assert (page.locator("#who").text_content() or "").startswith(f"bob (user, team {TEAM})")
    page.goto(f"{console.url}/ui/usage")
    page.get_by_role("img", name="Stacked bar chart of tokens").wait_for()
    # Only what a user key may see: no grouping by team, key or backend.
    offered = page.get_by_label("Group by").locator("option").all_text_contents()
    assert offered == ["Model", "Surface"]
    models = {row[0]: row for row in table_rows(page, "Totals per model")}
    assert set(models) == {"llama3.1:8b"}, "alice's model is in bob's usage"
    assert models["llama3.1:8b"][1] == "2"
    assert models["llama3.1:8b"][3] == f"{used:,}"
    # A URL asking for another grouping gets the user's own (per model) instead.
    page.goto(f"{console.url}/ui/usage?group_by=key&days=30")
    page.get_by_role("table", name="Totals per model").wait_for()
    assert page.get_by_label("Group by").input_value() == "model"
    # The quotas of the key and of its team, each a meter of what is used.
    tokens = page.get_by_role("meter", name="Tokens per day (key bob)")
    tokens.wait_for()
    assert float(tokens.get_attribute("max") or 0) == BOB_QUOTAS["tokens_per_day"]
    assert float(tokens.get_attribute("value") or -1) == used
    seconds = page.get_by_role("meter", name="Backend seconds per day (key bob)")
    assert float(seconds.get_attribute("max") or 0) == BOB_QUOTAS["backend_seconds_per_day"]
    team_tokens = page.get_by_role("meter", name=f"Tokens per day (team {TEAM})")
    assert float(team_tokens.get_attribute("max") or 0) == TEAM_QUOTAS["tokens_per_day"]
    assert float(team_tokens.get_attribute("value") or -1) == used
    requests = page.get_by_role("meter", name=f"Requests per day (team {TEAM})")
    assert float(requests.get_attribute("value") or -1) >= 2
    # Quotas not set get no bar.
    assert page.get_by_role("meter", name="Tokens per month (key bob)").count() == 0
    text = page.locator(".quota").first.text_content() or ""
    share = 100 * used // BOB_QUOTAS["tokens_per_day"]
    assert f"{used:,} of {BOB_QUOTAS['tokens_per_day']:,} used ({share}%)" in text
    # alice has no quota: the page says so.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, console, console.user_key)
    page.goto(f"{console.url}/ui/usage")
    page.get_by_text("No quota is set on this key or its team.").wait_for()
    page.get_by_role("table", name="Totals per model").wait_for()
    assert set(row[0] for row in table_rows(page, "Totals per model")) == {"qwen2.5:0.5b"}


def test_an_admin_sets_a_keys_team_and_quotas_on_the_keys_page(page: Any, console: Console) -> None:
    with console.api() as api:
        made = api.post("/gateway/teams", json={"name": TEAM})
        assert made.status_code == 201, made.text
    sign_in(page, console, console.admin_key)
    page.goto(f"{console.url}/ui/keys")
    page.get_by_role("table", name="keys").wait_for()
    create = page.get_by_role("form", name="Create a key")
    create.get_by_label("Name", exact=True).fill("carol")
    create.get_by_label("Team").fill(TEAM)
    create.get_by_label("Tokens per day").fill("20000")
    create.get_by_label("Requests per day").fill("100")
    create.get_by_role("button", name="Create key").click()
    page.get_by_role("status", name="The new key").wait_for()

    def stored(name: str) -> dict[str, Any]:
        with console.api() as api:
            keys = {k["name"]: k for k in api.get("/gateway/keys").json()}
        key: dict[str, Any] = keys[name]
        return key

    carol = stored("carol")
    assert carol["team"] == TEAM
    assert carol["quotas"] == {"tokens_per_day": 20000, "requests_per_day": 100}

    def shown(name: str) -> list[str]:
        table = page.get_by_role("table", name="keys")
        row = table.locator("tbody tr").filter(has=page.get_by_role("cell", name=name, exact=True))
        cells: list[str] = row.locator("td").all_text_contents()
        return cells

    assert shown("carol")[3] == TEAM
    assert shown("carol")[5] == "tokens per day: 20,000; requests per day: 100"
    # Changed later (PATCH): out of the team, another token quota, no request quota.
    page.get_by_role("button", name="Change team and quotas of key carol").click()
    change = page.get_by_role("form", name="Team and quotas of key carol")
    assert change.get_by_label("Team").input_value() == TEAM
    assert change.get_by_label("Tokens per day").input_value() == "20000"
    change.get_by_label("Team").fill("")
    change.get_by_label("Tokens per day").fill("30000")
    change.get_by_label("Requests per day").fill("")
    change.get_by_label("Backend seconds per day").fill("90.5")
    change.get_by_role("button", name="Save").click()
    page.get_by_role("status").filter(has_text="Key carol changed.").wait_for()
    carol = stored("carol")
    assert carol["team"] is None
    assert carol["quotas"] == {"tokens_per_day": 30000, "backend_seconds_per_day": 90.5}
    page.wait_for_function(
        "() => [...document.querySelectorAll('table tbody tr')].some((r) =>"
        " r.textContent.includes('tokens per day: 30,000'))"
    )
    assert shown("carol")[3] == "–"
    assert shown("carol")[5] == "tokens per day: 30,000; backend seconds per day: 90.5"
    # A negative quota is refused by the API, and the page shows what was wrong.
    create.get_by_label("Name", exact=True).fill("dave")
    create.get_by_label("Tokens per day").fill("-5")
    create.get_by_label("Tokens per day").evaluate("(input) => input.removeAttribute('min')")
    create.get_by_role("button", name="Create key").click()
    page.get_by_role("alert").filter(has_text="tokens_per_day").wait_for()
    with console.api() as api:
        assert "dave" not in {k["name"] for k in api.get("/gateway/keys").json()}
    # An unknown team too.
    create.get_by_label("Tokens per day").fill("")
    create.get_by_label("Team").fill("nobody")
    create.get_by_role("button", name="Create key").click()
    page.get_by_role("alert").filter(has_text="nobody").wait_for()


def test_a_quota_check_refuses_a_spent_key_and_the_bar_is_full(page: Any, console: Console) -> None:
    set_delays(console.emulator)
    with console.api() as api:
        made = api.post(
            "/gateway/keys",
            json={"name": "erin", "scope": "user", "quotas": {"requests_per_day": 2}},
        )
        assert made.status_code == 201, made.text
        erin = made.json()["key"]
    ask(console, erin, "llama3.1:8b", times=2)
    with httpx.Client(base_url=console.url, timeout=30) as client:
        refused = client.post(
            "/api/generate",
            json={"model": "llama3.1:8b", "prompt": "Once more", "stream": False},
            headers={"Authorization": f"Bearer {erin}"},
        )
    assert refused.status_code == 429, refused.text
    sign_in(page, console, erin)
    page.goto(f"{console.url}/ui/usage")
    bar = page.get_by_role("meter", name="Requests per day (key erin)")
    bar.wait_for()
    assert bar.get_attribute("value") == bar.get_attribute("max") == "2"
    assert "2 of 2 used (100%), 0 left" in (page.locator(".quota").first.text_content() or "")
