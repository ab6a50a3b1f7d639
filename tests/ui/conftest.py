"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright
(`executable_path`: Playwright's own browser download is not used), against a real gateway
under uvicorn and the emulator.

Without chromium (or Playwright) these tests fail in CI (`CI` set: .ci/run installs
chromium) and are skipped elsewhere, saying why."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import running_emulator, serving_in_thread

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
ADMIN_KEY = "ogw_" + "console-admin-key-for-tests-0123456789"
MODELS = ("llama3.1:8b", "qwen2.5:0.5b")


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


def chromium_path() -> str:
    found = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not found:
        missing("Debian's chromium is not installed (apt-get install -y chromium)")
    return str(found)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, for one module: Playwright's sync API keeps an event loop running while it
    is started, which async tests in later modules (pytest-asyncio) cannot share."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (the dev extra has it)")
    path = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The console runs under its Content-Security-Policy: nothing it does may be refused.
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with running_emulator(models=MODELS, extra_args=["--reply-tokens", "40"]) as url:
        yield url


def set_delays(emulator: str, token_ms: float = 0, first_token_ms: float = 0) -> None:
    httpx.post(
        f"{emulator}/_emulator/faults",
        json={"token_delay_ms": token_ms, "first_token_delay_ms": first_token_ms},
        timeout=5,
    ).raise_for_status()


@dataclass
class Console:
    url: str
    admin_key: str
    user_key: str
    emulator: str

    def api(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
def console(emulator: str, tmp_path: Path) -> Iterator[Console]:
    """A gateway that needs keys (an admin key, and a user key `alice`)."""
    httpx.post(f"{emulator}/_emulator/reset", timeout=5).raise_for_status()
    settings = gateway_settings(
        [emulator], tmp_path, admin_key=ADMIN_KEY, key_cache_seconds=0, load_sample_interval=0.5
    )
    with serving_in_thread(create_app(settings)) as url:
        made = httpx.post(
            f"{url}/gateway/keys",
            json={"name": "alice", "scope": "user"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        assert made.status_code == 201, made.text
        yield Console(url, ADMIN_KEY, made.json()["key"], emulator)


def sign_in(page: Any, console: Console, key: str) -> None:
    page.goto(f"{console.url}/ui/")
    page.wait_for_url("**/ui/signin**")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/chat")
    page.get_by_label("Prompt").wait_for()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
