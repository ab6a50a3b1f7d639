"""The coding agents' own command lines, from the npm registry at pinned versions, installed
once per machine outside the clone (a second run, or CI on the same machine, reuses them).

Without Node and npm the tests that need them skip with the reason, except in CI (`CI` set),
where a missing CLI is a failure: CI must run them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLAUDE_CODE = ("@anthropic-ai/claude-code", "2.1.332", "claude")
CODEX = ("@openai/codex", "0.171.0", "codex")

CACHE = Path(
    os.environ.get("OLLAMA_GATEWAY_TEST_CACHE") or Path.home() / ".cache" / "ollama-gateway-tests"
)
INSTALL_TIMEOUT_S = 900


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the agent CLI tests)")
    pytest.skip(reason)


def npm_cli(package: str, version: str, binary: str) -> Path:
    """The path of `binary` from `package@version`, installed under CACHE if not yet."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _missing("Node.js and npm are needed to install the agent CLIs")
    prefix = CACHE / "npm" / f"{package.replace('/', '+')}@{version}"
    path = prefix / "node_modules" / ".bin" / binary
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, across test processes
        if not (prefix / ".installed").exists():
            done = subprocess.run(
                ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                 "--loglevel=error", f"{package}@{version}"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                _missing(f"npm install {package}@{version} failed: {done.stderr[-2000:]}")
            (prefix / ".installed").write_text(version)
    if not path.exists():
        _missing(f"{package}@{version} installed no {binary!r} command")
    return path


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """Claude Code's `claude` (a native binary behind an npm wrapper; runs under Node 20)."""
    return npm_cli(*CLAUDE_CODE)


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """Codex CLI's `codex`."""
    return npm_cli(*CODEX)
