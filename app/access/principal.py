"""The principal of a request: an API key's name, scope, model allowlist and limits."""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from app.ollama.names import normalize_model_name
from app.settings import Settings

Scope = Literal["admin", "user"]
SCOPES: tuple[Scope, ...] = ("admin", "user")


QUOTA_FIELDS = ("tokens_per_day", "tokens_per_month", "requests_per_day", "backend_seconds_per_day")
"""The quotas a key or a team may have (tokens are prompt and output tokens)."""


@dataclass(frozen=True)
class Quotas:
    """A key's or a team's quotas; None: no such quota. Windows are days and months in
    `GATEWAY_QUOTA_TZ`."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    requests_per_day: int | None = None
    backend_seconds_per_day: float | None = None

    @classmethod
    def of(cls, value: Mapping[str, Any] | None) -> Quotas | None:
        """From a stored or sent object (checked with `check_quotas` first); None for none."""
        if not value:
            return None
        quotas = cls(**{k: v for k, v in value.items() if k in QUOTA_FIELDS})
        return quotas if quotas.as_dict() else None

    def as_dict(self) -> dict[str, int | float]:
        """The quotas that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def check_quotas(value: object) -> dict[str, int | float] | None:
    """A `quotas` object as sent (JSON): the quotas that are set, or None for none.

    ValueError naming the field for an unknown quota, a negative one, or one that is not
    a number (tokens and requests: whole numbers)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("quotas must be an object")
    clean: dict[str, int | float] = {}
    for name, limit in value.items():
        if name not in QUOTA_FIELDS:
            raise ValueError(f"quotas.{name} is not a quota (quotas: {', '.join(QUOTA_FIELDS)})")
        if limit is None:
            continue
        whole = name != "backend_seconds_per_day"
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise ValueError(f"quotas.{name} must be a number, got {limit!r}")
        if whole and isinstance(limit, float) and not limit.is_integer():
            raise ValueError(f"quotas.{name} must be a whole number, got {limit!r}")
        if limit < 0 or limit > 10**15 or limit != limit:
            raise ValueError(f"quotas.{name} must be between 0 and 10^15, got {limit!r}")
        clean[name] = int(limit) if whole else float(limit)
    return clean or None


@dataclass(frozen=True)
class Principal:
    """Who is asking. `models` holds glob patterns (`llama3*`); None allows every model."""

    name: str
    scope: Scope
    key_id: str | None = None
    team: str | None = None
    """The key's team (None: the key belongs to no team)."""
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    quotas: Quotas | None = None
    """The key's own quotas (None: none)."""
    team_models: tuple[str, ...] | None = None
    """The team's model allowlist, which narrows the key's own (None: any model)."""
    team_quotas: Quotas | None = None
    """The team's quotas, shared by its keys (None: none)."""

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    def allows(self, model: str) -> bool:
        """True when `model` (any spelling: `x` is `x:latest`) matches one of the key's
        patterns and one of its team's."""
        if self.models is None and self.team_models is None:
            return True
        names = {model.lower()}
        with contextlib.suppress(ValueError):
            names.add(normalize_model_name(model).lower())
        return all(
            patterns is None
            or any(fnmatch.fnmatchcase(n, p.lower()) for n in names for p in patterns)
            for patterns in (self.models, self.team_models)
        )

    def denied(self, models: Sequence[str]) -> list[str]:
        return [m for m in models if not self.allows(m)]


ANONYMOUS = Principal(name="anonymous", scope="admin")
"""Who a request is when no keys are needed (a gateway on loopback with no keys)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; False for 0.0.0.0 and any other address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def anonymous_allowed(settings: Settings) -> bool:
    """Whether requests without a key are served while no key exists.

    Never with `require_auth`; otherwise when bound to loopback, or when
    `allow_anonymous` says so explicitly.
    """
    if settings.require_auth:
        return False
    return is_loopback(settings.host) or settings.allow_anonymous
