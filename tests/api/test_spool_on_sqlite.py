"""The spool changes nothing on the default SQLite database: runs are stored directly, no
spool directory appears, and the probes show an empty spool."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from platformdirs import user_data_dir

from app.settings import Settings
from tests.support.commands import run
from tests.support.servers import free_port


def test_the_default_spool_is_beside_the_default_sqlite_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GATEWAY_SPOOL_DIR", "GATEWAY_DATABASE_URL", "GATEWAY_SPOOL_MAX_BYTES"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    data_dir = Path(user_data_dir("ollama-gateway", appauthor=False))
    assert settings.database_url == f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}"
    assert settings.spool_dir == data_dir / "spool"
    assert settings.spool_max_bytes == 256 * 1024 * 1024


async def test_on_sqlite_runs_are_stored_directly_and_nothing_is_spooled(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    body = {"model": "llama3.1:8b", "prompt": "hi", "options": {"max_tokens": 4}}
    ran = await client.post("/gateway/generate", json=body)
    assert ran.status_code == 200
    stored = await client.get(f"/gateway/results/{ran.json()['id']}")
    assert stored.status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["spool"] == {"entries": 0, "bytes": 0, "max_bytes": 256 * 1024 * 1024}
    assert ready.json()["degraded"] == [] and ready.json()["database"] == "ok"
    metrics = (await client.get("/metrics")).text
    assert "gateway_spool_entries 0.0" in metrics and "gateway_spool_bytes 0.0" in metrics
    assert not (tmp_path / "spool").exists()  # made only when something is spooled
    assert (tmp_path / "gateway.db").exists()


def test_serve_refuses_a_spool_directory_it_cannot_write(tmp_path: Path) -> None:
    """An unusable GATEWAY_SPOOL_DIR stops `serve` at once with what to do, rather than
    failing on the first database outage (when the spool is needed)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "GATEWAY_BACKENDS": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_SPOOL_DIR": str(blocker / "spool"),
    }
    refused = run(["ollama-gateway", "serve"], env, tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert f"the spool directory {blocker / 'spool'} cannot be written" in refused.stderr
    assert "GATEWAY_SPOOL_MAX_BYTES=0" in refused.stderr
