"""Codex CLI (`@openai/codex`, pinned in conftest) through the gateway: `codex exec` with a
model provider whose `base_url` is the gateway's `/v1` and `wire_api = "responses"`, the
key in `env_key`, offline in a temporary `CODEX_HOME`. It finishes a turn against the
emulator, and a function-call round trip (the emulator's model calls `exec_command` when
the prompt names it; Codex runs the command and sends its output back); each request is a
stored run of surface `responses`, under the key's name.

Only `codex exec` runs here: the interactive `codex` starts a daemon that outlives it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

ADMIN_KEY = "ogw_codex_admin_0123456789abcdefghijklmnop"
MODEL = "llama3.1:8b"
TURN_TIMEOUT_S = 120


def config_toml(gateway: str, model: str, extra: str = "") -> str:
    """The `config.toml` the README gives for Codex (a model provider for the gateway)."""
    return f"""\
model = "{model}"
model_provider = "ogw"
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.ogw]
name = "ollama-gateway"
base_url = "{gateway}/v1"
wire_api = "responses"
env_key = "OGW_API_KEY"
request_max_retries = 0
stream_max_retries = 0
{extra}"""


@dataclass
class Codex:
    """`codex exec` against one gateway, as one key, in a home and a work folder of its own."""

    binary: Path
    home: Path
    workdir: Path
    key: str
    timeout: float = TURN_TIMEOUT_S

    def exec(self, prompt: str, *args: str) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join([str(self.binary.parent), "/usr/local/bin", "/usr/bin", "/bin"])
        env = {"PATH": path, "HOME": str(self.home), "CODEX_HOME": str(self.home),
               "OGW_API_KEY": self.key, "TERM": "dumb"}  # fmt: skip
        return subprocess.run(
            [str(self.binary), "exec", "--skip-git-repo-check", *args, prompt],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=self.timeout, check=False,
        )  # fmt: skip


def codex_for(
    binary: Path, gateway: str, key: str, base: Path, model: str = MODEL, extra: str = ""
) -> Codex:
    home, workdir = base / "codex-home", base / "work"
    home.mkdir()
    workdir.mkdir()
    (home / "config.toml").write_text(config_toml(gateway, model, extra))
    return Codex(binary, home, workdir, key)


def stored_runs(gateway: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{gateway}/gateway/results", params={"limit": 50, "surface": "responses"},
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)  # fmt: skip
    reply.raise_for_status()
    return list(reversed(reply.json()["items"]))  # oldest first


@pytest.fixture
def gateway(emulator_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A gateway with keys in front of the emulator; (its URL, a user key named codex)."""
    settings = gateway_settings([emulator_url], tmp_path, admin_key=ADMIN_KEY)
    with serving_in_thread(create_app(settings)) as url:
        made = httpx.post(f"{url}/gateway/keys", json={"name": "codex", "scope": "user"},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)  # fmt: skip
        assert made.status_code == 201, made.text
        yield url, made.json()["key"]


def test_codex_exec_finishes_a_turn(
    codex_bin: Path, gateway: tuple[str, str], tmp_path: Path
) -> None:
    url, key = gateway
    codex = codex_for(codex_bin, url, key, tmp_path)
    done = codex.exec("say hi")
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = stored_runs(url)
    assert run["success"] and run["principal"] == "codex" and run["model_name"] == MODEL
    assert run["response"].strip() and run["response"].strip() in done.stdout
    meta = run["metadata"]
    assert meta["surface"] == "responses" and meta["request"]["stream"] is True
    # Codex's base instructions are developer messages: they are the system prompt
    assert "Codex" in (meta["request"]["system"] or "")
    assert [m["role"] for m in meta["messages"]] == ["user", "user"]  # environment, prompt


def test_codex_runs_a_command_the_model_calls_and_answers(
    codex_bin: Path, gateway: tuple[str, str], tmp_path: Path
) -> None:
    url, key = gateway
    codex = codex_for(codex_bin, url, key, tmp_path)
    done = codex.exec("Run exec_command `echo ran-by-codex > marker.txt` please")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (codex.workdir / "marker.txt").read_text().strip() == "ran-by-codex"
    called, answered = stored_runs(url)
    [call] = called["metadata"]["tool_calls"]
    assert call["function"]["name"] == "exec_command"
    assert call["function"]["arguments"] == {"cmd": "echo ran-by-codex > marker.txt"}
    roles = [m["role"] for m in answered["metadata"]["messages"]]
    assert roles == ["user", "user", "assistant", "tool"], roles
    assert answered["metadata"]["messages"][-1]["tool_name"] == "exec_command"
    assert answered["response"].strip() in done.stdout
    # the second request repeats the first and adds to it: the backend evaluates little
    counts = [r["metadata"]["prompt_eval_count"] for r in (called, answered)]
    print(f"\ncodex round trip: prompt_eval_count {counts}")  # for the record (-s)
    assert answered["metadata"]["prompt_eval_count"] < called["metadata"]["prompt_eval_count"] / 10
