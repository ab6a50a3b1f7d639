"""Model names: one normalisation, shared by the core and the REST layer.

Ollama treats `llama3.1`, `llama3.1:latest`, `library/llama3.1` and
`registry.ollama.ai/library/llama3.1:latest` as one model, comparing case-insensitively.
Everything in the gateway that matches names goes through these functions so that rule
lives in one place.
"""

from __future__ import annotations

from functools import lru_cache

from app.ollama.errors import InvalidRequest

__all__ = ["model_key", "normalize_model_name", "same_model"]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def normalize_model_name(name: str) -> str:
    """The short display form Ollama shows in `/api/tags`: `llama3.1` -> `llama3.1:latest`.

    The default host and namespace are dropped and the tag is always present; case is
    kept (use `model_key` to compare). Raises `ValueError` for an empty name.
    """
    if not isinstance(name, str):
        raise InvalidRequest(f"model name must be a string, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise InvalidRequest("model name must not be empty")
    slash = name.rfind("/")
    colon = name.rfind(":")
    # A ':' is the tag separator only after the last '/' (so `host:5000/ns/m` works).
    if colon > slash:
        path, tag = name[:colon], name[colon + 1 :]
    else:
        path, tag = name, ""
    tag = tag or DEFAULT_TAG
    parts = path.split("/")
    if len(parts) >= 3 and parts[0].lower() == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == DEFAULT_NAMESPACE:
        parts = parts[1:]
    if not parts[-1]:
        raise InvalidRequest(f"invalid model name: {name!r}")
    return "/".join(parts) + ":" + tag


def model_key(name: str) -> str:
    """A key equal for every spelling of the same model (normalised and case-folded)."""
    if not isinstance(name, str):  # what a JSON body holds may be anything
        raise InvalidRequest(f"model name must be a string, got {type(name).__name__}")
    return _key(name)


@lru_cache(maxsize=4096)
def _key(name: str) -> str:
    """`model_key`, remembered for the most recent 4,096 names: the pool matches every
    installed name of every backend against each request's model."""
    return normalize_model_name(name).casefold()


def same_model(a: str, b: str) -> bool:
    """True when `a` and `b` name the same model by Ollama's rules."""
    try:
        return model_key(a) == model_key(b)
    except ValueError:
        return False
