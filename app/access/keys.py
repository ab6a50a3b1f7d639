"""API keys: created (shown once), listed, revoked; only their SHA-256 is stored.

A key is `ogw_` and 43 URL-safe characters (256 random bits). Looking a key up goes by
its SHA-256 through a unique index, and the stored digest is compared again with
`hmac.compare_digest`: no comparison of the key itself whose time depends on how much of
it is right. Lookups are cached for `cache_seconds` per process, so a key revoked by
another process (the `keys revoke` command) stops working within that time; revoking
through this process's `revoke` takes effect at once.

While the database does not answer, the last verdict on a key stands if it was fresh
(looked up within `cache_seconds`) when the database last answered: a key in use before an
outage keeps working through it, and so does "no key exists" (anonymous loopback access).
A key not seen for longer cannot be checked: `DatabaseUnavailable` (503, retry later).

A deployment can also bring its own admin key (`GATEWAY_ADMIN_KEY`): `aensure_bootstrap_key`
stores it at start like any key, once, however many replicas start at the same moment.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.access.principal import SCOPES, Principal, Quotas, Scope, check_quotas
from app.settings import KEY_PREFIX, api_key_problem
from app.storage.database_user import DatabaseUser
from app.storage.outage import DatabaseUnavailable, is_outage
from app.storage.quota_repository import Teams
from app.storage.repositories import ApiKeys, new_id
from app.storage.tables import ApiKey, Team

__all__ = [
    "BOOTSTRAP_KEY_NAME",
    "KEY_PREFIX",
    "UNSET",
    "BootstrapOutcome",
    "KeyStore",
    "NewKey",
    "UnknownTeam",
    "hash_key",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BOOTSTRAP_KEY_NAME = "bootstrap-admin"

BootstrapOutcome = Literal["created", "exists", "revoked"]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


class _Unset:
    """A field an update leaves as it is."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class UnknownTeam(LookupError):
    """A key was given a team that does not exist."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_dict(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "scope": row.scope,
        "prefix": row.prefix,
        "models": row.models,
        "requests_per_minute": row.requests_per_minute,
        "tokens_per_minute": row.tokens_per_minute,
        "team": row.team,
        "quotas": row.quotas,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


@dataclass(frozen=True)
class NewKey:
    """A key just created: `key` is the only time the secret is seen."""

    key: str
    record: dict[str, Any]


def _principal(row: ApiKey, team: Team | None) -> Principal:
    scope: Scope = "admin" if row.scope == "admin" else "user"
    return Principal(
        name=row.name,
        scope=scope,
        key_id=row.id,
        team=row.team,
        models=tuple(row.models) if row.models is not None else None,
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        quotas=Quotas.of(row.quotas),
        team_models=tuple(team.models) if team is not None and team.models is not None else None,
        team_quotas=Quotas.of(team.quotas) if team is not None else None,
    )


async def _with_team(keys: ApiKeys, row: ApiKey | None) -> Principal | None:
    """The principal of a key row (its team read with it), None for no row."""
    if row is None:
        return None
    team = await Teams(keys.session).named(row.team) if row.team is not None else None
    return _principal(row, team)


class _Outage(Exception):
    """A lookup found the database not answering (its cause, when it tried)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__("the database does not answer")
        self.__cause__ = cause


