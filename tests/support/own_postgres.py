"""A PostgreSQL server of a test's own, on a free port, that the test may stop and start.

The shared server (`tests.support.databases`, 127.0.0.1:5432) serves every test at once
and must never go down; a test about database outages starts one of its own with the
machine's `initdb` and `pg_ctl` (`/usr/lib/postgresql/*/bin`), as the `postgres` user when
run as root (PostgreSQL refuses to run as root), its data in a temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.servers import free_port

__all__ = ["OwnPostgres", "own_postgres", "pg_bin_dir"]

DATABASE = "gateway"


def pg_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `pg_ctl`."""
    found = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            with contextlib.suppress(ValueError):
                found.append((float(path.parent.name), path))
    return max(found)[1] if found else None


class OwnPostgres:
    """One PostgreSQL server: `start()`, `stop()` (fast shutdown), `url` for the gateway."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{DATABASE}"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, args: Sequence[str], timeout: float = 60) -> None:
        as_root = os.geteuid() == 0
        argv = ["runuser", "-u", "postgres", "--", *args] if as_root else list(args)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}"
            )

    def init(self) -> None:
        self._run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-instructions"],
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
             "-o", options, "-w", "-t", "60", "start"],
            timeout=90,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut, as in an outage)."""
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t",
             "60", "stop"],
            timeout=90,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """A new empty database on this server; its URL."""
        self._run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", name]
        )  # fmt: skip
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def psql(self, sql: str, database: str = DATABASE) -> list[str]:
        """`sql` run with psql against a database of this server: its output's lines."""
        psql = self.bin_dir / "psql"
        argv = [str(psql) if psql.exists() else (shutil.which("psql") or "psql"), "-h",
                "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-At",
                "-c", sql]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.splitlines()


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A fresh PostgreSQL server with an empty database `gateway`, removed afterwards.

    Skips the test where the machine has no PostgreSQL server binaries, except under CI,
    where that fails it.
    """
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        message = "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="gw-own-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    server = OwnPostgres(bin_dir, root)
    try:
        server.init()
        server.start()
        server.create_database(DATABASE)
        yield server
    finally:
        if server.running():
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
