"""Nothing is lost: concurrent saves from tasks, threads and processes; saves from
cancelled callers; several managers and processes meeting one new database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from app.ollama import ConfigManager, ModelExecutionResult, OutputManager
from app.storage import migrations

ROOT = Path(__file__).resolve().parents[2]


def result(i: int, *, cancelled: bool = False) -> ModelExecutionResult:
    return ModelExecutionResult(
        model_name="llama3.1:8b",
        prompt=f"prompt {i}",
        response="" if cancelled else f"response {i}",
        execution_time=0.01,
        tokens_used=i,
        success=not cancelled,
        error_message="cancelled before the run finished" if cancelled else None,
        metadata={"status": "cancelled", "partial_response": "half"} if cancelled else {},
    )


@pytest.fixture
def outputs(db_url: str) -> Iterator[OutputManager]:
    manager = OutputManager(database_url=db_url)
    yield manager
    manager.close()


def test_two_hundred_concurrent_saves_from_tasks_and_threads_are_all_kept(
    outputs: OutputManager,
) -> None:
    """150 saves gathered on one loop while 8 threads make 50 sync saves (those go through
    the manager's private loop: a second engine on the same database)."""

    async def on_a_loop() -> list[str]:
        try:
            return list(
                await asyncio.gather(
                    *(outputs.arecord_execution(result(i), kind="generate") for i in range(150))
                )
            )
        finally:
            await outputs.db.dispose()

    with ThreadPoolExecutor(max_workers=8) as pool:
        from_threads = [
            pool.submit(outputs.save_execution_result, result(i)) for i in range(150, 200)
        ]
        ids = asyncio.run(on_a_loop()) + [f.result() for f in from_threads]
    assert len(set(ids)) == 200
    stored = outputs.list_saved_outputs(output_type="results")
    assert {r["id"] for r in stored} == set(ids)
    assert sorted(r["prompt"] for r in stored) == sorted(f"prompt {i}" for i in range(200))


def test_a_save_awaited_by_a_cancelled_caller_still_lands(outputs: OutputManager) -> None:
    """The gateway stores a stream's partial result from a `finally` after the client left:
    inside an anyio cancel scope (as Starlette cancels) every await is cancelled."""
    run = result(1, cancelled=True)

    async def disconnected_client() -> None:
        try:
            with anyio.CancelScope() as scope:
                try:
                    scope.cancel()
                    await anyio.sleep(1)
                finally:
                    await outputs.arecord_execution(run, kind="stream")
            await outputs.aclose()
        finally:
            await outputs.db.dispose()

    asyncio.run(disconnected_client())
    [stored] = outputs.list_saved_outputs(output_type="results")
    assert stored["status"] == "cancelled" and stored["kind"] == "stream"
    assert stored["metadata"]["partial_response"] == "half"
    assert run.metadata is not None and run.metadata["result_id"] == stored["id"]


def test_a_cancelled_save_task_is_finished_by_aclose(outputs: OutputManager) -> None:
    async def cancel_midway() -> None:
        task = asyncio.create_task(outputs.arecord_execution(result(2), kind="generate"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await outputs.aclose()

    asyncio.run(cancel_midway())
    assert [r["prompt"] for r in outputs.list_saved_outputs(output_type="results")] == ["prompt 2"]


def test_managers_meeting_a_new_database_at_once_create_it_once(empty_db_url: str) -> None:
    outputs = OutputManager(database_url=empty_db_url)
    config = ConfigManager(database_url=empty_db_url)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            saves = [pool.submit(outputs.save_execution_result, result(i)) for i in range(3)]
            updates = [pool.submit(config.update_config, max_concurrent=4) for _ in range(2)]
            assert all(f.result() for f in saves + updates)
        assert migrations.is_up_to_date(empty_db_url)
        assert len(outputs.list_saved_outputs()) == 3
    finally:
        outputs.close()
        config.close()


def test_processes_upgrading_one_new_database_at_once_all_succeed(empty_db_url: str) -> None:
    # Each process imports first, then all start upgrading at the same moment.
    code = (
        "import sys, time; from app.storage.migrations import upgrade; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); upgrade(sys.argv[1])"
    )
    start = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_db_url, str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)
    assert migrations.is_up_to_date(empty_db_url)


async def test_concurrent_saves_share_transactions_and_a_bad_row_fails_alone(
    outputs: OutputManager,
) -> None:
    """Runs stored together go in shared transactions (group commit); a row that breaks
    its batch (a link to a batch that does not exist) fails only its own save."""

    async def save(i: int) -> str | BaseException:
        link = {"batch_id": "no-such-batch"} if i == 17 else {}
        try:
            return await outputs.arecord_execution(result(i), kind="generate", **link)
        except Exception as exc:  # the one bad row
            return exc

    saved = await asyncio.gather(*(save(i) for i in range(60)))
    failed = [s for s in saved if isinstance(s, BaseException)]
    assert len(failed) == 1 and saved[17] is failed[0]
    ids = [s for s in saved if isinstance(s, str)]
    assert len(set(ids)) == 59
    stored = {item["prompt"] for item in (await outputs.alist_results(limit=500))[0]}
    assert stored == {f"prompt {i}" for i in range(60) if i != 17}
