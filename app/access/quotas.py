"""Quotas per key and per team: tokens per day and per month, requests per day and backend
seconds per day, in windows of `GATEWAY_QUOTA_TZ`.

Where the counters live (docs/decisions/0004-quotas-and-usage.md): in the database, one
`quota_usage` row per (scope, window), scope `key:NAME` or `team:NAME`, which every replica
adds to with an atomic upsert (`tokens = tokens + delta`). A process does not write per
request: it adds what it charged to its own counters in memory and syncs every
`GATEWAY_QUOTA_SYNC_SECONDS` (its deltas written and the totals read back in one
transaction). A check reads memory only: the totals as last read plus what this process
charged since, so it costs a few dictionary lookups.

What may overshoot a quota:

- within one process, `requests_per_day` never does: a request is counted when it is
  admitted, check and count with no await between them;
- token and backend-time quotas are charged when a run ends (only then are its tokens
  known): the runs already admitted when the quota is reached (in flight) still finish and
  are charged;
- across replicas, what the other replicas charged within the last sync interval is not
  yet seen: at most that much more.

While the database does not answer, checks go on with the counters as last read plus
this process's own charges, and the deltas wait in memory for the next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from app.access.keys import KeyStore
from app.access.principal import QUOTA_FIELDS, Principal, Quotas
from app.ollama.usage import RunUsage, run_principal, run_team
from app.storage.database_user import DatabaseUser
from app.storage.outage import is_outage
from app.storage.quota_repository import QuotaCounters, Used

__all__ = ["Clock", "JobQuotaGate", "QuotaService", "QuotaSpent", "Windows"]

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""What time it is (an aware datetime); tests move it."""

OUTAGE_RETRY_SECONDS = 1.0
"""While the database does not answer, a check reads it at most this often."""

