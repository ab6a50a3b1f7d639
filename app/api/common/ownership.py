"""Who may read what was stored: the ownership rule for results, reports and jobs.

A stored run, a report (batch, benchmark, comparison) and a job belong to the API key that
made them (its name; None when anonymous). Admins read everything; a user key reads only
what it made. On top of that, what a reader sees is cut to the reader's model allowlist:
a run, batch or benchmark of a model the key may not use is not found, and a comparison
keeps only the models the key may use, in its runs and in its report.
"""

from __future__ import annotations

from typing import Any

from app.access import Principal

__all__ = ["may_read", "owner_of", "readable_report", "readable_result"]


def owner_of(principal: Principal) -> str | None:
    """The owner a reader is limited to: None (everything) for an admin, else the key."""
    return None if principal.is_admin else principal.name


def may_read(principal: Principal, owner: str | None) -> bool:
    """Whether `principal` may read something made by `owner`."""
    return principal.is_admin or owner == principal.name


def readable_result(item: dict[str, Any], principal: Principal) -> bool:
    """Whether `principal` may read this stored run."""
    return may_read(principal, item.get("principal")) and principal.allows(
        str(item.get("model_name"))
    )


def readable_report(item: dict[str, Any], principal: Principal) -> dict[str, Any] | None:
    """The report as `principal` may read it, or None when it may read none of it."""
    if principal.models is None and principal.team_models is None:
        return item
    model = item.get("model")
    if isinstance(model, str) and not principal.allows(model):
        return None
    item = dict(item)
    if isinstance(item.get("models"), list):
        item["models"] = [m for m in item["models"] if principal.allows(str(m))]
    if isinstance(item.get("runs"), list):
        item["runs"] = [r for r in item["runs"] if principal.allows(str(r.get("model_name")))]
    report = item.get("report")
    if item.get("type") == "comparison" and isinstance(report, dict):
        report = dict(report)
        if isinstance(report.get("results"), dict):
            report["results"] = {
                m: r for m, r in report["results"].items() if principal.allows(str(m))
            }
        item["report"] = report
    return item
