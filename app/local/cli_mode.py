"""CLI mode (`use_http_api=False`): the `ollama` binary as a subprocess.

`list`, `pull`, `run` and `rm` run the binary and parse what it prints, as a person at a
terminal would; the binary itself talks to the server named by `OLLAMA_HOST`, which is
set from the manager's `base_url`. Everything the CLI cannot express (chat, show) still
goes through the HTTP API of the same server.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.backends.errors import BackendError, BackendUnavailable
from app.local.server_process import host_port_of

__all__ = ["CliRun", "OllamaCli", "parse_duration", "parse_list_table", "parse_size"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]")
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?B)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15}
_GO_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_size(text: str) -> int:
    """`2.0 GB` -> 2000000000 (Ollama prints decimal units); 0 when unreadable."""
    match = _SIZE.match(text)
    if not match:
        return 0
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def parse_duration(text: str) -> float | None:
    """A Go duration (`1.5s`, `250ms`, `1m2.5s`) in seconds; None when unreadable."""
    text = text.strip()
    parts = _GO_DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


def parse_list_table(output: str) -> list[dict[str, Any]]:
    """Parse `ollama list` (columns NAME, ID, SIZE, MODIFIED, padded to fixed widths) into
    entries shaped as `/api/tags` lists them (`name`, `digest`, `size`, `modified_at`), so
    the core reads both the same way."""
    lines = [line.rstrip("\n") for line in strip_ansi(output).splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    columns = [(m.group(0), m.start()) for m in re.finditer(r"\S+", header)]
    names = [name for name, _ in columns]
    if names[:2] != ["NAME", "ID"]:
        raise BackendError(f"unexpected `ollama list` header: {header!r}")
    models: list[dict[str, Any]] = []
    for line in lines[1:]:
        cells: dict[str, str] = {}
        for i, (name, start) in enumerate(columns):
            end = columns[i + 1][1] if i + 1 < len(columns) else None
            cells[name] = line[start:end].strip()
        if not cells.get("NAME"):
            continue
        models.append(
            {
                "name": cells["NAME"],
                "digest": cells.get("ID", ""),
                "size": parse_size(cells.get("SIZE", "")),
                "modified_at": cells.get("MODIFIED", ""),
            }
        )
    return models


def _error_text(stderr: str, returncode: int) -> str:
    """The message of the CLI's `Error: ...` line, else its last line of output."""
    lines = [str(ln).strip() for ln in re.split(r"[\r\n]+", strip_ansi(stderr)) if ln.strip()]
    for line in reversed(lines):
        if line.startswith("Error: "):
            return line[len("Error: ") :]
    return lines[-1] if lines else f"ollama exited with status {returncode}"


_VERBOSE_COUNT = re.compile(r"^(prompt eval count|eval count):\s+([0-9]+)\s+token", re.MULTILINE)
_VERBOSE_DURATION = re.compile(
    r"^(total duration|load duration|prompt eval duration|eval duration):\s+(\S+)\s*$",
    re.MULTILINE,
)


def parse_verbose_stats(stderr: str) -> dict[str, Any]:
    """Ollama's `--verbose` timing lines as the metric names of the HTTP API (ns ints)."""
    text = strip_ansi(stderr).replace("\r", "\n")
    stats: dict[str, Any] = {}
    for label, count in _VERBOSE_COUNT.findall(text):
        stats[label.replace(" ", "_")] = int(count)
    for label, raw in _VERBOSE_DURATION.findall(text):
        seconds = parse_duration(raw)
        if seconds is not None:
            stats[label.replace(" ", "_")] = int(seconds * 1e9)
    return stats


@dataclass
class CliRun:
    """What `ollama run` produced: the text, and the `--verbose` stats when printed."""

    text: str
    stats: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""


