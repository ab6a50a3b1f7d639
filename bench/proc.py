"""What bench/run.py reads of a process from /proc: CPU time, resident memory, libraries."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` and its descendants (LiteLLM may fork)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    user, system, todo = 0, 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
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
    """Which of `names` appear among the shared objects `pid` has mapped."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in names if f"/{name}/" in maps]


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` (not its children), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
