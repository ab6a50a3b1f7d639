"""The web console at /ui, driven in headless Chromium against a real gateway and the
emulator: sign-in, chat streaming and Stop, comparisons, benchmarks, results, backends,
what a user key sees, and untrusted model output."""

from __future__ import annotations

import time
from typing import Any

from tests.ui.conftest import Console, screenshot, set_delays, sign_in

SEND_TIMEOUT_MS = 20_000


def latest_run(console: Console, key: str, model: str = "llama3.1:8b") -> dict[str, Any]:
    with console.api(key) as api:
        items = api.get("/gateway/results", params={"model": model, "limit": 1}).json()["items"]
    assert items, "no stored run"
    run: dict[str, Any] = items[0]
    return run


def test_a_user_key_signs_in_and_a_chat_streams_token_by_token_and_is_stored(
    page: Any, console: Console
) -> None:
    set_delays(console.emulator, token_ms=60, first_token_ms=200)
    sign_in(page, console, console.user_key)
    assert page.evaluate("() => sessionStorage.getItem('ollama-gateway.key')") == console.user_key
    assert console.user_key not in page.url
    page.get_by_label("Model").select_option("llama3.1:8b")
    page.get_by_label("Prompt").fill("Tell me about the sea.")
    page.get_by_role("button", name="Send").click()
    answer = page.get_by_test_id("answer").last
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = answer.text_content() or ""
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if "tokens/s" in (page.locator(".turn .stats").last.text_content() or ""):
            break
        time.sleep(0.05)
    final = answer.text_content() or ""
    growing = [t for t in seen if t != final]
    assert len(growing) >= 3, f"the answer did not grow in steps before it was done: {seen}"
    assert all(final.startswith(t) for t in growing)
    stats = page.locator(".turn .stats").last.text_content() or ""
    assert "TTFT" in stats and "tokens/s" in stats and "tokens" in stats
    run = latest_run(console, console.user_key)
    assert run["status"] == "succeeded" and run["response"] == final
    assert run["principal"] == "alice"
    # The conversation is kept: a second turn is sent with the first.
    page.get_by_label("Prompt").fill("And about rivers?")
    page.get_by_role("button", name="Send").click()
    page.locator(".turn.done").nth(1).wait_for(timeout=SEND_TIMEOUT_MS)
    assert page.locator(".turn").count() == 2
    screenshot(page, "chat")
    # The stored run opens from its link: prompt, answer, options, timings, backend.
    page.locator(".turn .stats a").last.click()
    page.wait_for_url("**/ui/results/*")
    page.get_by_role("heading", name="Answer").wait_for()
    assert "succeeded" in (page.locator("dl.detail").text_content() or "")


