"""Who may do what: API keys, the principal of a request, rate limits and the audit log."""

from app.access.audit import AuditWriter
from app.access.audit_store import AuditStore
from app.access.keys import KeyStore, NewKey
from app.access.principal import ANONYMOUS, Principal, Scope, anonymous_allowed, is_loopback
from app.access.rate_limit import MemoryRateLimiter, RateLimited, RateLimiter, RedisRateLimiter

__all__ = [
    "ANONYMOUS",
    "AuditStore",
    "AuditWriter",
    "KeyStore",
    "MemoryRateLimiter",
    "NewKey",
    "Principal",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
    "Scope",
    "anonymous_allowed",
    "is_loopback",
]
