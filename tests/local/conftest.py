"""The seed's manager pointed at the shared emulator (the fixtures of tests/ollama), for the
tests of what app/local gives it: auto-start and CLI mode."""

from tests.ollama.conftest import down_url, faults, manager, quick_settings, runner

__all__ = ["down_url", "faults", "manager", "quick_settings", "runner"]
