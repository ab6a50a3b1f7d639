"""The usage ledger's rows as the API reads them, and the usage of runs nobody stores (the
table and its writes: `app.storage.usage_ledger`).

`unstored_usage` adds a run nobody stores (an embedding, a run with `save_output=False`)
to in-memory totals, which `UsageLedger.aflush` adds to the ledger; `usage_rows`
turns the ledger's sums per hour, group and model into the API's rows: by hour or day,
each priced when prices are set (a row of a team spans models of different prices, so
each model's part is priced before they are added up).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from app.ollama.types import ModelExecutionResult
from app.settings import Prices
from app.storage.usage_ledger import COUNTS, UsageTotals, hour_of

__all__ = ["Bucket", "unstored_usage", "usage_rows"]

Bucket = Literal["hour", "day"]


def _seconds(value: object) -> float:
    return value / 1e9 if isinstance(value, int | float) and value > 0 else 0.0


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def unstored_usage(totals: UsageTotals, result: ModelExecutionResult) -> None:
    """Add what `result` (a finished run nobody stores) used to `totals`."""
    meta = result.metadata or {}
    team, principal = meta.get("team"), meta.get("principal")
    totals.add(
        at=datetime.now(UTC),
        principal=principal if isinstance(principal, str) else None,
        team=team if isinstance(team, str) else None,
        model=result.model_name,
        backend=str(meta["backend"]) if meta.get("backend") else None,
        surface=str(meta.get("surface") or "gateway"),
        success=bool(result.success),
        prompt_tokens=_count(meta.get("prompt_eval_count")),
        output_tokens=_count(result.tokens_used),
        backend_seconds=_seconds(meta.get("total_duration")),
        load_seconds=_seconds(meta.get("load_duration")),
    )


def usage_rows(
    sums: Iterable[Sequence[Any]],
    group_by: str,
    bucket: Bucket,
    prices: Prices | None = None,
) -> list[dict[str, Any]]:
    """The API's rows from the ledger's sums, each `(hour, group, [model,] *COUNTS)` as
    `app.storage.usage_ledger.usage_query` selects them, in its order."""
    field = group_by
    rows: dict[tuple[datetime, str], dict[str, Any]] = {}
    for record in sums:
        hour, group = record[0], record[1]
        model = group if group_by == "model" else record[2]
        counts = record[2:] if group_by == "model" else record[3:]
        start = hour_of(hour)
        if bucket == "day":
            start = start.replace(hour=0)
        row = rows.get((start, group))
        if row is None:
            row = rows[(start, group)] = {
                "bucket": start.isoformat().replace("+00:00", "Z"),
                field: group or None,
                **{c: 0 for c in COUNTS},
            }
            if prices is not None:
                row["cost"] = 0.0
        for name, value in zip(COUNTS, counts, strict=True):
            row[name] += value or 0
        if prices is not None:
            price = prices.price_of(model)
            if price is not None:
                prompt, output, seconds = counts[2] or 0, counts[3] or 0, counts[4] or 0
                row["cost"] += price.cost(prompt, output, seconds)
    out = [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1]))]
    for row in out:
        for name in ("requests", "failures", "prompt_tokens", "output_tokens"):
            row[name] = int(row[name])
        for name in ("backend_seconds", "load_seconds"):
            row[name] = round(float(row[name]), 6)
        if "cost" in row:
            row["cost"] = round(row["cost"], 6)
    return out
