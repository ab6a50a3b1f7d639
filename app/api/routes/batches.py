"""Batches: many prompts on one model with a concurrency limit."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RunnerDep
from app.api.routes.generate import RUN_ERRORS
from app.api.schemas.common import ResultOut
from app.api.schemas.runs import BatchOut, BatchRequest

router = APIRouter(prefix="/gateway/batches", tags=["batches"])


@router.post("", operation_id="run_batch", response_model=BatchOut, responses=RUN_ERRORS)
async def run_batch(body: BatchRequest, runner: RunnerDep) -> BatchOut:
    """Run every prompt (at most `max_concurrent` at once); results in prompt order.

    One prompt's failure is its own failed result and does not stop the others.
    """
    options = body.options.to_execution_options() if body.options else None
    results = await runner.async_run_batch(
        body.model,
        body.prompts,
        options,
        max_concurrent=body.max_concurrent,
        batch_name=body.name,
    )
    batch_ids = {(r.metadata or {}).get("batch_id") for r in results} - {None}
    return BatchOut(
        id=next(iter(batch_ids)) if len(batch_ids) == 1 else None,
        model=body.model,
        results=[ResultOut.from_result(r, (r.metadata or {}).get("result_id")) for r in results],
        succeeded=sum(r.success for r in results),
        failed=sum(not r.success for r in results),
    )
