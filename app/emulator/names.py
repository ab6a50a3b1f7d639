"""Ollama's model-name rules: `[host/][namespace/]model[:tag]`, compared case-insensitively."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-:]{0,349}$")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    @property
    def short(self) -> str:
        """Display form: default host and namespace dropped, tag always shown."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse(raw: str) -> ModelName | None:
    """The name's four parts with defaults applied, or None when any part is invalid."""
    if not raw:
        return None
    name, tag = raw, DEFAULT_TAG
    slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > slash:
        name, tag = raw[:colon], raw[colon + 1 :]
    parts = name.split("/")
    if len(parts) == 1:
        host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, namespace, model = DEFAULT_HOST, parts[0], parts[1]
    elif len(parts) == 3:
        host, namespace, model = parts
    else:
        return None
    if not (_PART.match(model) and _PART.match(tag) and _NAMESPACE.match(namespace)):
        return None
    if not _HOST.match(host):
        return None
    return ModelName(host, namespace, model, tag)