def test_stop_ends_the_answer_and_the_stored_run_is_cancelled(page: Any, console: Console) -> None:
    set_delays(console.emulator, token_ms=150)
    sign_in(page, console, console.user_key)
    page.get_by_label("Prompt").fill("Write a long story.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => (document.querySelector('.turn .answer')?.textContent ?? '').length > 5"
    )
    page.get_by_role("button", name="Stop").click()
    page.locator(".turn.cancelled").wait_for()
    partial = page.get_by_test_id("answer").last.text_content() or ""
    deadline = time.monotonic() + 10
    run = latest_run(console, console.user_key)
    while run["status"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = latest_run(console, console.user_key)
    assert run["status"] == "cancelled"
    # What was written before Stop is kept with the run.
    assert partial and run["metadata"]["partial_response"].startswith(partial)
    assert page.get_by_role("button", name="Send").is_enabled()
    page.goto(f"{console.url}/ui/results/{run['id']}")
    page.get_by_role("heading", name="Answer (partial: the run did not finish)").wait_for()
    assert "cancelled" in (page.locator("dl.detail").text_content() or "")


def test_a_user_key_sees_no_admin_page(page: Any, console: Console) -> None:
    sign_in(page, console, console.user_key)
    nav = page.get_by_role("navigation", name="Console")
    for name in ("Chat", "Compare", "Benchmarks", "Results", "Jobs", "Usage"):
        assert nav.get_by_role("link", name=name, exact=True).is_visible()
    for name in ("Backends", "Keys"):
        assert nav.get_by_role("link", name=name, exact=True).count() == 0
    for path in ("backends", "keys"):
        page.goto(f"{console.url}/ui/{path}")
        page.get_by_role("alert").filter(has_text="needs an admin key").wait_for()
        assert page.locator("table").count() == 0
        assert page.get_by_role("button", name="Add backend").count() == 0


def test_a_comparison_of_two_models_fills_both_columns_and_its_chart(
    page: Any, console: Console
) -> None:
    set_delays(console.emulator, token_ms=20, first_token_ms=150)
    sign_in(page, console, console.user_key)
    page.get_by_role("link", name="Compare", exact=True).click()
    page.wait_for_url("**/ui/compare")
    page.get_by_label("llama3.1:8b").check()
    page.get_by_label("qwen2.5:0.5b").check()
    page.get_by_label("Prompt").fill("What is a gateway?")
    page.get_by_role("button", name="Compare", exact=True).click()
    chart = page.get_by_role(
        "img", name="Bar chart of tokens per second per model: llama3.1:8b, qwen2.5:0.5b"
    )
    chart.wait_for(timeout=SEND_TIMEOUT_MS)
    for model in ("llama3.1:8b", "qwen2.5:0.5b"):
        column = page.get_by_role("article", name=f"Answer from {model}")
        assert len(column.get_by_test_id("answer").text_content() or "") > 10
        assert "tokens/s" in (column.locator(".stats").text_content() or "")
    charts = page.get_by_role("img", name="Bar chart of")
    assert charts.count() == 3  # TTFT, tokens/s and tokens
    for i in range(3):
        assert charts.nth(i).locator("canvas").count() == 1
    rows = page.get_by_role("table", name="Each model's answer").locator("tbody tr")
    assert rows.count() == 2
    stored = page.get_by_text("Stored as comparison ").text_content() or ""
    comparison_id = stored.removeprefix("Stored as comparison ").rstrip(".")
    with console.api(console.user_key) as api:
        kept = api.get(f"/gateway/comparisons/{comparison_id}")
    assert kept.status_code == 200, kept.text
    assert kept.json()["models"] == ["llama3.1:8b", "qwen2.5:0.5b"]
    screenshot(page, "compare")


def test_stop_during_a_comparison_keeps_it_with_its_runs_cancelled(
    page: Any, console: Console
) -> None:
    set_delays(console.emulator, token_ms=80)
    sign_in(page, console, console.user_key)
    page.get_by_role("link", name="Compare", exact=True).click()
    page.get_by_label("llama3.1:8b").check()
    page.get_by_label("qwen2.5:0.5b").check()
    page.get_by_label("Prompt").fill("A long answer, please.")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=answer]')]"
        ".every((a) => (a.textContent ?? '').length > 5)"
    )
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped: the gateway keeps the comparison").wait_for()
    for model in ("llama3.1:8b", "qwen2.5:0.5b"):
        column = page.get_by_role("article", name=f"Answer from {model}")
        assert "failed: stopped" in (column.locator(".stats").text_content() or "")
    deadline = time.monotonic() + 10
    with console.api(console.user_key) as api:
        while True:
            listed = api.get("/gateway/comparisons", params={"limit": 1}).json()["items"]
            if listed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert listed, "the stopped comparison was not stored"
        kept = api.get(f"/gateway/comparisons/{listed[0]['id']}").json()
    failures = kept["report"]["summary"]["failures"]
    assert failures == dict.fromkeys(kept["models"], "cancelled before the run finished")
    assert page.get_by_role("button", name="Compare", exact=True).is_enabled()


def test_a_benchmark_job_shows_progress_then_its_plots(page: Any, console: Console) -> None:
    set_delays(console.emulator, token_ms=25)
    sign_in(page, console, console.admin_key)
    page.get_by_role("link", name="Benchmarks", exact=True).click()
    page.get_by_label("qwen2.5:0.5b").check()
    page.get_by_label("Test prompts (one per line)").fill("One?\nTwo?\nThree?")
    page.get_by_role("button", name="Start benchmark").click()
    bar = page.get_by_role("progressbar", name="Benchmark of llama3.1:8b")
    bar.wait_for()
    values = set()
    deadline = time.monotonic() + 30
    speed = page.get_by_role("img", name="Line chart of tokens per second")
    while time.monotonic() < deadline and not speed.count():
        values.add((bar.get_attribute("value"), bar.get_attribute("max")))
        time.sleep(0.05)
    speed.wait_for()
    assert any(v not in ("0", m) for v, m in values), f"no progress seen between: {values}"
    assert page.get_by_role("img", name="Line chart of time to first token").is_visible()
    label = speed.get_attribute("aria-label") or ""
    assert "llama3.1:8b" in label and "qwen2.5:0.5b" in label
    assert page.get_by_role("table", name="Each run").locator("tbody tr").count() == 6
    screenshot(page, "benchmarks")
    # Earlier benchmarks are links naming their model, and open again.
    link = page.get_by_role("link", name="Benchmark of qwen2.5:0.5b")
    link.first.wait_for()
    link.first.click()
    page.wait_for_url("**/ui/benchmarks/*")
    page.get_by_role("img", name="Line chart of tokens per second").wait_for()
    assert page.get_by_role("table", name="Each run").locator("tbody tr").count() == 3


