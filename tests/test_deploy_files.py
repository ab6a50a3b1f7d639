"""The Docker files: checked as far as a machine without a Docker engine can check them."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert all("slim" in line for line in stages)
    assert "\nUSER gateway" in text
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_compose_runs_gateway_with_ollama_and_postgres_on_named_volumes() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "ollama", "postgres"}
    assert services["ollama"]["image"].startswith("ollama/ollama")
    env = services["gateway"]["environment"]
    assert env["GATEWAY_BACKENDS"] == "http://ollama:11434"
    assert env["GATEWAY_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["GATEWAY_DATABASE_URL"]
    named = set(compose["volumes"])
    for service in ("ollama", "postgres"):
        mounts = {m.split(":")[0] for m in services[service]["volumes"]}
        assert mounts <= named
