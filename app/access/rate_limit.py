"""Token buckets per API key: requests per minute and tokens per minute.

Each limit is a bucket holding up to one minute's allowance, refilled continuously. A
request takes one request token up front and is refused (`RateLimited`, 429 with
`Retry-After`) when none is left, or when the key's token bucket is empty. Tokens are
charged when a run finishes, by what it used; a large run may take the bucket below zero,
and the key then waits until it has refilled.

`MemoryRateLimiter` keeps the buckets in this process; `RedisRateLimiter` keeps them in
Redis, updated by one Lua script (atomic, on Redis's clock), so several gateway replicas
enforce one limit together; while Redis does not answer, requests pass (and a warning is
logged) rather than all being refused.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from app.access.principal import Principal

__all__ = ["MemoryRateLimiter", "RateLimited", "RateLimiter", "RedisRateLimiter"]

logger = logging.getLogger(__name__)


class RateLimited(Exception):
    """A key is over one of its limits; try again in `retry_after` seconds."""

    def __init__(self, what: str, limit: int, retry_after: float) -> None:
        super().__init__(f"rate limit of {limit} {what} per minute reached")
        self.what = what
        self.limit = limit
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimiter(Protocol):
    async def acquire(self, principal: Principal) -> None:
        """Take one request; raise `RateLimited` when the key may not make one now."""

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        """Count tokens a finished run used against the key's token limit."""

    async def aclose(self) -> None: ...


@dataclass
class _Bucket:
    level: float
    at: float


class MemoryRateLimiter:
    """Buckets in this process (one gateway process, or limits per replica)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _take(self, key: tuple[str, str], per_minute: int, cost: float, strict: bool) -> float:
        """Take `cost`; returns 0, or the seconds to wait when `strict` and too few are left."""
        now = time.monotonic()
        rate = per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(level=float(per_minute), at=now)
        bucket.level = min(float(per_minute), bucket.level + (now - bucket.at) * rate)
        bucket.at = now
        if strict and bucket.level < max(cost, 1e-9):
            return (max(cost, 1.0) - bucket.level) / rate
        bucket.level -= cost
        return 0.0

    async def acquire(self, principal: Principal) -> None:
        if principal.key_id is None:
            return
        tpm = principal.tokens_per_minute
        if tpm is not None:
            wait = self._take((principal.key_id, "tokens"), tpm, 0.0, strict=True)
            if wait:
                raise RateLimited("tokens", tpm, wait)
        rpm = principal.requests_per_minute
        if rpm is not None:
            wait = self._take((principal.key_id, "requests"), rpm, 1.0, strict=True)
            if wait:
                raise RateLimited("requests", rpm, wait)

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.key_id is not None and principal.tokens_per_minute and tokens > 0:
            self._take((principal.key_id, "tokens"), principal.tokens_per_minute, tokens, False)

    async def aclose(self) -> None:
        self._buckets.clear()


# KEYS[1]: the bucket. ARGV: per_minute, cost, strict (1/0), key lifetime in ms.
# Returns {1, 0} when taken, {0, wait_ms} when refused.
_TAKE = """
local per_minute = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local strict = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = per_minute / 60
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or per_minute
local at = tonumber(state[2]) or now
level = math.min(per_minute, level + math.max(0, now - at) * rate)
local need = math.max(cost, 1)
if strict and level < math.max(cost, 0.000000001) then
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {0, math.ceil((need - level) / rate * 1000)}
end
level = level - cost
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, 0}
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every gateway process that uses the same `url`."""

    def __init__(self, url: str, prefix: str = "ollama-gateway:rate") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)
        self._take = self._redis.register_script(_TAKE)
        self.prefix = prefix

    async def _take_from(
        self, key_id: str, what: str, per_minute: int, cost: float, strict: bool
    ) -> float:
        """Seconds to wait (0: taken). Redis unreachable: logged, and the request passes
        (a limiter outage must not stop every request; the audit log still sees them)."""
        from redis.exceptions import RedisError

        lifetime_ms = 120_000 + int(60_000 * max(cost, 1) / per_minute)
        try:
            taken, wait_ms = await self._take(
                keys=[f"{self.prefix}:{key_id}:{what}"],
                args=[per_minute, cost, "1" if strict else "0", lifetime_ms],
            )
        except (RedisError, OSError) as exc:
            logger.warning("rate limits not enforced: Redis did not answer (%s)", exc)
            return 0.0
        return 0.0 if int(taken) else int(wait_ms) / 1000

    async def acquire(self, principal: Principal) -> None:
        if principal.key_id is None:
            return
        tpm = principal.tokens_per_minute
        if tpm is not None:
            wait = await self._take_from(principal.key_id, "tokens", tpm, 0, strict=True)
            if wait:
                raise RateLimited("tokens", tpm, wait)
        rpm = principal.requests_per_minute
        if rpm is not None:
            wait = await self._take_from(principal.key_id, "requests", rpm, 1, strict=True)
            if wait:
                raise RateLimited("requests", rpm, wait)

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.key_id is not None and principal.tokens_per_minute and tokens > 0:
            await self._take_from(
                principal.key_id, "tokens", principal.tokens_per_minute, tokens, strict=False
            )

    async def aclose(self) -> None:
        await self._redis.aclose()