def test_the_results_page_pages_and_filters(page: Any, console: Console) -> None:
    with console.api(console.user_key) as api:
        for i, model in enumerate(["llama3.1:8b", "qwen2.5:0.5b"] * 3):
            ran = api.post("/gateway/generate", json={"model": model, "prompt": f"prompt {i}"})
            assert ran.status_code == 200, ran.text
    sign_in(page, console, console.user_key)
    page.goto(f"{console.url}/ui/results?limit=2")
    rows = page.get_by_role("table", name="stored runs").locator("tbody tr")
    rows.first.wait_for()

    def prompts() -> list[str]:
        return [rows.nth(i).locator("td").last.text_content() or "" for i in range(rows.count())]

    first = prompts()
    assert first == ["prompt 5", "prompt 4"]
    page.get_by_role("link", name="Next page").click()
    page.wait_for_function("() => location.search.includes('cursor=')")
    page.locator("table tbody tr td", has_text="prompt 3").wait_for()
    assert prompts() == ["prompt 3", "prompt 2"]
    page.get_by_role("link", name="Next page").click()
    page.locator("table tbody tr td", has_text="prompt 1").wait_for()
    assert prompts() == ["prompt 1", "prompt 0"]
    page.get_by_role("link", name="Previous page").click()
    page.locator("table tbody tr td", has_text="prompt 3").wait_for()
    assert prompts() == ["prompt 3", "prompt 2"]
    # Filters: by model, then by status.
    page.get_by_label("Filter by model").fill("qwen2.5:0.5b")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_function("() => location.search.includes('model=qwen')")
    page.locator("table tbody tr td", has_text="prompt 5").wait_for()
    assert prompts() == ["prompt 5", "prompt 3"]
    models = {rows.nth(i).locator("td").nth(1).text_content() for i in range(rows.count())}
    assert models == {"qwen2.5:0.5b"}
    page.get_by_label("Status").select_option("false")
    page.get_by_role("button", name="Apply filters").click()
    page.get_by_text("No stored run matches.").wait_for()
    # A run's detail view.
    page.goto(f"{console.url}/ui/results")
    rows.first.locator("a").click()
    page.wait_for_url("**/ui/results/*")
    page.get_by_role("heading", name="Prompt").wait_for()
    assert "prompt 5" in (page.locator("pre.text").first.text_content() or "")


