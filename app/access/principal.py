"""The principal of a request: an API key's name, scope, model allowlist and limits."""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from app.ollama.names import normalize_model_name
from app.settings import Settings

Scope = Literal["admin", "user"]
SCOPES: tuple[Scope, ...] = ("admin", "user")


@dataclass(frozen=True)
class Principal:
    """Who is asking. `models` holds glob patterns (`llama3*`); None allows every model."""

    name: str
    scope: Scope
    key_id: str | None = None
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    def allows(self, model: str) -> bool:
        """True when `model` (any spelling: `x` is `x:latest`) matches one of the patterns."""
        if self.models is None:
            return True
        names = {model.lower()}
        with contextlib.suppress(ValueError):
            names.add(normalize_model_name(model).lower())
        return any(fnmatch.fnmatchcase(n, p.lower()) for n in names for p in self.models)

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
