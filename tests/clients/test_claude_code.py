"""Claude Code itself (`claude -p`, npm `@anthropic-ai/claude-code`, pinned) through the
gateway, in front of the emulator: with `ANTHROPIC_BASE_URL` at the gateway and a gateway
key as `ANTHROPIC_AUTH_TOKEN`, a turn finishes (exit 0, the answer printed) and is stored
as surface `anthropic` under the key; a tool round trip runs the tool and answers. The
environment is the one the README gives users."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.anthropic.conftest import Gateway, keyed_gateway
from tests.support.servers import running_emulator

MODEL = "llama3.1:8b"
TURN_TIMEOUT_S = 180


def claude_env(gateway: str, key: str, home: Path, model: str, **extra: str) -> dict[str, str]:
    """Claude Code's environment for a gateway (the README's), in a clean process."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TERM": "dumb",
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway,
        "ANTHROPIC_AUTH_TOKEN": key,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_SUBAGENT_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
        **extra,
    }
    return env


def run_claude(
    claude_bin: Path,
    env: dict[str, str],
    workdir: Path,
    *args: str,
    timeout: float = TURN_TIMEOUT_S,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`claude -p ... --output-format json`; the process and its JSON result."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(claude_bin), "-p", *args, "--output-format", "json"],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    return done, result


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with running_emulator(models=(MODEL,)) as url:
        yield url


@pytest.fixture
def gateway(emulator: str, tmp_path: Path) -> Iterator[Gateway]:
    with keyed_gateway([emulator], f"sqlite+aiosqlite:///{tmp_path}/g.db", tmp_path) as served:
        yield served


def test_claude_code_finishes_a_turn_through_the_gateway(
    claude_bin: Path, gateway: Gateway, tmp_path: Path
) -> None:
    env = claude_env(gateway.url, gateway.user, tmp_path / "home", MODEL)
    done, result = run_claude(claude_bin, env, tmp_path / "work", "say hi")
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert result["is_error"] is False and result["result"], result
    runs = gateway.stored(surface="anthropic")
    assert runs and {r["principal"] for r in runs} == {"coder"}, runs
    (turn,) = [r for r in runs if r["response"] == result["result"]]
    meta = turn["metadata"]
    assert turn["success"] and turn["kind"] == "stream" and "say hi" in turn["prompt"]
    # Claude Code's whole request went through the core: its system prompt without the
    # billing line, its environment as a reminder, its tools; think relaxed (llama3.1
    # cannot think)
    system, *rest = meta["messages"]
    assert system["role"] == "system" and "x-anthropic-billing-header" not in system["content"]
    assert any(m["content"].startswith("<system-reminder>\n# Environment") for m in rest)
    assert {"Bash", "Read"} <= {t["function"]["name"] for t in meta["request"]["extra"]["tools"]}
    assert meta["think_relaxed"] is True


def test_claude_code_runs_a_tool_and_answers(
    claude_bin: Path, gateway: Gateway, tmp_path: Path
) -> None:
    """The emulator calls Bash with the arguments written in the prompt; Claude Code runs
    the command and sends its output back; the model answers with text."""
    env = claude_env(gateway.url, gateway.user, tmp_path / "home", MODEL)
    prompt = 'Use Bash {"command": "echo tool-says-hi", "description": "Say hi"}'
    done, result = run_claude(claude_bin, env, tmp_path / "work", prompt, "--allowedTools", "Bash")
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert result["is_error"] is False and result["num_turns"] >= 2, result
    runs = sorted(gateway.stored(surface="anthropic"), key=lambda r: r["created_at"])
    calls = [r for r in runs if r["metadata"].get("tool_calls")]
    assert calls and calls[0]["metadata"]["tool_calls"][0]["function"]["name"] == "Bash"
    answered = [
        r for r in runs
        if any(m["role"] == "tool" and "tool-says-hi" in m["content"]
               for m in r["metadata"]["messages"])
    ]  # fmt: skip
    assert answered, [r["metadata"]["messages"][-2:] for r in runs]
    last = answered[-1]
    assert last["response"] == result["result"] and not last["metadata"].get("tool_calls")
    (tool,) = [m for m in last["metadata"]["messages"] if m["role"] == "tool"]
    assert tool["tool_name"] == "Bash" and tool["tool_call_id"]


def test_claude_code_continues_its_session_on_the_same_prompt(
    claude_bin: Path, gateway: Gateway, tmp_path: Path
) -> None:
    """`--continue` sends the whole conversation again with the new prompt at its end:
    the backend reads only the new tokens (its prompt cache holds the rest)."""
    env = claude_env(gateway.url, gateway.user, tmp_path / "home", MODEL)
    work = tmp_path / "work"
    first, _ = run_claude(claude_bin, env, work, "say hi")
    second, result = run_claude(claude_bin, env, work, "and now say bye", "--continue")
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    runs = sorted(gateway.stored(surface="anthropic"), key=lambda r: r["created_at"])
    before, after = runs[0]["metadata"], runs[-1]["metadata"]
    assert after["messages"][: len(before["messages"])] == before["messages"]
    assert after["prompt_eval_count"] < before["prompt_eval_count"] / 4, (
        before["prompt_eval_count"],
        after["prompt_eval_count"],
    )
    assert os.path.isdir(tmp_path / "home" / ".claude")
    print(  # for the record (-s)
        f"\nclaude -p: {result['result'][:60]!r}; prompt tokens read: first turn "
        f"{before['prompt_eval_count']}, --continue {after['prompt_eval_count']}"
    )
