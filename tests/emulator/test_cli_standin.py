"""The `ollama` command-line stand-in, run as a subprocess against the emulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.servers import free_port, wait_until_up

BINARY = str(Path(sys.executable).parent / "ollama-emulator")


def ollama(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OLLAMA_HOST": url.removeprefix("http://")}
    return subprocess.run([BINARY, *args], env=env, capture_output=True, text=True, timeout=30)


def test_list_prints_ollamas_table(emulator_url: str) -> None:
    run = ollama(emulator_url, "list")
    assert run.returncode == 0 and run.stderr == ""
    header, *rows = run.stdout.rstrip("\n").split("\n")
    assert re.fullmatch(r"NAME +ID +SIZE +MODIFIED +", header)
    # Cells are padded to the column width; rows put 4 spaces after every cell, the header
    # 4 between cells and 1 after the last: a row is 3 characters longer than the header.
    assert all(len(row) == len(header) + 3 for row in rows)
    widths = [m.start() for m in re.finditer(r"(?<=\s)\S|^\S", header)]
    for row in rows:
        assert row.endswith("    ")
        cells = [row[a:b].rstrip() for a, b in zip(widths, [*widths[1:], None], strict=True)]
        assert re.fullmatch(r"[0-9a-f]{12}", cells[1])
        assert re.fullmatch(r"\d+(\.\d)? (B|KB|MB|GB|TB)", cells[2])
        assert cells[3].endswith(" ago")
    assert any(row.startswith("llama3.1:8b ") for row in rows)


def test_pull_reports_progress_and_unknown_models_fail(emulator_url: str) -> None:
    ok = ollama(emulator_url, "pull", "phi3:mini")
    assert ok.returncode == 0 and ok.stdout == ""
    assert "pulling manifest" in ok.stderr and ok.stderr.rstrip().endswith("success")
    assert re.search(r"pulling [0-9a-f]{12}: 100% ", ok.stderr)
    bad = ollama(emulator_url, "pull", "no-such-model:7b")
    assert bad.returncode == 1
    assert bad.stderr.rstrip().endswith("Error: pull model manifest: file does not exist")


def test_run_prints_the_generated_text_then_a_blank_line(emulator_url: str) -> None:
    run = ollama(emulator_url, "run", "llama3.1:8b", "Say", "hello")
    assert run.returncode == 0
    expected = httpx.post(
        f"{emulator_url}/api/generate",
        json={"model": "llama3.1:8b", "prompt": "Say hello", "stream": False},
    ).json()["response"]
    assert run.stdout == expected + "\n\n"


def test_show_and_rm(emulator_url: str) -> None:
    shown = ollama(emulator_url, "show", "llama3.1:8b")
    assert shown.stdout.startswith("  Model\n    architecture        llama\n")
    assert "  Capabilities\n    completion\n" in shown.stdout
    assert ollama(emulator_url, "rm", "qwen2.5:0.5b").stdout == "deleted 'qwen2.5:0.5b'\n"
    missing = ollama(emulator_url, "rm", "qwen2.5:0.5b")
    assert (missing.returncode, missing.stderr) == (1, "Error: model 'qwen2.5:0.5b' not found\n")


def test_no_server_is_ollamas_connect_error() -> None:
    run = ollama(f"http://127.0.0.1:{free_port()}", "list")
    assert run.returncode == 1
    assert run.stderr == (
        "Error: could not connect to ollama server, run 'ollama serve' to start it\n"
    )


def test_serve_listens_on_ollama_host() -> None:
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_EMULATOR_MODELS": "a:1b"}
    proc = subprocess.Popen(
        [BINARY, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", proc)
        tags = httpx.get(f"http://127.0.0.1:{port}/api/tags").json()
        assert [m["name"] for m in tags["models"]] == ["a:1b"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
