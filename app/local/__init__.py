"""Ollama on this host: its server started when silent (auto-start), its binary driven (CLI
mode), and the local model (`serve --local-model`)."""

from app.local.host import LocalOllama

__all__ = ["LocalOllama"]
