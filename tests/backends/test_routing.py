"""Routing, failover, circuit breaking and back-pressure across three emulators."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator

import httpx
import pytest

from app.backends import BackendBusy, BackendPool, parse_backend
from app.fleet.status import model_locations
from app.ollama import ModelRunner, OllamaManager, same_model
from app.settings import Settings
from tests.support.servers import free_port, running_emulator, running_process


@contextlib.contextmanager
def killable_emulator(models: str, token_delay_ms: int = 0) -> Iterator[tuple[str, object]]:
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "emulator", "--port", str(port), "--models", models,
            "--token-delay-ms", str(token_delay_ms)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/") as proc:
        yield url, proc


def manager_for(urls: list[str]) -> OllamaManager:
    settings = Settings(backends=urls, request_timeout=20, connect_timeout=1, _env_file=None)
    return OllamaManager(auto_start_server=False, backends=urls, settings=settings)


def test_backend_entries_parse_name_max_and_weight() -> None:
    spec = parse_backend("gpu1=http://10.0.0.5:11434/;max=4;weight=2")
    assert (spec.name, spec.url, spec.max_concurrency, spec.weight) == (
        "gpu1",
        "http://10.0.0.5:11434",
        4,
        2.0,
    )
    assert parse_backend("http://h:1").name == "h:1"
    for bad in ("nourl", "a=http://h:1;max=0", "http://h:1;color=red"):
        with pytest.raises(ValueError):
            parse_backend(bad)


async def test_requests_go_to_the_backend_that_has_the_model() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["qwen2.5:0.5b"]) as b,
        running_emulator(models=["phi3:mini", "llama3.1:8b"]) as c,
    ):
        pool = BackendPool([a, b, c])
        assert (await pool.pick("qwen2.5:0.5b", has_model=same_model)).base_url == b
        assert (await pool.pick("phi3:mini", has_model=same_model)).base_url == c
        await pool.aclose()


async def test_a_backend_with_the_model_loaded_is_preferred() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["llama3.1:8b"]) as b,
    ):
        async with httpx.AsyncClient() as http:
            await http.post(f"{b}/api/generate", json={"model": "llama3.1:8b"})
        pool = BackendPool([a, b], inventory_ttl=0)
        assert (await pool.pick("llama3.1:8b", has_model=same_model)).base_url == b
        await pool.aclose()


async def test_a_killed_backend_loses_no_request_and_is_taken_out() -> None:
    with (
        killable_emulator("llama3.1:8b") as (a, proc_a),
        killable_emulator("llama3.1:8b") as (b, _),
        killable_emulator("llama3.1:8b") as (c, _),
    ):
        manager = manager_for([a, b, c])
        runner = ModelRunner(manager)
        proc_a.kill()  # type: ignore[attr-defined]
        results = await asyncio.gather(
            *(runner.async_generate("llama3.1:8b", f"q{i}", save_output=False) for i in range(30))
        )
        assert all(r.success for r in results), [r.error_message for r in results if not r.success]
        assert {(r.metadata or {})["backend"] for r in results} <= {b, c}
        [state_a] = [s for s in manager.pool.describe() if s["url"] == a]
        assert state_a["circuit"] == "open"
        await manager.aclose()


async def test_a_backend_killed_mid_stream_fails_that_run_only() -> None:
    with killable_emulator("llama3.1:8b", token_delay_ms=50) as (a, proc_a):
        manager = manager_for([a])
        runner = ModelRunner(manager)
        chunks = []
        stream = runner.async_generate_stream("llama3.1:8b", "long", save_output=False)
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                proc_a.kill()  # type: ignore[attr-defined]
            if chunk.done:
                break
        final = chunks[-1]
        assert final.done and final.result is not None and not final.result.success
        assert final.result.metadata is not None
        assert final.result.metadata["partial_response"].startswith(
            "".join(c.content for c in chunks[:3])
        )
        await manager.aclose()


async def test_a_recovered_backend_rejoins_after_the_cooldown() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["llama3.1:8b"]) as b,
    ):
        pool = BackendPool([a, b], cooldown=0.2, inventory_ttl=0)
        async with httpx.AsyncClient() as http:
            await http.post(f"{a}/_emulator/faults", json={"fail_next": 1})
        await pool.refresh_stale(force=True)
        assert [s["circuit"] for s in pool.describe()] == ["open", "closed"]
        await asyncio.sleep(0.3)
        assert {s.client.base_url for s in await pool.candidates("llama3.1:8b")} == {a, b}
        await pool.aclose()


async def test_a_full_queue_answers_busy_quickly() -> None:
    with running_emulator(models=["llama3.1:8b"], token_delay_ms=200) as url:
        pool = BackendPool([f"one={url};max=1"], max_queue=1, queue_timeout=5)
        [state] = pool.states
        holder = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.lease(state):
                holder.set()
                await release.wait()

        async def wait_in_queue() -> None:
            async with pool.lease(state):
                pass

        first = asyncio.create_task(hold())
        await holder.wait()
        queued = asyncio.create_task(wait_in_queue())
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendBusy):
            async with pool.lease(state):
                pass
        assert asyncio.get_running_loop().time() - started < 0.5
        assert pool.describe()[0]["queued"] == 1 and pool.describe()[0]["outstanding"] == 1
        release.set()
        await asyncio.gather(first, queued)
        await pool.aclose()


async def test_a_model_no_backend_has_is_404_with_close_names() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["qwen2.5:0.5b"]) as b,
    ):
        manager = manager_for([a, b])
        result = await ModelRunner(manager).async_generate("llama3.1:7b", "x", save_output=False)
        assert not result.success and result.metadata is not None
        assert result.metadata["error_status"] == 404
        assert "close names: llama3.1:8b" in str(result.error_message)
        await manager.aclose()


async def test_the_watcher_notices_a_backend_that_came_back() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["llama3.1:8b"]) as b,
    ):
        pool = BackendPool([a, b], cooldown=0.1)
        async with httpx.AsyncClient() as http:
            await http.post(f"{a}/_emulator/faults", json={"fail_next": 1})
        watcher = asyncio.create_task(pool.watch(0.05))
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                states = pool.describe()
                if states[0]["circuit"] == "closed" and states[0]["models"]:
                    break
            assert pool.describe()[0]["models"] == ["llama3.1:8b"]
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await pool.aclose()


async def test_pulls_and_deletes_target_one_backend_or_all() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["qwen2.5:0.5b"]) as b,
    ):
        manager = manager_for([f"left={a}", f"right={b}"])
        seen: list[dict[str, object]] = []
        assert await manager.adownload_model("phi3:mini", seen.append, backend="all")
        assert {line["backend"] for line in seen} == {"left", "right"}
        assert await manager.adownload_model("smollm2:135m", backend="right")
        async with httpx.AsyncClient() as http:
            left = [m["name"] for m in (await http.get(f"{a}/api/tags")).json()["models"]]
            right = [m["name"] for m in (await http.get(f"{b}/api/tags")).json()["models"]]
        assert "phi3:mini" in left and "phi3:mini" in right
        assert "smollm2:135m" in right and "smollm2:135m" not in left
        assert await manager.adelete_model("phi3:mini", backend="left")
        assert await manager.adelete_model("phi3:mini")  # the copy on the right
        assert not await manager.adelete_model("phi3:mini")
        with pytest.raises(ValueError, match="no backend named"):
            await manager.adownload_model("phi3:mini", backend="middle")
        await manager.aclose()


async def test_model_locations_name_every_backend_that_has_it() -> None:
    with (
        running_emulator(models=["llama3.1:8b"]) as a,
        running_emulator(models=["llama3.1:8b", "qwen2.5:0.5b"]) as b,
    ):
        manager = manager_for([f"left={a}", f"right={b}"])
        where = await model_locations(manager.pool, force_refresh=False)
        assert where["llama3.1:8b"] == ["left", "right"]
        assert where["qwen2.5:0.5b"] == ["right"]
        await manager.aclose()
