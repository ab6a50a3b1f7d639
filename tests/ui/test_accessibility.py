"""axe-core on every page of the console: no serious or critical violation (WCAG 2 A and
AA rules, and axe's best practices)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.conftest import AXE, Console, missing, set_delays, sign_in

PAGES = ["chat", "compare", "benchmarks", "results", "jobs", "usage", "backends", "keys"]


def axe_violations(page: Any) -> list[dict[str, Any]]:
    page.evaluate(AXE.read_text(encoding="utf-8"))
    report = page.evaluate(
        """async () => {
          const result = await axe.run(document, { resultTypes: ['violations'] });
          return result.violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5),
          }));
        }"""
    )
    return [v for v in report if v["impact"] in ("serious", "critical")]


@pytest.fixture
def axe_page(browser: Any) -> Any:
    if not AXE.is_file():
        missing(f"axe-core is not installed: run 'npm ci' in web/ ({AXE} is missing)")
    # axe's script is evaluated by the test, not loaded by the page: the page's CSP is
    # lifted for this context only (tests/ui/test_untrusted_output.py runs with it).
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_no_serious_or_critical_violation_on_any_page(axe_page: Any, console: Console) -> None:
    page = axe_page
    found: dict[str, list[dict[str, Any]]] = {}
    page.goto(f"{console.url}/ui/")
    page.get_by_label("API key").wait_for()
    found["signin"] = axe_violations(page)
    sign_in(page, console, console.admin_key)
    set_delays(console.emulator)
    # Pages with content in them: a chat answered, a stored run.
    page.get_by_label("Prompt").fill("Hello")
    page.get_by_role("button", name="Send").click()
    page.locator(".turn.done").wait_for()
    for name in PAGES:
        page.get_by_role("navigation", name="Console").get_by_role(
            "link", name=name.capitalize(), exact=True
        ).click()
        page.wait_for_url(f"**/ui/{name}*")
        page.get_by_role("heading", level=1).wait_for()
        page.wait_for_load_state("networkidle")
        found[name] = axe_violations(page)
    page.goto(f"{console.url}/ui/results")
    page.locator("table tbody tr a").first.click()
    page.get_by_role("heading", name="Answer").wait_for()
    found["result detail"] = axe_violations(page)
    # Pages holding charts: a comparison's, a benchmark's.
    page.goto(f"{console.url}/ui/compare")
    page.get_by_label("Prompt").fill("Hi")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_role("img", name="Bar chart of tokens per second").wait_for()
    found["compare with charts"] = axe_violations(page)
    page.goto(f"{console.url}/ui/benchmarks")
    page.get_by_label("Test prompts (one per line)").fill("One?\nTwo?")
    page.get_by_role("button", name="Start benchmark").click()
    page.get_by_role("img", name="Line chart of tokens per second").wait_for()
    found["benchmark with plots"] = axe_violations(page)
    bad = {name: v for name, v in found.items() if v}
    assert not bad, bad


def test_no_serious_or_critical_violation_on_the_usage_page_with_charts_and_quota_bars(
    axe_page: Any, console: Console
) -> None:
    page = axe_page
    set_delays(console.emulator)
    with console.api() as api:
        made = api.post(
            "/gateway/keys",
            json={
                "name": "quoted",
                "scope": "user",
                "quotas": {"tokens_per_day": 10_000, "requests_per_day": 10},
            },
        )
        assert made.status_code == 201, made.text
        key = made.json()["key"]
    with console.api(key) as api:
        answer = api.post(
            "/api/generate", json={"model": "llama3.1:8b", "prompt": "Hi", "stream": False}
        )
        assert answer.status_code == 200, answer.text
    found: dict[str, list[dict[str, Any]]] = {}
    for who in (key, console.admin_key):
        sign_in(page, console, who)
        page.goto(f"{console.url}/ui/usage")
        page.get_by_role("img", name="Stacked bar chart of tokens").wait_for()
        page.wait_for_load_state("networkidle")
        if who == key:
            page.get_by_role("meter", name="Tokens per day (key quoted)").wait_for()
        found["user" if who == key else "admin"] = axe_violations(page)
        page.evaluate("() => sessionStorage.clear()")
    bad = {name: v for name, v in found.items() if v}
    assert not bad, bad
