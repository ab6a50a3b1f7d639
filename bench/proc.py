"""What bench/run.py reads of a process from /proc: CPU time, resident memory, libraries."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (LiteLLM may fork; granian serves from a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` and its descendants."""
    user, system = 0, 0
    for current in tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
    return user / TICKS, system / TICKS


def cpu_total(pid: int) -> float:
    return sum(cpu_seconds(pid))


def quiesce(pid: int, limit: float = 30.0) -> None:
    """Wait until `pid` is about idle: a load generator stops on time, and what the server
    still has queued (LiteLLM's backlog, the gateway's last audit batch) belongs to the row
    that caused it, not the next one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_total(pid)
        time.sleep(0.3)
        if cpu_total(pid) - before < 0.03:  # under 10% of a core
            return


def loaded(pid: int, *names: str) -> list[str]:
    """Which of `names` appear among the shared objects `pid` or a descendant has mapped."""
    maps = ""
    for current in tree(pid):
        with contextlib.suppress(OSError):
            maps += Path(f"/proc/{current}/maps").read_text()
    return [name for name in names if f"/{name}/" in maps]


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants, in MB."""
    total = 0
    for current in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024
