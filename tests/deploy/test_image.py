"""The container image, built from the Dockerfile as it is and run, on a machine without a
Docker engine: what `docker run` and `docker compose up` give a user.

How, with Debian's packages only (apt-get install podman buildah debootstrap; .ci/run does):

- The base, `python:3.11-slim`, cannot be pulled here. A stand-in is made from Debian's own
  packages (`debootstrap --variant=minbase` of bookworm with python3, pip and venv: Python
  3.11, as upstream) with what the upstream image adds (`python` and `pip` in
  /usr/local/bin, pip allowed outside a venv), and tagged `docker.io/library/python:3.11-slim`
  in a podman store of these tests' own (`/var/cache/ollama-gateway-ci`, outside the clone:
  never the machine's default store). It is made once per machine and again when its recipe
  below changes (its hash is the image's label).
- `podman build --isolation chroot --network host` builds the Dockerfile unchanged.
- Starting a container fails on these machines (crun cannot set RLIMIT_NOFILE), so a
  container is emulated: `podman create` then `podman mount` gives its root file system
  (the image's layers under a writable layer of its own), and the image's own command (its
  ENTRYPOINT and CMD, read from `podman image inspect`), or a compose service's command, runs
  chrooted into it as the image's USER, with the image's ENV and WORKDIR, as pid 1 of new pid,
  mount and UTS namespaces (`unshare`): proc, sys and a minimal /dev mounted as a runtime
  mounts them, the host's network (as `docker run --network host`; the gateway is told
  GATEWAY_HOST=127.0.0.1 and a free port, so nothing listens beyond loopback). When the test
  ends, pid 1 gets SIGTERM, then the namespace is killed: nothing is left running.
- A named volume is a directory of the test's that gets the image's content at the VOLUME path
  the first time it is mounted (Docker's copy-up, owner and mode included), then is bind-
  mounted there; a second container given the same directory is `docker run -v` of the same
  volume.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.databases import fresh_pg_database
from tests.support.servers import ROOT, free_port, running_emulator

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

MODEL = "llama3.1:8b"
IMAGE_TAG = "localhost/ollama-gateway:image-test"
SIZE_BUDGET_MB = 230
"""Most the image may add to its base, in MB (1 MB = 10**6 bytes). Measured: 178 MB (the
gateway's virtual environment; 50 MB of it is bytecode, kept so that a read-only root file
system starts fast). The stand-in base is 199 MB; upstream python:3.11-slim is about 130."""

CACHE = Path(os.environ.get("OLLAMA_GATEWAY_CI_CACHE", "/var/cache/ollama-gateway-ci"))
STORE = CACHE / "containers"
RUNROOT = Path("/run/ollama-gateway-ci/containers")
PODMAN_GLOBAL = [
    "--root", str(STORE), "--runroot", str(RUNROOT), "--tmpdir", str(RUNROOT.parent / "libpod"),
    "--storage-driver", "overlay",
    "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--log-level", "error",
]  # fmt: skip
CONTAINER_LABEL = "org.ollama-gateway.image-test.pid"

BASE = "docker.io/library/python:3.11-slim"
BASE_LABEL = "org.ollama-gateway.stand-in-recipe"
BASE_RECIPE = r"""
set -eu
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
  bookworm "$ROOTFS" $MIRROR
# What python:3.11-slim has and Debian's python3 has not: python and pip in /usr/local/bin,
# and pip free to install outside a virtual environment.
ln -s /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -s /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
# pip trusts what this machine trusts (a proxy's certificate authority, where there is one).
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"
printf '[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n' > "$ROOTFS/etc/pip.conf"
# No package cache and no package lists, as upstream.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" --numeric-owner -cf "$TAR" .
"""
BASE_CHANGES = (
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)

LAUNCHER = r"""
import json, os, socket, subprocess, sys
spec = json.loads(sys.argv[1])
root = spec["root"]
def mount(*args):
    subprocess.run(["mount", *args], check=True)
for source, target in spec["volumes"]:
    mount("--bind", source, root + target)
mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", root + "/proc")
mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", root + "/sys")
mount("-t", "tmpfs", "-o", "nosuid,mode=755,size=65536k", "tmpfs", root + "/dev")
for name in ("null", "zero", "full", "random", "urandom", "tty"):
    open(root + "/dev/" + name, "w").close()
    mount("--bind", "/dev/" + name, root + "/dev/" + name)
