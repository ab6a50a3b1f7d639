"""The deploy files' settings. Every `GATEWAY_*` variable that docker-compose.yml,
.env.example, the Kubernetes manifests and the Dockerfile set is one the gateway reads: the
settings ignore a `GATEWAY_` name they do not know (`extra="ignore"`), so a misspelt one
(`GATEWAY_EMBEDED_WORKER`) would be dropped without a word. And a compose implementation
(podman-compose, from PyPI) reads the compose file as `docker compose` would."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
READ_ELSEWHERE = {"GATEWAY_MIGRATIONS_DIR"}
"""Read from the environment by the code itself, not a setting (where Alembic's scripts are)."""
NAME = re.compile(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9]\b")
DEPLOY_FILES = (
    "docker-compose.yml",
    ".env.example",
    "Dockerfile",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy/kubernetes").glob("*.yaml")),
    "docs/deploy.md",
)


def compose_sets() -> dict[str, set[str]]:
    """The variables each compose service's `environment` sets, and those interpolated."""
    text = (ROOT / "docker-compose.yml").read_text()
    found: dict[str, set[str]] = {}
    for name, service in yaml.safe_load(text)["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):  # the `- NAME=value` form
            environment = dict(item.partition("=")[::2] for item in environment)
        found[f"docker-compose.yml: {name}"] = set(environment)
    found["docker-compose.yml: ${...}"] = set(re.findall(r"\$\{(\w+)", text))
    return found


def env_example_sets() -> set[str]:
    """`NAME=value` lines of .env.example, and the commented-out ones offered to uncomment."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {m[1] for line in lines if (m := re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line))}


def kubernetes_sets() -> dict[str, set[str]]:
    """The ConfigMap's keys, and each container's `env` names (in every manifest)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            where = f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}"
            if doc["kind"] == "ConfigMap":
                found[where] = set(doc["data"])
            pod: dict[str, Any] = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in (*pod.get("initContainers", []), *pod.get("containers", [])):
                found[f"{where} {container['name']}"] = {e["name"] for e in container["env"]}
    return found


def dockerfile_sets() -> set[str]:
    """The names of the Dockerfile's `ENV NAME=value ...` instructions."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("ENV ")]
    return {m for line in lines for m in re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", line)}


def unknown(names: set[str]) -> list[str]:
    """The `GATEWAY_` names among `names` that the gateway does not read, each with the
    setting it was probably meant to be."""
    wrong = sorted(
        n for n in names if n.startswith("GATEWAY_") and n not in SETTINGS | READ_ELSEWHERE
    )
    return [
        f"{n} (meant {close[0]}?)" if (close := difflib.get_close_matches(n, SETTINGS, 1)) else n
        for n in wrong
    ]


def test_every_gateway_variable_the_deploy_files_set_is_a_setting() -> None:
    sets = {
        **compose_sets(),
        ".env.example": env_example_sets(),
        **kubernetes_sets(),
        "Dockerfile: ENV": dockerfile_sets(),
    }
    # what the parsing must find, so that this test cannot pass on nothing
    assert "GATEWAY_BACKENDS" in sets["docker-compose.yml: gateway-1"]
    assert "GATEWAY_EMBEDDED_WORKER" in sets["docker-compose.yml: worker"]
    assert {"GATEWAY_ADMIN_KEY", "GATEWAY_LOG_FORMAT"} <= sets[".env.example"]
    configmap = sets["deploy/kubernetes/configmap.yaml: ConfigMap ollama-gateway"]
    assert {"GATEWAY_BACKENDS", "GATEWAY_SHUTDOWN_GRACE"} <= configmap
    assert (
        "GATEWAY_ADMIN_KEY_FILE"
        in sets["deploy/kubernetes/gateway-deployment.yaml: Deployment ollama-gateway gateway"]
    )
    assert "GATEWAY_DATABASE_URL" in sets["Dockerfile: ENV"]
    wrong = {where: bad for where, names in sets.items() if (bad := unknown(names))}
    assert wrong == {}, "not settings of app/settings.py: " + "; ".join(
        f"{where}: {', '.join(bad)}" for where, bad in wrong.items()
    )


def test_every_gateway_name_the_deploy_files_mention_is_a_setting() -> None:
    """Comments and prose too (docs/deploy.md): a reader copies names from them."""
    mentioned = {path: set(NAME.findall((ROOT / path).read_text())) for path in DEPLOY_FILES}
    assert "GATEWAY_SPOOL_DIR" in mentioned["docker-compose.yml"]  # a comment's
    wrong = {path: bad for path, names in mentioned.items() if (bad := unknown(names))}
    assert wrong == {}


def test_names_read_outside_the_settings_are_read() -> None:
    """READ_ELSEWHERE stays true: each name is read by the gateway's own code."""
    code = "\n".join(p.read_text() for p in (ROOT / "app").rglob("*.py"))
    for name in READ_ELSEWHERE:
        assert f'os.environ.get("{name}")' in code, name
        assert name not in SETTINGS


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def podman_compose(folder: Path) -> subprocess.CompletedProcess[str]:
    """`podman-compose config` in `folder`: the file parsed, merged and interpolated with
    the folder's .env, no engine needed (podman-compose asks `podman version` first)."""
    tool = Path(sys.executable).parent / "podman-compose"
    if not tool.exists():
        pytest.skip("podman-compose is not installed (pip install -e '.[dev]')")
    if shutil.which("podman") is None:
        reason = "podman is not installed (apt-get install podman), podman-compose asks it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI installs it: see .ci/run)")
        pytest.skip(reason)
    return subprocess.run(
        [str(tool), "--file", "docker-compose.yml", "config"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_compose_implementation_reads_the_compose_file(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    example = dotenv(ROOT / ".env.example")
    # as copied: compose refuses it, naming the value to set
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in example.items()))
    refused = podman_compose(tmp_path)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr, refused.stderr
    # with its values set: the file as compose sees it
    filled = {**example, "GATEWAY_ADMIN_KEY": "ogw_" + "k" * 43, "POSTGRES_PASSWORD": "pw123"}
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
    read = podman_compose(tmp_path)
    assert read.returncode == 0, read.stderr
    services = yaml.safe_load(read.stdout)["services"]
    ours = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(services) == set(ours)
    for name in ("migrate", "gateway-1", "gateway-2", "worker"):
        environment = services[name]["environment"]
        assert set(environment) == set(ours[name]["environment"]), name
        assert environment["GATEWAY_DATABASE_URL"] == (
            "postgresql+asyncpg://gateway:pw123@postgres:5432/gateway"
        )
        assert services[name]["command"][0] == "ollama-gateway"
    assert services["worker"]["environment"]["GATEWAY_EMBEDDED_WORKER"] == "false"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw123"
