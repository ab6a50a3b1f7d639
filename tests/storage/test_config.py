"""ConfigManager over SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ollama import ConfigManager, ExecutionOptions


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Iterator[ConfigManager]:
    manager = ConfigManager(str(tmp_path / "config.json"), database_url=db_url)
    yield manager
    manager.close()


def test_updates_are_stored_and_written_to_the_config_file(
    config: ConfigManager, db_url: str, tmp_path: Path
) -> None:
    assert config.load_config()
    assert config.update_config(default_model="qwen2.5:0.5b", auto_start_server=False)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["default_model"] == "qwen2.5:0.5b"
    fresh = ConfigManager(database_url=db_url)
    try:
        assert fresh.load_config() and fresh.config.default_model == "qwen2.5:0.5b"
    finally:
        fresh.close()


def test_a_config_file_is_read_back_by_load_config(config: ConfigManager, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"default_model": "phi3:mini"}))
    assert config.load_config()
    assert config.config.default_model == "phi3:mini"


def test_bad_updates_change_nothing(config: ConfigManager) -> None:
    before = config.config.to_dict()
    assert not config.update_config(no_such_setting=1)
    assert not config.update_config(timeout="soon")
    assert not config.update_config(backends="http://x")
    assert config.config.to_dict() == before


def test_reset_restores_the_defaults(config: ConfigManager) -> None:
    config.update_config(max_concurrent=9)
    assert config.reset_to_defaults()
    assert config.config == config.create_default_config()


def test_presets_are_the_documented_ones(config: ConfigManager) -> None:
    presets = config.get_execution_presets()
    assert set(presets) == {"fast", "creative", "balanced", "precise", "long_form"}
    assert presets["creative"].temperature == 0.9 and presets["creative"].max_tokens == 1024
    assert presets["balanced"] == ExecutionOptions()
    assert presets["precise"].temperature < presets["fast"].temperature < 0.7
    assert presets["long_form"].max_tokens > ExecutionOptions().max_tokens


def test_model_configs_treat_a_bare_name_as_latest(config: ConfigManager) -> None:
    assert config.save_model_config("llama3.1", {"temperature": 0.2})
    assert config.get_model_config("llama3.1:latest") == {"temperature": 0.2}
    assert config.get_model_config("other:1b") is None
    config.update_config(model_defaults={"other:1b": {"top_k": 5}})
    assert config.get_model_config("other:1b") == {"top_k": 5}


def test_export_and_import_round_trip(config: ConfigManager, tmp_path: Path) -> None:
    config.update_config(default_model="mistral:7b")
    config.save_model_config("mistral:7b", {"temperature": 0.3})
    assert config.export_config(str(tmp_path / "export.json"))
    config.reset_to_defaults()
    assert config.import_config(str(tmp_path / "export.json"))
    assert config.config.default_model == "mistral:7b"
    assert config.get_model_config("mistral:7b") == {"temperature": 0.3}
    assert not config.import_config(str(tmp_path / "missing.json"))


def test_validation_catches_ranges_unreachable_backends_and_unknown_models(
    config: ConfigManager, emulator_url: str
) -> None:
    config.update_config(backends=[emulator_url], default_model="llama3.1:8b")
    assert config.validate_config() == {"valid": True, "warnings": [], "errors": []}
    config.update_config(default_model="not-installed:1b")
    report = config.validate_config()
    assert not report["valid"] and any("not-installed:1b" in e for e in report["errors"])
    config.update_config(
        default_model="llama3.1:8b",
        retention_days=0,
        model_defaults={"llama3.1:8b": {"temperature": 7}},
        backends=[emulator_url, "http://127.0.0.1:9"],
    )
    report = config.validate_config()
    assert any("retention_days" in e for e in report["errors"])
    assert any("temperature" in e for e in report["errors"])
    assert any("127.0.0.1:9" in w for w in report["warnings"])