os.mkdir(root + "/dev/shm")
mount("-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k", "shm", root + "/dev/shm")
for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, root + "/dev/" + name)
socket.sethostname(spec["hostname"])
os.chroot(root)
os.chdir(spec["workdir"])
os.setgroups([])
os.setgid(spec["gid"])
os.setuid(spec["uid"])
os.umask(0o022)
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
"""
"""Runs in the new namespaces as their pid 1, as root: mounts what a runtime mounts, then
chroots, becomes the image's user and execs the command (which is then pid 1)."""


def missing(reason: str) -> None:
    """Fail in CI (.ci/run installs the tools), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs them: see .ci/run)")
    pytest.skip(reason)


def podman_env() -> dict[str, str]:
    """buildah keeps `RUN --mount=type=cache` directories under TMPDIR: in the cache too."""
    (CACHE / "tmp").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(CACHE / "tmp")}


def podman(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["podman", *PODMAN_GLOBAL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podman_env(),
    )
    if done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def say(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the test run's output, even under -q and output capture."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[image] {line}")


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One test run at a time makes the base or builds (two clones may run at once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses for bookworm (debootstrap's default if none
    is found)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w[\w-]*:", line)
            )
            if "bookworm" in fields.get("Suites", "").split():
                return fields.get("URIs", "").split()[0]
    classic = Path("/etc/apt/sources.list")
    if classic.is_file():
        for line in classic.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
                return parts[1]
    return ""


def stand_in_base(request: pytest.FixtureRequest) -> None:
    """`python:3.11-slim` in the test store, made from Debian's packages unless the one there
    was made by this very recipe (on this machine's CA bundle)."""
    recipe = hashlib.sha256(
        "\0".join([BASE_RECIPE, *BASE_CHANGES]).encode()
        + Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()
    ).hexdigest()[:16]
    with contextlib.suppress(AssertionError):
        found = podman("image", "inspect", "--format", "{{json .Labels}}", BASE).strip()
        if (json.loads(found) or {}).get(BASE_LABEL) == recipe:
            say(request, f"stand-in {BASE}: recipe {recipe}, cached")
            return
    started = time.monotonic()
    tar = CACHE / f"python-3.11-slim-stand-in-{recipe}.tar"
    if not tar.exists():
        for stale in CACHE.glob("python-3.11-slim-stand-in-*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        rootfs = CACHE / f"python-3.11-slim-stand-in-{recipe}.rootfs"
        partial = tar.with_suffix(".partial")
        # In a mount namespace of its own: what debootstrap mounts in the root it makes
        # (proc, sys) goes when it ends, whatever happens to it.
        made = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", BASE_RECIPE],
            env={**os.environ, "ROOTFS": str(rootfs), "TAR": str(partial), "MIRROR": apt_mirror()},
            capture_output=True,
            text=True,
            timeout=900,
        )
        shutil.rmtree(rootfs, ignore_errors=True)
        if made.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AssertionError(f"making the stand-in base failed:\n{made.stdout[-3000:]}\n"
                                 f"{made.stderr[-3000:]}")  # fmt: skip
        partial.rename(tar)
    changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
    podman("import", *changes, "--change", f"LABEL {BASE_LABEL}={recipe}", str(tar), BASE,
           timeout=300)  # fmt: skip
    say(request, f"stand-in {BASE}: recipe {recipe}, made in {time.monotonic() - started:.0f} s")


@dataclass(frozen=True)
class Image:
    id: str
    config: dict[str, Any]
    healthcheck: dict[str, Any]
    size: int
    base_size: int

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])

    @property
    def command(self) -> list[str]:
        """What `docker run IMAGE` runs: ENTRYPOINT then CMD."""
        return [*(self.config.get("Entrypoint") or []), *(self.config.get("Cmd") or [])]

    def run_with(self, command: Sequence[str]) -> list[str]:
        """What `docker run IMAGE COMMAND...` (a compose service's `command`) runs."""
        return [*(self.config.get("Entrypoint") or []), *command]

    @property
    def user(self) -> tuple[int, int]:
        uid, _, gid = self.config["User"].partition(":")
        assert uid.isdigit() and gid.isdigit(), f"USER {self.config['User']!r} is not numeric"
        return int(uid), int(gid)

    @property
    def volumes(self) -> list[str]:
        return sorted(self.config.get("Volumes") or {})


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Image:
    """The Dockerfile built (unchanged) on the stand-in base."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        missing("building and running the image needs Linux and root (podman mount, chroot)")
    tools = ("podman", "debootstrap", "unshare", "mount", "tar")
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (apt-get install podman buildah debootstrap)")
    with cache_lock():
        remove_leftovers()
        stand_in_base(request)
        started = time.monotonic()
        log = CACHE / "build.log"
        with open(log, "w") as out:
            built = subprocess.run(
                ["podman", *PODMAN_GLOBAL, "build", "--isolation", "chroot", "--network",
                 "host", "--pull=never", "--format", "docker", "--layers", "--tag", IMAGE_TAG,
                 "--file", str(ROOT / "Dockerfile"), str(ROOT)],
                stdout=out, stderr=subprocess.STDOUT, env=podman_env(), timeout=1200,
            )  # fmt: skip
        if built.returncode != 0:
            raise AssertionError(f"podman build failed:\n{log.read_text()[-5000:]}")
        seconds = time.monotonic() - started
        # Earlier builds' layers, kept an hour for the layer cache, then let go.
        podman("image", "prune", "--force", "--filter", "until=1h")
        (found,) = json.loads(podman("image", "inspect", IMAGE_TAG))
        (base,) = json.loads(podman("image", "inspect", BASE))
    built_image = Image(
        id=found["Id"],
        config=found["Config"],
        healthcheck=found.get("Healthcheck") or found["Config"].get("Healthcheck") or {},
        size=int(found["Size"]),
        base_size=int(base["Size"]),
    )
    say(
        request,
        f"built {IMAGE_TAG} in {seconds:.0f} s: {built_image.size / 1e6:.0f} MB, "
        f"{(built_image.size - built_image.base_size) / 1e6:.0f} MB over the "
        f"{built_image.base_size / 1e6:.0f} MB stand-in base (budget {SIZE_BUDGET_MB} MB)",
    )
    return built_image


def remove_leftovers() -> None:
    """Containers of earlier runs whose pytest is gone (killed before its clean-up)."""
    listed = podman("ps", "--all", "--filter", f"label={CONTAINER_LABEL}", "--format",
                    f'{{{{.ID}}}} {{{{index .Labels "{CONTAINER_LABEL}"}}}}')  # fmt: skip
    for line in listed.splitlines():
        container, pid = line.split()
        if not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(AssertionError):
                podman("umount", container)
            podman("rm", "--force", container)


def tree(root: Path) -> dict[str, tuple[int, ...]]:
    """Every path under `root` with its type, mode, owner, size and times."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            found[path[len(str(root)) :]] = (
                st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_ctime_ns,
            )  # fmt: skip
    return found


