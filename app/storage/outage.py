"""Telling a database outage from the database refusing a statement.

An outage is the database not answering at all: no connection (refused, reset, timed
out, a name that does not resolve), a server shutting down or starting up, a connection
cut in the middle of a transaction, a pool that hands out no connection. Then nothing is
wrong with the request, and trying again later will work: the gateway spools results
(`app.storage.spool`) and answers other requests that need the database with 503 and
`Retry-After`. Anything else (a constraint, a value the database refuses, a bug) is not
an outage and is handled as before.
"""

from __future__ import annotations

import errno
import socket
import sys

import asyncpg
from sqlalchemy import exc as sa_exc

__all__ = [
    "OUTAGE_TYPES",
    "DatabaseUnavailable",
    "SpoolFull",
    "is_outage",
]

OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
"""Admin shutdown, crash shutdown, cannot connect now (starting up, shutting down), too
many connections; with every state of class 08 (connection exception)."""


class DatabaseUnavailable(Exception):
    """The database does not answer and what was asked needs it: retry later (503)."""

    retry_after = 5
    """Seconds a client is told to wait (`Retry-After`)."""


class SpoolFull(DatabaseUnavailable):
    """The database does not answer and the spool that would keep a result until it
    does is full (`GATEWAY_SPOOL_MAX_BYTES`)."""


OUTAGE_TYPES: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    OSError,
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
"""Every exception class an outage can surface as (`is_outage` tells which are one): an
exception handler registered for these sees each of them."""


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, what it wraps (`orig`) and what it was raised from, each once (not what it
    was raised while handling: that may be any earlier, unrelated error)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [getattr(current, "orig", None), current.__cause__]
    return seen


NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "EHOSTDOWN",
                 "ENETUNREACH", "ENETDOWN", "ETIMEDOUT", "EPIPE")
    if hasattr(errno, name)
)  # fmt: skip


def _is_network_error(exc: BaseException) -> bool:
    """A connection that could not be made or was lost; not a file's error (a missing
    file, a permission), which is an `OSError` too."""
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError):
        return exc.errno in NETWORK_ERRNOS or type(exc) is OSError  # "Multiple exceptions"
    return False


def _is_outage_one(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseUnavailable | sa_exc.TimeoutError) or _is_network_error(exc):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
        return True
    psycopg = sys.modules.get("psycopg")  # the job queue's driver, when it is in use
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return True  # no connection, or the server went away (or shuts down, is full)
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return isinstance(state, str) and (state.startswith("08") or state in OUTAGE_SQLSTATES)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the database does not answer."""
    return any(_is_outage_one(e) for e in _chain(exc))