class KeyStore(DatabaseUser):
    """The API keys of one database."""

    OUTAGE_RETRY_SECONDS = 1.0
    """While the database does not answer, lookups try it again at most this often."""

    def __init__(self, database_url: str, *, cache_seconds: float = 5.0) -> None:
        super().__init__(database_url, name="key-store")
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._named: dict[str, tuple[float, Principal | None]] = {}
        self._count: tuple[float, int] | None = None
        self._answered_at = float("-inf")
        """When the newest lookup that the database answered was made."""
        self._retry_at = float("-inf")
        """Until then the database is taken to be down (it failed a lookup just now)."""

    def _fresh(self, at: float | None, now: float) -> bool:
        return at is not None and now - at <= self.cache_seconds

    async def _lookup(self, query: Callable[[ApiKeys], Awaitable[T]], at: float) -> T:
        """Run `query` (a lookup made at `at`); `_Outage` when the database does not answer."""
        if time.monotonic() < self._retry_at:
            raise _Outage(None)
        try:
            await self._prepare()
            async with self.db.session() as session:
                value = await query(ApiKeys(session))
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._retry_at = time.monotonic() + self.OUTAGE_RETRY_SECONDS
            raise _Outage(exc) from exc
        self._answered_at = max(self._answered_at, at)
        return value

    def _stale_usable(self, at: float | None) -> bool:
        """During an outage: whether a verdict made at `at` was fresh when the database
        last answered."""
        return at is not None and self._answered_at - at <= self.cache_seconds

    @staticmethod
    def _unavailable(what: str) -> DatabaseUnavailable:
        logger.warning("the database does not answer: %s cannot be checked", what)
        return DatabaseUnavailable(f"the database does not answer: {what} cannot be checked")

    def forget(self) -> None:
        """Drop what this process cached (a key or a team changed)."""
        self._forget()

    def _forget(self) -> None:
        """Drop what this process cached (a key or a team changed)."""
        self._cache.clear()
        self._named.clear()
        self._count = None

    async def acreate(
        self,
        name: str,
        scope: str,
        *,
        models: Sequence[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        team: str | None = None,
        quotas: dict[str, Any] | None = None,
    ) -> NewKey:
        """A new key. ValueError for a bad name, scope, pattern or quota, or a name in use;
        `UnknownTeam` for a team that does not exist."""
        if not NAME_PATTERN.match(name):
            raise ValueError(
                "name must be 1-100 letters, digits or . _ @ - (starting with a letter or digit)"
            )
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        patterns = None
        if models is not None:
            patterns = [m.strip() for m in models if m.strip()]
            if not patterns or any(len(p) > 200 for p in patterns):
                raise ValueError("models must be one or more glob patterns such as 'llama3*'")
        for limit in (requests_per_minute, tokens_per_minute):
            if limit is not None and limit < 1:
                raise ValueError("rate limits must be positive numbers per minute")
        clean_quotas = check_quotas(quotas)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id=new_id(),
            name=name,
            scope=scope,
            key_hash=hash_key(key),
            prefix=key[:12],
            models=patterns,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            team=team,
            quotas=clean_quotas,
            created_at=datetime.now(UTC),
        )
        await self._prepare()
        async with self.db.session() as session:
            keys = ApiKeys(session)
            if await keys.active_named(name) is not None:
                raise ValueError(f"an active key named {name!r} exists; revoke it first")
            if team is not None and await Teams(session).named(team) is None:
                raise UnknownTeam(f"team: no team named {team!r} (create it first)")
            await keys.add(row)
        self._forget()
        return NewKey(key=key, record=key_dict(row))

    async def aensure_bootstrap_key(
        self, key: str, *, name: str = BOOTSTRAP_KEY_NAME
    ) -> BootstrapOutcome:
        """Store `key` as an admin key unless a key with its hash is stored already.

        `created`: stored now (hashed, like any key); `exists`: an active key has it (an
        earlier start, or another replica starting at the same moment: the unique hash
        decides, and the loser finds the winner's row); `revoked`: it was revoked, and a
        revoked key stays revoked (restarting with it in the environment does not bring it
        back). ValueError, never quoting the key, when it does not look like a key.
        """
        problem = api_key_problem(key)
        if problem is not None:
            raise ValueError(f"the admin key is not a usable API key: {problem}")
        digest = hash_key(key)
        await self._prepare()
        outcome = await self._stored_state(digest)
        if outcome is None:
            row = ApiKey(
                id=new_id(),
                name=name,
                scope="admin",
                key_hash=digest,
                prefix=key[:12],
                models=None,
                requests_per_minute=None,
                tokens_per_minute=None,
                created_at=datetime.now(UTC),
            )
            try:
                async with self.db.session() as session:
                    await ApiKeys(session).add(row)
            except IntegrityError:
                # Another process stored the same hash between our look and our insert.
                outcome = await self._stored_state(digest)
                if outcome is None:
                    raise
            else:
                outcome = "created"
                self._forget()
                logger.info("stored the admin key from the environment as %r (id %s)", name, row.id)
        if outcome == "revoked":
            logger.warning(
                "the admin key from the environment (GATEWAY_ADMIN_KEY) was revoked; it stays "
                "revoked: set a new one or create a key with `ollama-gateway keys create`"
            )
        return outcome

    async def _stored_state(self, digest: str) -> BootstrapOutcome | None:
        """`exists` or `revoked` for a stored key with this hash, None for none."""
        async with self.db.session() as session:
            query = select(ApiKey.revoked_at).where(ApiKey.key_hash == digest)
            rows = (await session.execute(query)).all()
        if not rows:
            return None
        return "exists" if any(r.revoked_at is None for r in rows) else "revoked"

    async def alist(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        await self._prepare()
        async with self.db.session() as session:
            return [key_dict(r) for r in await ApiKeys(session).all(include_revoked)]

    async def aupdate(
        self, key_id_or_name: str, *, team: str | None = UNSET, quotas: Any = UNSET
    ) -> dict[str, Any] | None:
        """Set an active key's team (None: no team) and/or quotas (None: none); fields left
        UNSET stay as they are. None when there is no such active key; ValueError for a bad
        quota, `UnknownTeam` for a team that does not exist."""
        clean_quotas = check_quotas(quotas) if quotas is not UNSET else UNSET
        await self._prepare()
        async with self.db.session() as session:
            keys = ApiKeys(session)
            row = await keys.active(key_id_or_name)
            if row is None:
                return None
            if team is not UNSET:
                if team is not None and await Teams(session).named(team) is None:
                    raise UnknownTeam(f"team: no team named {team!r} (create it first)")
                row.team = team
            if clean_quotas is not UNSET:
                row.quotas = clean_quotas
            await session.flush()
            record = key_dict(row)
        self._forget()
        return record

    async def aprincipal_named(self, name: str) -> Principal | None:
        """The principal of the active key with this name (a job's owner), cached like
        lookups; None when there is none. `DatabaseUnavailable` when it cannot be read."""
        now = time.monotonic()
        cached = self._named.get(name)
        if cached is not None and self._fresh(cached[0], now):
            return cached[1]

        async def by_name(keys: ApiKeys) -> Principal | None:
            return await _with_team(keys, await keys.active_named(name))

        try:
            principal = await self._lookup(by_name, now)
        except _Outage as outage:
            if cached is None or not self._stale_usable(cached[0]):
                raise self._unavailable("the job's API key") from outage.__cause__
            return cached[1]
        if len(self._named) > 10_000:
            self._named.clear()
        self._named[name] = (now, principal)
        return principal

    async def arevoke(self, key_id_or_name: str) -> dict[str, Any] | None:
        """Revoke an active key by id or name; None when there is no such active key."""
        await self._prepare()
        async with self.db.session() as session:
            row = await ApiKeys(session).revoke(key_id_or_name, datetime.now(UTC))
            record = key_dict(row) if row is not None else None
        self._forget()
        return record

    async def ahas_keys(self) -> bool:
        """Whether any active key exists (cached like lookups, also through an outage)."""
        now = time.monotonic()
        count = self._count
        if count is None or not self._fresh(count[0], now):
            try:
                self._count = count = (now, await self._lookup(ApiKeys.count_active, now))
            except _Outage as outage:
                if count is None or not self._stale_usable(count[0]):
                    raise self._unavailable("whether any API key exists") from outage.__cause__
        return count[1] > 0

    async def aauthenticate(self, key: str) -> Principal | None:
        """The principal of an active key, or None for an unknown or revoked one."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and self._fresh(cached[0], now):
            return cached[1]

        async def by_hash(keys: ApiKeys) -> Principal | None:
            row = await keys.by_hash(digest)
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                return None
            return await _with_team(keys, row)

        try:
            principal = await self._lookup(by_hash, now)
        except _Outage as outage:
            if cached is None or not self._stale_usable(cached[0]):
                raise self._unavailable("the API key") from outage.__cause__
            return cached[1]
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    # -- sync doors, for the command line ----------------------------------------------

    def create(
        self,
        name: str,
        scope: str,
        *,
        models: Sequence[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        team: str | None = None,
        quotas: dict[str, Any] | None = None,
    ) -> NewKey:
        return self._run(
            self.acreate(
                name,
                scope,
                models=models,
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                team=team,
                quotas=quotas,
            )
        )

    def ensure_bootstrap_key(self, key: str, *, name: str = BOOTSTRAP_KEY_NAME) -> BootstrapOutcome:
        return self._run(self.aensure_bootstrap_key(key, name=name))

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        return self._run(self.alist(include_revoked))

    def revoke(self, key_id_or_name: str) -> dict[str, Any] | None:
        return self._run(self.arevoke(key_id_or_name))