class Volume:
    """A named volume: a directory of the test's."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True)
        self.path = path

    def mounted_at(self, root: Path, target: str) -> str:
        """Docker's copy-up: an empty volume first gets the image's content at `target`."""
        image_dir = root / target.lstrip("/")
        if not any(self.path.iterdir()) and image_dir.is_dir():
            subprocess.run(["cp", "-a", f"{image_dir}/.", str(self.path)], check=True)
            st = image_dir.stat()
            os.chown(self.path, st.st_uid, st.st_gid)
            os.chmod(self.path, stat.S_IMODE(st.st_mode))
        return str(self.path)


@dataclass
class Running:
    """A command running in a container; `stop()` is `docker stop`."""

    popen: subprocess.Popen[bytes]
    log: Path

    def pid1(self) -> int:
        """The host's pid of the container's pid 1 (unshare's only child)."""
        for _ in range(100):
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
                found = children.read_text().split()
                if found:
                    return int(found[0])
            time.sleep(0.05)
        raise AssertionError(f"no pid 1 in the container:\n{self.output()}")

    def pids(self) -> list[int]:
        """Every process in the container's pid namespace."""
        namespace = os.readlink(f"/proc/{self.pid1()}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns/pid") == namespace:
                        found.append(int(entry.name))
        return found

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.output()}") from None

    def stop(self, grace: float = 20) -> int:
        """SIGTERM to pid 1, then the whole namespace killed after `grace` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(AssertionError, ProcessLookupError):
                os.kill(self.pid1(), signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()  # unshare --kill-child: its child, pid 1, dies, and with
                self.popen.wait()  # it every process of the namespace
        return self.popen.returncode


def _die_with_parent() -> None:
    """unshare (and so the container) is killed if the test process dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class Container:
    """`podman create` and `podman mount`: the image's root file system, writable."""

    def __init__(self, image: Image, volumes: dict[str, Volume]) -> None:
        self.image = image
        self.volumes = volumes
        self.name = f"ogw-image-test-{uuid.uuid4().hex[:12]}"
        self.id = podman(
            "create", "--name", self.name, "--label", f"{CONTAINER_LABEL}={os.getpid()}",
            "--network", "host", "--image-volume", "ignore", "--no-healthcheck", image.id,
        ).strip()  # fmt: skip
        try:
            self.root = Path(podman("mount", self.id).strip())
        except AssertionError:
            podman("rm", "--force", self.id)
            raise
        self.started_tree = tree(self.root)
        self.running: list[Running] = []

    def close(self) -> None:
        for running in self.running:
            running.stop(grace=5)
        with contextlib.suppress(AssertionError):
            podman("umount", self.id)
        podman("rm", "--force", self.id)

    def environment(self, given: dict[str, str]) -> dict[str, str]:
        """As a runtime sets it: HOSTNAME, the image's ENV, `-e` values, and HOME from the
        image's /etc/passwd unless set."""
        env = {"HOSTNAME": self.id[:12], **self.image.env, **given}
        if "HOME" not in env:
            uid = self.image.user[0]
            env["HOME"] = "/"
            for line in (self.root / "etc/passwd").read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 5 and fields[2] == str(uid):
                    env["HOME"] = fields[5]
        return env

    def start(
        self, argv: Sequence[str], env: dict[str, str], log: Path, own_network: bool = False
    ) -> Running:
        """`argv` run as the container's pid 1 (own_network: in an empty network namespace
        of its own, as `docker run --network none`)."""
        uid, gid = self.image.user
        spec = {
            "root": str(self.root),
            "volumes": [
                (volume.mounted_at(self.root, target), target)
                for target, volume in self.volumes.items()
            ],
            "hostname": self.id[:12],
            "workdir": self.image.config.get("WorkingDir") or "/",
            "uid": uid,
            "gid": gid,
            "argv": list(argv),
            "env": self.environment(env),
        }
        unshare = ["unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child",
                   "--propagation", "private", *(["--net"] if own_network else [])]  # fmt: skip
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [*unshare, sys.executable, "-c", LAUNCHER, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        running = Running(popen, log)
        self.running.append(running)
        return running

    def written_outside_volumes(self) -> list[str]:
        """Paths the container created, changed or removed in its own file system (writes to
        volumes and to proc, sys and dev go to those mounts, not here)."""
        now = tree(self.root)
        before = self.started_tree
        return sorted(
            path for path in before.keys() | now.keys() if before.get(path) != now.get(path)
        )


@contextlib.contextmanager
def container(image: Image, volumes: dict[str, Volume] | None = None) -> Iterator[Container]:
    made = Container(image, volumes or {})
    try:
        yield made
    finally:
        made.close()


def serving(running: Running, url: str, timeout: float = 90) -> None:
    """Wait until `url`/healthz answers 200 (its log in the error if it exits or does not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.popen.poll() is not None:
            raise AssertionError(f"exited with {running.popen.returncode}:\n{running.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{running.output()}")


def owners(running: Running) -> set[tuple[tuple[int, ...], ...]]:
    """(uids, gids, supplementary groups) of every process in the container (real,
    effective, saved and file-system ids)."""
    found = set()
    for pid in running.pids():
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        found.add(
            tuple(
                tuple(int(n) for n in status[field].split()) for field in ("Uid", "Gid", "Groups")
            )
        )
    return found


IMAGE_USER = {((10001,) * 4, (10001,) * 4, ())}
"""What `owners` gives for processes of uid and gid 10001 with no supplementary group."""


def healthcheck(image: Image, box: Container, env: dict[str, str], log: Path) -> int:
    """The image's HEALTHCHECK command, run in the container as `docker` runs it."""
    test = image.healthcheck["Test"]
    argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    running = box.start(argv, env, log)
    return running.wait(timeout=image.healthcheck["Timeout"] / 1e9 + 10)


def volumes(image: Image, where: Path) -> dict[str, Volume]:
    """A new volume for each VOLUME the image declares (what `docker run` gives)."""
    return {target: Volume(where / f"volume-{i}") for i, target in enumerate(image.volumes)}


def admin_key() -> str:
    return "ogw_" + secrets.token_urlsafe(32)


def test_the_image_is_slim_non_root_and_keeps_its_data_on_a_volume(
    image: Image, tmp_path: Path
) -> None:
    """Its user, volume and defaults; its size within the budget; nothing of the build
    stage left in it; the OpenTelemetry packages in it."""
    assert image.user == (10001, 10001)
    env = image.env
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert image.volumes == ["/var/lib/ollama-gateway"], "the image's data need a VOLUME"
    database = env.get("GATEWAY_DATABASE_URL", "(the user's data directory)")
    assert database.startswith("sqlite+aiosqlite:////var/lib/ollama-gateway/"), database
    assert env["GATEWAY_SPOOL_DIR"].startswith("/var/lib/ollama-gateway/")
    added_mb = (image.size - image.base_size) / 1e6
    assert added_mb <= SIZE_BUDGET_MB, f"the image adds {added_mb:.0f} MB to its base"
    with container(image) as box:
        root = box.root
        # nothing of the build stage: no wheels, sources, pip cache or build tools
        for path in ("wheels", "src", "root/.cache", "opt/ollama-gateway/bin/pip"):
            assert not (root / path).exists(), path
        for tool in ("gcc", "cc", "make", "pytest", "ruff", "mypy"):
            on_path = [d for d in env["PATH"].split(":") if (root / d.lstrip("/") / tool).exists()]
            assert on_path == [], f"{tool} in {on_path}"
        venv = root / "opt/ollama-gateway/lib/python3.11/site-packages"
        assert (venv / "app").is_dir() and not (venv / "tests").exists()
        assert not list(venv.glob("pytest*")) and not list(venv.glob("hypothesis*"))
        # tracing turns on by environment: its packages are there, and import
        imports = box.start(
            ["python", "-c", "import opentelemetry.sdk.trace, opentelemetry.instrumentation."
             "fastapi, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, opentelemetry."
             "exporter.otlp.proto.http.trace_exporter, psycopg; print(psycopg.pq.__impl__)"],
            {}, tmp_path / "imports.log", own_network=True,
        )  # fmt: skip
        assert imports.wait(timeout=60) == 0, imports.output()
        assert box.written_outside_volumes() == []


def test_docker_run_with_nothing_set_says_a_key_is_needed_and_how_to_make_one(
    image: Image, tmp_path: Path
) -> None:
    """`docker run IMAGE`: the schema is made, then serve refuses to listen on 0.0.0.0
    without a key, naming GATEWAY_ADMIN_KEY and how to make one."""
    with container(image, volumes(image, tmp_path)) as box:
        run = box.start(image.command, {}, tmp_path / "run.log", own_network=True)
        code = run.wait(timeout=90)
        said = run.output()
        assert code != 0, said
        assert "refusing to serve on 0.0.0.0" in said
        assert "GATEWAY_ADMIN_KEY" in said
        assert "secrets.token_urlsafe(32)" in said, said  # how to make one
        assert box.written_outside_volumes() == []


def test_docker_run_serves_and_a_new_container_on_its_volume_keeps_the_results(
    image: Image, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`docker run -v data:/var/lib/ollama-gateway -e GATEWAY_ADMIN_KEY=...`: migrate then
    serve, as uid 10001; /healthz, /readyz, /ui/ with its CSP, an /api/chat and a batch; the
    HEALTHCHECK passes (and fails once it stopped); nothing written outside the volume. Then
    the container is replaced: a new one on the same volume has every result."""
    key = admin_key()
    auth = {"Authorization": f"Bearer {key}"}
    assert image.volumes, "the image declares no VOLUME: its data go with its container"
    data = volumes(image, tmp_path)  # `-v NAME:PATH` for each, given to both containers
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_emulator(models=(MODEL,)) as emulator:
        env = {
            "GATEWAY_ADMIN_KEY": key,
            "GATEWAY_BACKENDS": emulator,
            "GATEWAY_HOST": "127.0.0.1",  # the host's network: loopback only
            "GATEWAY_PORT": str(port),
        }
        with container(image, data) as first:
            started = time.monotonic()
            run = first.start(image.command, env, tmp_path / "first.log")
            serving(run, url)
            say(request, f"migrate + serve answered /healthz in {time.monotonic() - started:.1f} s")
            assert owners(run) == IMAGE_USER
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            assert httpx.get(f"{url}/gateway/results", timeout=10).status_code == 401
            console = httpx.get(f"{url}/ui/", timeout=10)
            assert console.status_code == 200 and "<script" in console.text
            policy = console.headers["content-security-policy"]
            assert {"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} <= {
                part.strip() for part in policy.split(";")
            }, policy
            chat = httpx.post(
                f"{url}/api/chat",
                headers=auth,
                json={
                    "model": MODEL,
                    "stream": False,
                    "messages": [{"role": "user", "content": "Name three colors."}],
                },
                timeout=30,
            )
            assert chat.status_code == 200, chat.text
            assert chat.json()["done"] is True and chat.json()["message"]["content"]
            batch = httpx.post(
                f"{url}/gateway/batches",
                headers=auth,
                json={"model": MODEL, "prompts": ["one", "two"]},
                timeout=60,
            )
            assert batch.status_code in (200, 201), batch.text
            assert batch.json()["succeeded"] == 2
            results = httpx.get(f"{url}/gateway/results?limit=50", headers=auth, timeout=10)
            kept = sorted(item["id"] for item in results.json()["items"])
            assert len(kept) == 3  # the chat and the batch's two runs
            health_env = first.environment(env)
            assert healthcheck(image, first, health_env, tmp_path / "health.log") == 0
            assert run.stop() == 0, run.output()
            assert healthcheck(image, first, health_env, tmp_path / "health-down.log") != 0
            assert key not in run.output()
            assert first.written_outside_volumes() == []
        volume = data["/var/lib/ollama-gateway"].path
        written = {p.relative_to(volume).as_posix(): p for p in volume.rglob("*")}
        assert "gateway.db" in written and "spool" in written, sorted(written)
        assert {(p.stat().st_uid, p.stat().st_gid) for p in written.values()} == {(10001, 10001)}
        with container(image, data) as second:  # the container replaced, the volume kept
            run = second.start(image.command, env, tmp_path / "second.log")
            serving(run, url)
            results = httpx.get(f"{url}/gateway/results?limit=50", headers=auth, timeout=10)
            assert sorted(item["id"] for item in results.json()["items"]) == kept
            stored = httpx.get(
                f"{url}/gateway/batches/{batch.json()['id']}", headers=auth, timeout=10
            )
            assert stored.status_code == 200, stored.text
            assert run.stop() == 0, run.output()
            assert second.written_outside_volumes() == []


def compose_command(service: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return list(spec["services"][service]["command"])


def test_the_worker_takes_a_job_from_postgresql(image: Image, tmp_path: Path) -> None:
    """compose's `serve` (jobs left to workers) and `worker` services, each its own container
    of the image on PostgreSQL: a batch sent as a job is run by the worker."""
    key = admin_key()
    auth = {"Authorization": f"Bearer {key}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Runs of about a second (50 tokens, 20 ms each): the job is seen running on the worker.
    slow = running_emulator(models=(MODEL,), token_delay_ms=20, extra_args=("--reply-tokens", "50"))
    with fresh_pg_database() as database_url, slow as emulator:
        env = {
            "GATEWAY_ADMIN_KEY": key,
            "GATEWAY_BACKENDS": emulator,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_EMBEDDED_WORKER": "false",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
        }
        with (
            container(image, volumes(image, tmp_path / "api")) as api,
            container(image, volumes(image, tmp_path / "worker")) as worker,
        ):
            serve = api.start(image.command, env, tmp_path / "api.log")  # migrate, then serve
            serving(serve, url)
            work = worker.start(
                image.run_with(compose_command("worker")), env, tmp_path / "worker.log"
            )
            deadline = time.monotonic() + 60
            while "running jobs" not in work.output():
                assert work.popen.poll() is None, work.output()
                assert time.monotonic() < deadline, work.output()
                time.sleep(0.2)
            name = re.search(r"worker (\S+) running jobs", work.output())
            assert name is not None
            started = httpx.post(
                f"{url}/gateway/batches",
                headers=auth,
                json={"model": MODEL, "prompts": ["one", "two", "three"], "background": True},
                timeout=30,
            )
            assert started.status_code == 202, started.text
            job_url = f"{url}/gateway/jobs/{started.json()['id']}"
            deadline, running_on = time.monotonic() + 60, set()
            while (job := httpx.get(job_url, headers=auth, timeout=10).json())["status"] in (
                "queued",
                "running",
            ):
                if job["status"] == "running":
                    running_on.add(job["worker"])  # shown while it runs
                assert time.monotonic() < deadline, (job, work.output())
                time.sleep(0.1)
            assert job["status"] == "succeeded" and job["succeeded"] == 3, (job, work.output())
            assert running_on == {name[1]}  # `hostname:pid`: the worker container's pid 1
            assert owners(work) == IMAGE_USER
            assert work.stop() == 0, work.output()
            assert serve.stop() == 0, serve.output()
            assert api.written_outside_volumes() == []
            assert worker.written_outside_volumes() == []
