"""The seed's manager pointed at the shared emulator (the fixtures of tests/ollama)."""

from tests.ollama.conftest import manager

__all__ = ["manager"]
