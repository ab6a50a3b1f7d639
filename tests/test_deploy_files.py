"""The deploy files (Dockerfile, docker-compose.yml with HAProxy, deploy/kubernetes/): checked
as far as a machine without a Docker engine or a cluster can check them. The compose file's
gateway is run for real: its own command lines and environment, read from the YAML, with
PostgreSQL, Redis and an Ollama stand-in on loopback in place of its services."""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import yaml

from app.settings import Settings
from tests.support.commands import run, serving, started
from tests.support.databases import fresh_pg_database
from tests.support.servers import free_port, running_emulator

ROOT = Path(__file__).resolve().parents[1]
GATEWAYS = ("gateway-1", "gateway-2")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as docker compose reads an env file (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


class ComposeRefuses(Exception):
    pass


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (what this file uses)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        value = variables.get(name, "")
        if op == ":?" and not value:
            raise ComposeRefuses(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        return value

    return re.sub(r"\$\{(\w+)(:[?-])?([^}]*)\}", one, text)


def service_env(service: dict[str, Any], env_file: dict[str, str]) -> dict[str, str]:
    """What a container of `service` gets: its env_file, then its `environment` on top."""
    assert service["env_file"] == ".env"
    env = dict(env_file)
    env.update({k: interpolate(str(v), env_file) for k, v in service["environment"].items()})
    return env


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert all("slim" in line for line in stages)
    # a numeric non-root user, so Kubernetes' runAsNonRoot can check it
    assert "--uid 10001" in text and "\nUSER 10001:10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "COPY migrations" in text


def test_compose_runs_replicas_behind_haproxy_with_a_worker_and_its_services() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {
        "migrate", *GATEWAYS, "worker", "haproxy", "postgres", "redis", "ollama",
    }  # fmt: skip
    one, two = (services[name] for name in GATEWAYS)
    assert one == two  # same image, same environment, same command
    assert one["command"] == ["ollama-gateway", "serve"]
    assert one["image"] == services["worker"]["image"] == services["migrate"]["image"]
    assert one["env_file"] == ".env"
    env = one["environment"]
    assert env["GATEWAY_BACKENDS"] == "http://ollama:11434"
    assert env["GATEWAY_DATABASE_URL"].startswith("postgresql+asyncpg://gateway:")
    assert env["GATEWAY_DATABASE_URL"].endswith("@postgres:5432/gateway")
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    # the schema is upgraded once, before anything serves or runs jobs
    assert services["migrate"]["command"] == ["ollama-gateway", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in (*GATEWAYS, "worker"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert needs["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["command"] == ["ollama-gateway", "worker"]
    assert worker["environment"]["GATEWAY_EMBEDDED_WORKER"] == "false"
    assert {k: v for k, v in worker["environment"].items() if k != "GATEWAY_EMBEDDED_WORKER"} == env
    # HAProxy (the official image) is the only published port
    haproxy = services["haproxy"]
    assert haproxy["image"].split(":")[0] == "haproxy"
    assert (
        "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    )
    assert haproxy["ports"] == ["127.0.0.1:8000:8000"]
    assert [name for name, s in services.items() if "ports" in s] == ["haproxy"]
    assert set(haproxy["depends_on"]) == set(GATEWAYS)
    assert services["ollama"]["image"].startswith("ollama/ollama")
    assert services["redis"]["image"].split(":")[0] == "redis"
    for name in (*GATEWAYS, "postgres", "redis", "ollama"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(one["healthcheck"]["test"])
    named = set(spec["volumes"])
    for service in ("ollama", "postgres", *GATEWAYS):
        mounts = {m.split(":")[0] for m in services[service]["volumes"]}
        assert mounts <= named


def test_env_example_holds_every_variable_compose_needs_and_refuses_its_placeholders() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = dotenv(ROOT / ".env.example")
    assert set(re.findall(r"\$\{(\w+)", text)) <= set(example)
    assert {"GATEWAY_ADMIN_KEY", "POSTGRES_PASSWORD"} <= set(example)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    # copied and not edited, it does not start: compose wants a password ...
    with pytest.raises(ComposeRefuses, match="POSTGRES_PASSWORD"):
        service_env(compose()["services"]["gateway-1"], example)
    # ... and the gateway a real key
    with pytest.raises(pydantic.ValidationError, match="GATEWAY_ADMIN_KEY"):
        Settings(_env_file=None, admin_key=example["GATEWAY_ADMIN_KEY"])


def test_haproxy_balances_ready_replicas_round_robin_with_stream_timeouts() -> None:
    cfg = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    lines = [line.split("#")[0].strip() for line in cfg.splitlines()]
    assert "balance roundrobin" in lines
    assert "option httpchk GET /readyz" in lines
    servers = [line.split()[1:3] for line in lines if line.startswith("server ")]
    assert servers == [[name, f"{name}:8000"] for name in GATEWAYS]
    assert all(line.split()[-1] == "check" for line in lines if line.startswith("server "))
    assert "bind :8000" in lines
    units = {"s": 1, "m": 60, "h": 3600}
    for which in ("client", "server"):
        (value,) = [line.split()[2] for line in lines if line.startswith(f"timeout {which} ")]
        seconds = int(value[:-1]) * units[value[-1]]
        assert seconds > 300, f"timeout {which} must outlast GATEWAY_REQUEST_TIMEOUT"


def test_haproxy_accepts_its_config() -> None:
    haproxy = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does)")
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(ROOT / "deploy/haproxy/haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout + checked.stderr


def test_the_compose_gateway_starts_secure_with_no_manual_step(tmp_path: Path) -> None:
    """What `docker compose up` runs, after `cp .env.example .env` and setting its two
    values: the migrate service, then both replicas at once, then the worker; each with its
    service's environment. They start (0.0.0.0, no key made by hand) and are secure."""
    services = compose()["services"]
    admin_key = "ogw_" + secrets.token_urlsafe(32)
    env_file = {
        **dotenv(ROOT / ".env.example"),
        "GATEWAY_ADMIN_KEY": admin_key,
        "POSTGRES_PASSWORD": secrets.token_hex(12),
    }
    with fresh_pg_database() as database_url, running_emulator() as emulator:

        def on_loopback(name: str) -> dict[str, str]:
            """The service's environment, its neighbours' host names swapped for ours."""
            env = service_env(services[name], env_file)
            stand_ins = {
                "GATEWAY_DATABASE_URL": (
                    f"postgresql+asyncpg://gateway:{env_file['POSTGRES_PASSWORD']}"
                    "@postgres:5432/gateway",
                    database_url,
                ),
                "GATEWAY_BACKENDS": ("http://ollama:11434", emulator),
                "GATEWAY_REDIS_URL": ("redis://redis:6379/0", "redis://127.0.0.1:6379/0"),
            }
            for variable, (theirs, ours) in stand_ins.items():
                assert env[variable] == theirs, variable
                env[variable] = ours
            assert env["GATEWAY_HOST"] == "0.0.0.0" and env["GATEWAY_PORT"] == "8000"
            return env

        migrated = run(services["migrate"]["command"], on_loopback("migrate"), tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        urls, logs = [], []
        with contextlib.ExitStack() as stack:
            for name in GATEWAYS:  # two replicas started at once, each on a port of its own
                port = free_port()
                env = {**on_loopback(name), "GATEWAY_PORT": str(port)}
                urls.append(f"http://127.0.0.1:{port}")
                logs.append(tmp_path / f"{name}.log")
                stack.enter_context(
                    serving(services[name]["command"], env, logs[-1], tmp_path, urls[-1])
                )
            worker_log = tmp_path / "worker.log"
            worker = stack.enter_context(
                started(services["worker"]["command"], on_loopback("worker"), worker_log, tmp_path)
            )
            for url in urls:
                assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
                assert httpx.get(f"{url}/gateway/models", timeout=10).status_code == 401
                reply = httpx.get(
                    f"{url}/gateway/models",
                    headers={"Authorization": f"Bearer {admin_key}"},
                    timeout=10,
                )
                assert reply.status_code == 200, reply.text
            keys = httpx.get(
                f"{urls[1]}/gateway/keys",
                headers={"Authorization": f"Bearer {admin_key}"},
                timeout=10,
            ).json()
            assert [(k["name"], k["scope"]) for k in keys] == [("bootstrap-admin", "admin")]
            for _ in range(200):
                if "running jobs" in worker_log.read_text() or worker.poll() is not None:
                    break
                time.sleep(0.1)
            assert worker.poll() is None, worker_log.read_text()
            assert "running jobs" in worker_log.read_text()
    for log in (*logs, worker_log):
        assert admin_key not in log.read_text()


def kubernetes() -> dict[tuple[str, str], dict[str, Any]]:
    manifests = {}
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            manifests[(doc["kind"], doc["metadata"]["name"])] = doc
    return manifests


def test_kubernetes_manifests_run_the_api_and_workers_safely() -> None:
    k8s = kubernetes()
    api = k8s[("Deployment", "ollama-gateway")]
    worker = k8s[("Deployment", "ollama-gateway-worker")]
    config = k8s[("ConfigMap", "ollama-gateway")]["data"]
    secret = k8s[("Secret", "ollama-gateway")]["stringData"]
    assert api["spec"]["replicas"] == 2
    pod = api["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["command"] == ["ollama-gateway", "serve"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the drain runs before SIGTERM, and may take its drain period and the grace
    assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["ollama-gateway", "drain"]
    grace = int(config["GATEWAY_SHUTDOWN_GRACE"])
    drain = int(config["GATEWAY_SHUTDOWN_DRAIN"])
    assert pod["terminationGracePeriodSeconds"] > grace + drain
    # the spool (results kept while the database does not answer) is on a volume, the
    # root filesystem being read-only
    spool_dir = re.search(r"GATEWAY_SPOOL_DIR=(\S+)", (ROOT / "Dockerfile").read_text())
    assert spool_dir is not None
    assert spool_dir[1] in {m["mountPath"] for m in gateway["volumeMounts"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert [c["command"] for c in pod["initContainers"]] == [["ollama-gateway", "migrate"]]
    # the admin key comes from the Secret, as a mounted file
    env = {e["name"]: e for e in gateway["env"]}
    assert env["GATEWAY_ADMIN_KEY_FILE"]["value"] == "/var/run/secrets/ollama-gateway/admin-key"
    assert env["GATEWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    assert {"database-url", "redis-url", "admin-key"} <= set(secret)
    with pytest.raises(pydantic.ValidationError):  # the placeholder is refused
        Settings(_env_file=None, admin_key=secret["admin-key"])
    (worker_container,) = worker["spec"]["template"]["spec"]["containers"]
    assert worker_container["command"] == ["ollama-gateway", "worker"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"] == labels
    assert k8s[("Service", "ollama-gateway")]["spec"]["selector"] == labels
    assert (
        k8s[("PodDisruptionBudget", "ollama-gateway")]["spec"]["selector"]["matchLabels"] == labels
    )
    hpa = k8s[("HorizontalPodAutoscaler", "ollama-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ollama-gateway"
    assert hpa["spec"]["minReplicas"] >= 2
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert worker_labels != labels  # the Service never sends requests to a worker


def dev_tool(name: str) -> str:
    """A command of the `dev` extra, from this interpreter's environment."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_kubernetes_validate_accepts_every_manifest() -> None:
    files = sorted(str(p) for p in (ROOT / "deploy/kubernetes").glob("*.yaml"))
    checked = subprocess.run(
        [dev_tool("kubernetes-validate"), "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_hadolint_accepts_the_dockerfile() -> None:
    checked = subprocess.run(
        [dev_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