class OllamaCli:
    """The `ollama` binary pointed at one server through `OLLAMA_HOST`."""

    def __init__(self, binary: str, base_url: str) -> None:
        self.binary = binary
        self.base_url = base_url
        self._env = {**os.environ, "OLLAMA_HOST": host_port_of(base_url), "NO_COLOR": "1"}

    async def _spawn(self, args: Sequence[str]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot run the ollama binary {self.binary!r}: {exc}", url=self.base_url
            ) from exc

    async def _run(self, args: Sequence[str]) -> tuple[int, str, str]:
        proc = await self._spawn(args)
        try:
            out, err = await proc.communicate()
        finally:
            await _reap(proc)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def list_models(self) -> list[dict[str, Any]]:
        """`ollama list`, parsed (see `parse_list_table`)."""
        code, out, err = await self._run(["list"])
        if code != 0:
            raise _cli_error(_error_text(err, code), self.base_url)
        return parse_list_table(out)

    async def delete(self, model: str) -> None:
        """`ollama rm MODEL`."""
        code, _out, err = await self._run(["rm", model])
        if code != 0:
            raise _cli_error(_error_text(err, code), self.base_url)

    async def pull(
        self, model: str, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """`ollama pull MODEL`; raises `BackendError` with the CLI's message on failure.

        The CLI redraws an ANSI progress display on stderr; each distinct status line of
        it is passed to `progress` as `{"status": ...}` as it appears.
        """
        proc = await self._spawn(["pull", model])
        assert proc.stderr is not None and proc.stdout is not None
        seen: set[str] = set()
        buffer = ""
        stderr_text = ""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                data = await proc.stderr.read(4096)
                text = decoder.decode(data, final=not data)
                stderr_text += text
                buffer += text
                pieces = re.split(r"[\r\n]", buffer)
                buffer = "" if not data else pieces.pop()
                for piece in pieces:
                    status = strip_ansi(piece).strip()
                    if status and status not in seen and not status.startswith("Error: "):
                        seen.add(status)
                        if progress is not None:
                            progress({"status": status})
                if not data:
                    break
            await proc.stdout.read()
            code = await proc.wait()
        finally:
            await _reap(proc)
        if code != 0:
            raise _cli_error(_error_text(stderr_text, code), self.base_url)
        if not any(line == "success" or line.endswith(" success") for line in seen):
            raise BackendError(
                f"`ollama pull {model}` exited 0 without reporting success", url=self.base_url
            )

    async def run(
        self,
        model: str,
        prompt: str,
        *,
        json_format: bool = False,
        on_text: Callable[[str], None] | None = None,
    ) -> CliRun:
        """`ollama run MODEL PROMPT`; stdout streams to `on_text` as it arrives.

        The CLI ends its answer with a blank line (`\\n\\n`), which is not part of the
        model's text: trailing newlines are held back until more text follows, and those
        two are dropped at the end. `--nowordwrap` keeps the text as the model produced it.
        """
        args = ["run", "--nowordwrap", "--verbose"]
        if json_format:
            args += ["--format", "json"]
        args += [model]
        if prompt.startswith("-"):
            args.append("--")
        args.append(prompt)
        proc = await self._spawn(args)
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.ensure_future(proc.stderr.read())
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        emitted: list[str] = []
        held = ""
        try:
            while True:
                data = await proc.stdout.read(1024)
                text = held + decoder.decode(data, final=not data)
                if not data:
                    held = text
                    break
                body = text.rstrip("\n")
                held = text[len(body) :]
                if body:
                    emitted.append(body)
                    if on_text is not None:
                        on_text(body)
            code = await proc.wait()
            stderr = (await stderr_task).decode(errors="replace")
        finally:
            stderr_task.cancel()
            await _reap(proc)
        if code != 0:
            raise _cli_error(_error_text(stderr, code), self.base_url)
        tail = held[:-2] if held.endswith("\n\n") else held.rstrip("\n")
        if tail:
            emitted.append(tail)
            if on_text is not None:
                on_text(tail)
        return CliRun(text="".join(emitted), stats=parse_verbose_stats(stderr), stderr=stderr)


def _cli_error(message: str, url: str) -> BackendError:
    if "could not connect" in message:
        return BackendUnavailable(message, url=url)
    status = 404 if "not found" in message or "file does not exist" in message else None
    return BackendError(message, status=status, url=url)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill a process that is still running (a cancelled or timed-out call) and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
