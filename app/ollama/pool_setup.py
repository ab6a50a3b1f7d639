"""The options of a core's own `BackendPool`, read from the settings."""

from __future__ import annotations

from typing import Any

from app.backends.placement import parse_placement
from app.backends.prefix import SessionHomes
from app.ollama.names import model_key
from app.settings import Settings

__all__ = ["pool_options"]


def pool_options(settings: Settings) -> dict[str, Any]:
    """The `BackendPool` options `settings` set, for a core's own pool."""
    return {
        "timeout": settings.request_timeout,
        "connect_timeout": settings.connect_timeout,
        "health_timeout": settings.health_timeout,
        "transport": settings.http_transport,
        "batch_share": settings.batch_share,
        "model_key": model_key,
        "placement": parse_placement(settings.placement),
        "keep_warm": settings.keep_warm,
        "prefix_routing": settings.prefix_routing,
        "prefix_entries": settings.prefix_index_max_entries,
        "sessions": SessionHomes(settings.prefix_max_sessions),
        "load_sample_interval": settings.load_sample_interval,
    }
