"""A job's runs are charged to the key and the team that started it, though a worker runs
them in a context of its own (the job keeps its owner, and its team as `_team`); the
team reaches the Prometheus counters of the usage observers too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from app.api.common.metrics import Metrics
from app.jobs.service import Jobs
from app.ollama.manager import OllamaManager
from app.ollama.outputs import OutputManager
from app.ollama.usage import run_principal, run_team
from tests.api.conftest import gateway_settings


async def test_a_batch_job_is_charged_to_its_key_and_team(
    emulator_url: str, tmp_path: Path
) -> None:
    settings = gateway_settings([emulator_url], tmp_path, embedded_worker=True)
    outputs = OutputManager(database_url=settings.database_url)
    manager = OllamaManager(
        backends=[emulator_url], settings=settings, output_manager=outputs,
        auto_start_server=False,
    )  # fmt: skip
    metrics = Metrics(lambda: [])
    manager.usage_observers.append(metrics.observe_run)
    jobs = Jobs(manager, settings)
    await jobs.start(run_jobs=True)
    try:
        principal, team = run_principal.set("ana"), run_team.set("search")
        try:
            job = await jobs.asubmit_batch(
                "llama3.1:8b", ["one", "two", "three"], None,
                max_concurrent=2, name=None, owner="ana",
            )  # fmt: skip
        finally:
            run_team.reset(team)
            run_principal.reset(principal)
        for _ in range(300):
            status = (await jobs.aget(job["id"]) or {}).get("status")
            if status in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
        assert status == "succeeded"
        async with outputs.db.session() as session:
            ledger = (
                await session.execute(
                    text(
                        "SELECT principal, team, sum(requests), sum(output_tokens) "
                        "FROM usage_ledger GROUP BY principal, team"
                    )
                )
            ).all()
            stored = (
                await session.execute(text("SELECT count(*), sum(tokens_used) FROM executions"))
            ).one()
    finally:
        await jobs.aclose()
        await manager.aclose()
        await outputs.aclose()
        metrics.close()
    assert [tuple(row) for row in ledger] == [("ana", "search", 3, stored[1])]
    assert stored[0] == 3
    exposed = metrics.registry.get_sample_value(
        "gateway_tokens_total", {"team": "search", "model": "llama3.1:8b", "direction": "output"}
    )
    assert exposed == stored[1] > 0
