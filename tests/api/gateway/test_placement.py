"""Placement rules through the gateway: a pinned model runs only on the backends its rule
allows, on every surface, and a pull without a target goes there too; the rules are read
and replaced at `/gateway/placement` (admin), and a rule that leaves no healthy backend is
a 503 naming it. Three emulators on loopback, each behind a recording proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.recording_proxy import RecordingProxy
from tests.support.servers import free_port, running_emulator, serving_in_thread

MODEL = "llama3.1:8b"
OTHER = "qwen2.5:0.5b"
RULES = {"llama3*": ["tag:gpu"], "qwen2.5:0.5b": ["b0"]}
RUNS = ("/api/generate", "/api/chat")


@dataclass
class Fleet:
    gateway: str
    proxies: list[RecordingProxy]
    """b0, b1, b2: what reached each backend."""
    urls: list[str]
    """The backends' URLs as the gateway knows them (a run's `metadata.backend`)."""


@contextlib.contextmanager
def fleet(tmp_path: Path, **extra: Any) -> Iterator[Fleet]:
    """A gateway over b0 (`tags=cpu`), b1 and b2 (`tags=gpu`), each an emulator behind a
    recording proxy, both models on each."""
    with contextlib.ExitStack() as stack:
        proxies: list[RecordingProxy] = []
        urls: list[str] = []
        for _ in range(3):
            emulator = stack.enter_context(
                running_emulator(
                    models=(MODEL, OTHER), token_delay_ms=5, extra_args=["--reply-tokens", "5"]
                )
            )
            proxies.append(RecordingProxy(emulator))
            urls.append(stack.enter_context(serving_in_thread(proxies[-1])))
        backends = [f"b{i}={url};tags={tag}" for i, (url, tag) in enumerate(zip(
            urls, ("cpu", "gpu", "gpu"), strict=True))]  # fmt: skip
        # Health probes go through proxies in this process: a 1 s timeout is too short when
        # the machine is busy, and a backend wrongly marked down fails a placement test.
        settings = gateway_settings(backends, tmp_path, **{"health_timeout": 5, **extra})
        yield Fleet(stack.enter_context(serving_in_thread(create_app(settings))), proxies, urls)


def runs_of(proxy: RecordingProxy, model: str, paths: tuple[str, ...] = RUNS) -> int:
    return sum(1 for a in proxy.arrivals if a.path in paths and a.model == model)


@pytest.mark.timeout(60)
def test_a_pinned_model_runs_only_on_its_backends_on_every_surface(tmp_path: Path) -> None:
    """20 of 20 runs of the pinned model on a backend its tag rule allows (`/gateway`), and
    the same on `/api` and `/v1`; the model pinned by name runs on that backend only."""
    with fleet(tmp_path, placement=RULES) as f:
        url, proxies = f.gateway, f.proxies

        async def twenty() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                body = {"model": MODEL, "options": {"max_tokens": 5}, "save": False}
                return await asyncio.gather(
                    *(client.post("/gateway/generate", json={**body, "prompt": f"q{i}"})
                      for i in range(20))
                )  # fmt: skip

        replies = asyncio.run(twenty())
        assert [r.status_code for r in replies] == [200] * 20, replies[0].text
        served = Counter(r.json()["metadata"]["backend"] for r in replies)
        print("pinned runs per backend:", dict(served))  # for the record (-s)
        assert sum(n for backend, n in served.items() if backend in f.urls[1:]) == 20, served
        assert runs_of(proxies[0], MODEL) == 0, "b0 is cpu: no run of the pinned model there"
        assert runs_of(proxies[1], MODEL) + runs_of(proxies[2], MODEL) == 20

        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(4):
                chat = {"model": MODEL, "messages": [{"role": "user", "content": f"c{i}"}]}
                assert client.post("/api/chat", json={**chat, "stream": False}).status_code == 200
                gen = {"model": MODEL, "prompt": f"g{i}", "stream": False}
                assert client.post("/api/generate", json=gen).status_code == 200
                v1 = {"model": MODEL, "messages": [{"role": "user", "content": f"v{i}"}]}
                assert client.post("/v1/chat/completions", json=v1).status_code == 200
                other = {"model": OTHER, "prompt": f"o{i}", "options": {"max_tokens": 5}}
                assert client.post("/gateway/generate", json=other).status_code == 200
        assert runs_of(proxies[0], MODEL) == 0
        assert runs_of(proxies[1], MODEL) + runs_of(proxies[2], MODEL) == 20 + 12
        assert runs_of(proxies[0], OTHER) == 4
        assert runs_of(proxies[1], OTHER) + runs_of(proxies[2], OTHER) == 0


@pytest.mark.timeout(60)
def test_a_pull_without_a_target_goes_to_an_allowed_backend(tmp_path: Path) -> None:
    with fleet(tmp_path, placement=RULES) as f:
        proxies = f.proxies
        with httpx.Client(base_url=f.gateway, timeout=30) as client:
            for _ in range(3):
                reply = client.post("/api/pull", json={"model": "llama3.2:3b", "stream": False})
                assert reply.status_code == 200, reply.text
            job = client.post("/gateway/pulls", json={"model": "llama3.2:1b"})
            assert job.status_code in (200, 201, 202), job.text
            for _ in range(100):
                if sum(runs_of(p, "llama3.2:1b", ("/api/pull",)) for p in proxies):
                    break
                asyncio.run(asyncio.sleep(0.05))
    pulls = [sum(1 for a in p.arrivals if a.path == "/api/pull") for p in proxies]
    assert pulls[0] == 0 and pulls[1] + pulls[2] == 4, pulls


@pytest.mark.timeout(60)
def test_placement_is_read_and_replaced_by_admins(tmp_path: Path) -> None:
    admin = "ogw_" + "a" * 40
    with fleet(tmp_path, placement=RULES, admin_key=admin, require_auth=True) as f:
        proxies = f.proxies
        auth = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=f.gateway, timeout=30, headers=auth) as client:
            assert client.get("/gateway/placement").json() == RULES
            made = client.post("/gateway/keys", json={"name": "u", "scope": "user"})
            user = {"Authorization": f"Bearer {made.json()['key']}"}
            for method in ("GET", "PUT"):
                denied = client.request(method, "/gateway/placement", json={}, headers=user)
                assert denied.status_code == 403, denied.text

            for bad, words in (
                ({"[llama": ["b1"]}, "without its ']'"),
                ({"llama3.1:*": []}, "non-empty list"),
                ({"llama3.1:*": ["b 1"]}, "neither a backend name"),
                ({"llama3.1:*": "b1"}, "list"),
                (["llama3.1:*"], "valid dictionary"),
                ({"ll ama": ["b1"]}, "not a model glob"),
            ):
                reply = client.put("/gateway/placement", json=bad)
                assert reply.status_code == 422, (bad, reply.text)
                assert words in reply.text, (bad, reply.text)
            broken = client.put(
                "/gateway/placement",
                content=b'{"llama3.1:*": [',
                headers={"Content-Type": "application/json"},
            )
            assert broken.status_code == 422 and "JSON" in broken.text, broken.text
            assert client.get("/gateway/placement").json() == RULES, "nothing bad was kept"

            # pin the model to b0 by name: the next runs go there
            new = {"LLAMA3.1:8B": ["b0"], "*": ["tag:gpu"]}
            replaced = client.put("/gateway/placement", json=new)
            assert replaced.status_code == 200 and replaced.json() == new
            assert list(client.get("/gateway/placement").json()) == ["LLAMA3.1:8B", "*"]
            body = {"model": "library/llama3.1:8b", "prompt": "x", "options": {"max_tokens": 3}}
            for _ in range(3):
                run = client.post("/gateway/generate", json=body)
                assert run.status_code == 200, run.text
                assert run.json()["metadata"]["backend"] == f.urls[0]
            assert runs_of(proxies[0], "library/llama3.1:8b") == 3
            other = client.post("/api/generate", json={"model": OTHER, "prompt": "x"})
            assert other.status_code == 200
            assert runs_of(proxies[0], OTHER) == 0

            # a rule naming no backend of the pool: 503 naming the rule
            assert client.put("/gateway/placement", json={"qwen*": ["gone"]}).status_code == 200
            for path, body in (
                ("/gateway/generate", {"model": OTHER, "prompt": "x"}),
                ("/api/generate", {"model": OTHER, "prompt": "x", "stream": False}),
                ("/v1/chat/completions",
                 {"model": OTHER, "messages": [{"role": "user", "content": "x"}]}),
            ):  # fmt: skip
                refused = client.post(path, json=body)
                assert refused.status_code == 503, (path, refused.text)
                assert "placement rule 'qwen*'" in refused.text, (path, refused.text)
            assert client.put("/gateway/placement", json={}).json() == {}
            assert client.post("/api/generate", json={"model": OTHER, "prompt": "x"}).is_success


@pytest.mark.timeout(60)
def test_a_rule_whose_backends_are_down_is_a_503_naming_it(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with running_emulator(models=(MODEL,)) as up:
        backends = [f"up={up}", f"down={down};tags=big"]
        settings = gateway_settings(backends, tmp_path, placement={"llama3.1:8b": ["tag:big"]})
        with serving_in_thread(create_app(settings)) as url:
            body = {"model": MODEL, "prompt": "x"}
            reply = httpx.post(f"{url}/gateway/generate", json=body, timeout=30)
            assert reply.status_code == 503, reply.text
            detail = reply.json()["detail"]
            assert "placement rule 'llama3.1:8b' -> tag:big" in detail
            assert "none is healthy" in detail
