"""The fleet's run-time administration: backends added and removed, placement rules, kept
in the database and laid over the pool; what the backends are doing."""

from app.fleet.fleet import API_TOKEN_ENV_PREFIX, Fleet, api_backend_spec
from app.fleet.status import BackendLoad

__all__ = ["API_TOKEN_ENV_PREFIX", "BackendLoad", "Fleet", "api_backend_spec"]