WATCH_SECONDS = 600.0
"""A scope not checked for this long is no longer read back at each sync."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class QuotaSpent(Exception):
    """A key's or a team's quota is spent: `retry_after` seconds until its window ends."""

    def __init__(self, owner: str, quota: str, limit: float, retry_after: int) -> None:
        shown = int(limit) if float(limit).is_integer() else limit
        super().__init__(f"{owner} quota {quota} ({shown}) is spent")
        self.owner = owner
        self.quota = quota
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True)
class Windows:
    """The current day and month in the quota time zone, and when each ends."""

    day: str
    month: str
    day_ends: datetime
    month_ends: datetime
    now: datetime

    @classmethod
    def at(cls, now: datetime, zone: ZoneInfo) -> Windows:
        local = now.astimezone(zone)
        today = local.date()
        tomorrow = today + timedelta(days=1)
        first = today.replace(day=1)
        next_month = (first + timedelta(days=32)).replace(day=1)
        return cls(
            day=f"d:{today.isoformat()}",
            month=f"m:{today:%Y-%m}",
            day_ends=datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone),
            month_ends=datetime(next_month.year, next_month.month, 1, tzinfo=zone),
            now=now,
        )

    def seconds_left(self, quota: str) -> int:
        """Seconds until the window of `quota` ends (at least 1)."""
        end = self.month_ends if quota.endswith("_per_month") else self.day_ends
        return max(1, math.ceil((end - self.now).total_seconds()))

    def period(self, quota: str) -> str:
        return self.month if quota.endswith("_per_month") else self.day


def _used_for(quota: str, used: Used) -> float:
    if quota.startswith("tokens"):
        return used.tokens
    if quota.startswith("requests"):
        return used.requests
    return used.backend_seconds


def _scopes(principal: Principal) -> list[tuple[str, str, Quotas | None]]:
    """(scope, owner as messages name it, quotas) of a key and of its team."""
    scopes = [(f"key:{principal.name}", f"key {principal.name!r}", principal.quotas)]
    if principal.team is not None:
        scopes.append((f"team:{principal.team}", f"team {principal.team!r}", principal.team_quotas))
    return scopes


class QuotaService(DatabaseUser):
    """The quota counters of one process, synced with the database's."""

    def __init__(
        self,
        database_url: str,
        *,
        tz: str = "UTC",
        sync_seconds: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(database_url, name="quotas")
        self.zone = ZoneInfo(tz)
        self.sync_seconds = sync_seconds
        self.clock: Clock = clock or _utc_now
        self._lock = threading.Lock()
        self._read: dict[tuple[str, str], Used] = {}
        """The database's totals as last read (a pair read and found absent: zeros)."""
        self._pending: dict[tuple[str, str], Used] = {}
        """What this process charged and has not yet written."""
        self._writing: dict[tuple[str, str], Used] = {}
        """What this process is writing now (counted until the totals are read back)."""
        self._watched: dict[tuple[str, str], float] = {}
        """Pairs checked lately (monotonic time), read back at each sync."""
        self._retry_at = float("-inf")
        """Until then a check does not wait for the database (it failed a read just now)."""
        self._syncer: asyncio.Task[None] | None = None
        self._sync_lock: asyncio.Lock | None = None
        self._day: tuple[datetime, Windows] | None = None
        """The day last asked about: when it starts, and its windows."""

    # -- the windows and what was used in them -------------------------------------------

    def windows(self) -> Windows:
        """The day and month `now` falls in (worked out again when the day changes: the
        calendar arithmetic in the zone is most of a check's cost)."""
        now = self.clock()
        day = self._day
        if day is None or not day[0] <= now < day[1].day_ends:
            found = Windows.at(now, self.zone)
            self._day = day = (found.day_ends - timedelta(days=1), found)
        calendar = day[1]
        return Windows(calendar.day, calendar.month, calendar.day_ends, calendar.month_ends, now)

    def _used(self, pair: tuple[str, str]) -> Used:
        total = Used()
        for source in (self._read, self._writing, self._pending):
            part = source.get(pair)
            if part is not None:
                total.add(part)
        return total

    def _charge(self, pair: tuple[str, str], delta: Used) -> None:
        with self._lock:
            self._pending.setdefault(pair, Used()).add(delta)

    async def _ensure_read(self, pairs: list[tuple[str, str]]) -> None:
        """Read the pairs never read yet (once per pair and window); a database that does
        not answer leaves them unread (checked against this process's charges only)."""
        now = time.monotonic()
        for pair in pairs:
            self._watched[pair] = now
        if all(p in self._read for p in pairs) or time.monotonic() < self._retry_at:
            return
        if self._sync_lock is None:
            self._sync_lock = asyncio.Lock()
        async with self._sync_lock:  # not while a sync's writes are being read back
            missing = [p for p in pairs if p not in self._read]
            if not missing:
                return
            try:
                await self._prepare()
                async with self.db.session() as session:
                    found = await QuotaCounters(session).read(missing)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._retry_at = time.monotonic() + OUTAGE_RETRY_SECONDS
                logger.warning("the database does not answer: quotas checked on local counts")
                return
            with self._lock:
                for pair in missing:
                    self._read.setdefault(pair, found.get(pair, Used()))

    # -- checks and charges ------------------------------------------------------------

    async def aadmit(self, principal: Principal) -> None:
        """Admit one request of `principal` (it starts runs): `QuotaSpent` naming the first
        quota of the key or its team that is spent; else the request is counted."""
        if principal.anonymous:
            return
        windows = self.windows()
        scopes = _scopes(principal)
        await self._ensure_read(
            [(scope, period) for scope, _, _ in scopes for period in (windows.day, windows.month)]
        )
        # No await from here on: the check and the count are one step for this process.
        for scope, owner, quotas in scopes:
            if quotas is None:
                continue
            for quota, limit in quotas.as_dict().items():
                used = _used_for(quota, self._used((scope, windows.period(quota))))
                if used >= limit:
                    raise QuotaSpent(owner, quota, limit, windows.seconds_left(quota))
        for scope, _, _ in scopes:
            for period in (windows.day, windows.month):
                self._charge((scope, period), Used(requests=1))

    def observe_run(self, usage: RunUsage) -> None:
        """A usage observer (`OllamaManager.usage_observers`): a finished run's tokens and
        backend time charged to the key the context's runs are for and to its team."""
        name = run_principal.get()
        if name is None:
            return
        tokens = usage.prompt_tokens + usage.completion_tokens
        if not tokens and not usage.backend_seconds:
            return
        delta = Used(tokens=tokens, backend_seconds=usage.backend_seconds)
        windows = self.windows()
        team = run_team.get()
        for scope in (f"key:{name}", *((f"team:{team}",) if team is not None else ())):
            for period in (windows.day, windows.month):
                self._charge((scope, period), delta)

    async def astatus(self, principal: Principal) -> dict[str, Any]:
        """The key's quotas and its team's, each with what is used and left in its window."""
        windows = self.windows()
        scopes = _scopes(principal)
        await self._ensure_read(
            [(scope, period) for scope, _, _ in scopes for period in (windows.day, windows.month)]
        )

        def rows(scope: str, quotas: Quotas | None) -> list[dict[str, Any]]:
            limits = quotas.as_dict() if quotas is not None else {}
            out = []
            for quota in QUOTA_FIELDS:
                used = _used_for(quota, self._used((scope, windows.period(quota))))
                limit = limits.get(quota)
                end = windows.month_ends if quota.endswith("_per_month") else windows.day_ends
                out.append(
                    {
                        "quota": quota,
                        "window": windows.period(quota)[2:],
                        "limit": limit,
                        "used": round(used, 3) if isinstance(used, float) else used,
                        "left": None if limit is None else max(0, round(limit - used, 3)),
                        "resets_at": end.astimezone(UTC).isoformat(),
                    }
                )
            return out

        key_scope, _, key_quotas = scopes[0]
        status: dict[str, Any] = {
            "key": {"name": principal.name, "quotas": rows(key_scope, key_quotas)},
            "team": None,
            "time_zone": self.zone.key,
        }
        if len(scopes) > 1:
            team_scope, _, team_quotas = scopes[1]
            status["team"] = {"name": principal.team, "quotas": rows(team_scope, team_quotas)}
        return status

    # -- the sync with the database -----------------------------------------------------

    async def async_once(self) -> None:
        """Write this process's charges and read back the totals of the pairs watched."""
        if self._sync_lock is None:
            self._sync_lock = asyncio.Lock()
        async with self._sync_lock:
            with self._lock:
                writing, self._pending = self._pending, {}
                self._writing = writing
            # Pairs not checked lately, or of a window that has ended, are read no more (a
            # check reads a pair again the first time it needs it).
            cutoff = time.monotonic() - WATCH_SECONDS
            windows = self.windows()
            current = (windows.day, windows.month)
            for pair, at in list(self._watched.items()):
                if at < cutoff or pair[1] not in current:
                    del self._watched[pair]
            for pair in [p for p in self._read if p not in self._watched]:
                del self._read[pair]
            wanted = set(self._watched)
            try:
                await self._prepare()
                async with self.db.session() as session:
                    counters = QuotaCounters(session)
                    if writing:
                        await counters.add(writing, self.clock())
                    found = await counters.read(sorted(wanted))
            except BaseException:
                with self._lock:  # written nothing: the charges wait for the next sync
                    for pair, used in writing.items():
                        self._pending.setdefault(pair, Used()).add(used)
                    self._writing = {}
                raise
            with self._lock:
                for pair in wanted:
                    self._read[pair] = found.get(pair, Used())
                self._writing = {}

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            try:
                await self.async_once()
            except Exception as exc:
                if is_outage(exc):
                    logger.warning("the database does not answer: quota counts wait in memory")
                else:
                    logger.exception("the quota counters could not be synced")

    def start(self) -> None:
        """Sync every `sync_seconds` from now on (on the running loop)."""
        if self._syncer is None:
            self._syncer = asyncio.create_task(self._sync_forever(), name="quota-sync")

    async def aclose(self) -> None:
        """Stop syncing, after writing what was charged (if the database answers)."""
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
        if self._pending:
            try:
                await self.async_once()
            except Exception:
                logger.warning("quota charges not written at close: the database does not answer")
        await super().aclose()


class JobQuotaGate:
    """What the job runner asks before each run of a job: its owner's team, and whether
    the owner's quotas admit one more run (`app.jobs.runner.JobAdmission`)."""

    def __init__(self, keys: KeyStore, quotas: QuotaService) -> None:
        self.keys = keys
        self.quotas = quotas

    async def team_of(self, owner: str | None) -> str | None:
        if owner is None:
            return None
        principal = await self.keys.aprincipal_named(owner)
        return principal.team if principal is not None else None

    async def refusal(self, owner: str | None) -> str | None:
        """None to go on, else why the owner may start no more runs."""
        if owner is None:
            return None
        principal = await self.keys.aprincipal_named(owner)
        if principal is None:
            return None  # revoked since: its job ends as it was started (not this gate's say)
        try:
            await self.quotas.aadmit(principal)
        except QuotaSpent as exc:
            return str(exc)
        return None