def test_an_admin_adds_and_removes_a_backend(page: Any, console: Console) -> None:
    # Requests served before the page opens are in its load chart (the gateway's samples).
    with console.api(console.user_key) as api:
        for _ in range(3):
            body = {"model": "llama3.1:8b", "prompt": "load", "options": {"max_tokens": 2}}
            api.post("/gateway/generate", json=body).raise_for_status()
    time.sleep(1.0)  # two sample intervals
    sign_in(page, console, console.admin_key)
    page.get_by_role("link", name="Backends", exact=True).click()
    page.get_by_role("img", name="Line chart of requests finished per second").wait_for()
    page.get_by_text("3 requests finished in the last 5 minutes.").wait_for()
    backends = page.get_by_role("table", name="backends").locator("tbody tr")
    backends.first.wait_for()
    assert backends.count() == 1
    page.get_by_label("Backend", exact=True).fill("spare=http://127.0.0.1:9;max=2")
    page.get_by_role("button", name="Add backend").click()
    page.get_by_role("status").filter(has_text="Backend spare added.").wait_for()
    remove = page.get_by_role("button", name="Remove backend spare")
    remove.wait_for()
    with console.api() as api:
        assert "spare" in [b["name"] for b in api.get("/gateway/backends").json()]
    remove.click()
    page.get_by_role("status").filter(has_text="Backend spare removed.").wait_for()
    page.wait_for_function("() => !document.querySelector('[aria-label=\"Remove backend spare\"]')")
    with console.api() as api:
        assert "spare" not in [b["name"] for b in api.get("/gateway/backends").json()]
    # An API error is shown with its problem's detail.
    page.get_by_label("Backend", exact=True).fill(f"again={console.emulator}")
    page.get_by_role("button", name="Add backend").click()
    page.get_by_role("alert").filter(has_text="Backend not added: backend 'again'").filter(
        has_text="which is already in the pool"
    ).wait_for()
    # A pull started here is followed on the Jobs page, and the model is then listed.
    page.get_by_label("Model to pull").fill("phi3:mini")
    page.get_by_role("button", name="Pull", exact=True).click()
    page.get_by_role("status").filter(has_text="Pulling phi3:mini").wait_for()
    page.get_by_role("link", name="Pulls on the Jobs page").click()
    page.wait_for_url("**/ui/jobs?kind=pull")
    page.locator(".job.succeeded", has_text="pull of phi3:mini").wait_for(timeout=SEND_TIMEOUT_MS)
    page.get_by_role("link", name="Backends", exact=True).click()
    page.get_by_role("table", name="models").get_by_role(
        "cell", name="phi3:mini", exact=True
    ).wait_for()


def test_the_jobs_page_follows_a_batch_live_and_cancels_it(page: Any, console: Console) -> None:
    set_delays(console.emulator, token_ms=40)  # 40 tokens: about 1.6 s a prompt
    with console.api(console.user_key) as api:
        started = api.post(
            "/gateway/batches",
            json={
                "model": "llama3.1:8b",
                "prompts": [f"p{i}" for i in range(8)],
                "background": True,
            },
        )
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    sign_in(page, console, console.user_key)
    page.get_by_role("link", name="Jobs", exact=True).click()
    bar = page.get_by_role("progressbar", name="Progress of batch of llama3.1:8b")
    bar.wait_for()
    page.wait_for_function(
        """() => {
          const bar = document.querySelector('progress[aria-label="Progress of batch of llama3.1:8b"]');
          return bar && bar.value >= 1 && bar.value < bar.max;
        }""",
        timeout=SEND_TIMEOUT_MS,
    )
    page.get_by_role("button", name="Cancel batch of llama3.1:8b").click()
    page.locator(".job.cancelled").wait_for(timeout=SEND_TIMEOUT_MS)
    with console.api(console.user_key) as api:
        job = api.get(f"/gateway/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and 1 <= job["completed"] < 8


def test_an_admin_creates_a_key_shown_once_revokes_it_and_reads_the_audit_log(
    page: Any, console: Console
) -> None:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    sign_in(page, console, console.admin_key)
    page.get_by_role("link", name="Keys", exact=True).click()
    page.get_by_role("table", name="keys").wait_for()
    page.get_by_label("Name", exact=True).fill("bob")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("status", name="The new key")
    shown.wait_for()
    key = shown.text_content() or ""
    assert key.startswith("ogw_")
    with console.api(key) as api:
        assert api.get("/gateway/whoami").json()["name"] == "bob"
    keys = page.get_by_role("table", name="keys")
    keys.get_by_role("cell", name="bob", exact=True).wait_for()
    page.get_by_role("button", name="Revoke key bob").click()
    page.get_by_role("status").filter(has_text="Key bob revoked.").wait_for()
    with console.api(key) as api:
        assert api.get("/gateway/whoami").status_code == 401
    # Reloaded, the page no longer shows the key.
    page.reload()
    page.get_by_role("table", name="keys").wait_for()
    assert key not in (page.content())
    # The audit log, filtered by actor and outcome: the revoked key's refused request.
    page.get_by_label("Actor").fill("invalid-key")
    page.get_by_label("Outcome").select_option("denied")
    page.get_by_role("button", name="Filter audit log").click()
    audit = page.get_by_role("table", name="1 audit entries")
    audit.get_by_role("cell", name="invalid-key").wait_for()
    row = audit.locator("tbody tr").first.locator("td").all_text_contents()
    assert row[1:5] == ["invalid-key", "GET /gateway/whoami", "–", "denied"]
    # Keys travel in headers only: no URL the console asked for holds one.
    assert urls and not any(console.admin_key in u or key in u for u in urls)
