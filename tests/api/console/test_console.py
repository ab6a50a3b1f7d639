"""The web console's files at /ui: the built app (app/ui/static, package data), index.html
for every page URL, and a Content-Security-Policy without inline scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.ui import STATIC_DIR
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def gateway(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        yield url


def test_every_page_url_gets_the_app_with_a_strict_policy(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        root = client.get("/ui")
        assert root.status_code == 308 and root.headers["location"] == "/ui/"
        pages = [client.get(p) for p in ("/ui/", "/ui/chat", "/ui/results/abc?x=1", "/ui/keys")]
        for page in pages:
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.text == (STATIC_DIR / "index.html").read_text()
            policy = page.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
            assert directives["script-src"] == "'self'"
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
            assert directives["frame-ancestors"] == "'none'"
        # No inline script in the page: every <script> has a src on this origin.
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", pages[0].text, re.S)
        assert scripts and all('src="/ui/' in attrs and not body.strip() for attrs, body in scripts)
        for src in re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', pages[0].text):
            asset = client.get(src)
            assert asset.status_code == 200 and asset.content, src
            assert "content-security-policy" in asset.headers
        missing = client.get("/ui/assets/nope.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        outside = client.get("/ui/..%2f..%2fpyproject.toml")
        assert outside.status_code == 200 and outside.text.startswith("<!doctype html>")


def test_the_console_is_not_audited(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        client.get("/ui/chat")
        client.get("/gateway/models")
        actions = [e["action"] for e in client.get("/gateway/audit").json()["items"]]
    assert actions and not any("/ui" in a for a in actions)


def test_a_wheel_carries_the_built_console(tmp_path: Path) -> None:
    """`pip install` needs no Node: the built files are package data."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("ollama_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"app/ui/static/{p.relative_to(STATIC_DIR).as_posix()}"
        for p in STATIC_DIR.rglob("*")
        if p.is_file()
    }
    assert "app/ui/static/index.html" in expected
    assert expected <= names
