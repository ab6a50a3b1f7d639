"""ConfigManager: the settings users change at run time, live in the database.

`config_file` (JSON) stays as an import/export format: with one given, `save_config` also
writes it and `load_config` reads it back. The live copy is the `gateway_config` row.
Every seed method is synchronous as in the seed and has an async twin prefixed `a`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

from app.ollama.errors import InvalidRequest
from app.ollama.names import model_key, normalize_model_name
from app.ollama.types import ExecutionOptions
from app.settings import Settings
from app.storage.database_user import DatabaseUser
from app.storage.db import masked
from app.storage.repositories import GatewayConfigs, ModelConfigs

logger = logging.getLogger(__name__)


CONFIG_NAME = "default"
MODEL_CONFIG_NAME = "default"


@dataclass
class OllamaConfig:
    """What users change at run time; `GATEWAY_*` settings give the defaults.

    - `default_model`: the model used when a request names none; `validate_config` checks
      that a reachable backend has it.
    - `backends`: Ollama base URLs (default `GATEWAY_BACKENDS`).
    - `timeout`: seconds a run may take in all (default `GATEWAY_REQUEST_TIMEOUT`);
      `connect_timeout`: seconds to open a connection (default `GATEWAY_CONNECT_TIMEOUT`).
    - `auto_start_server`: start `ollama serve` when no server answers.
    - `use_http_api`: False is the seed's CLI mode (the `ollama_binary` as a subprocess).
    - `max_concurrent`: default concurrency of batches.
    - `retention_days`: age past which cleanup removes stored outputs.
    - `model_defaults`: per-model default options, e.g. `{"llama3.1:8b": {"temperature": 0.2}}`
      (a stored per-model config, `save_model_config`, takes precedence).
    """

    default_model: str = "llama3.1:latest"
    backends: list[str] = field(default_factory=lambda: ["http://127.0.0.1:11434"])
    timeout: int = 300
    connect_timeout: float = 5.0
    auto_start_server: bool = False
    use_http_api: bool = True
    ollama_binary: str = "ollama"
    max_concurrent: int = 3
    retention_days: int = 30
    model_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "default_model": (str,),
    "backends": (list,),
    "timeout": (int,),
    "connect_timeout": (int, float),
    "auto_start_server": (bool,),
    "use_http_api": (bool,),
    "ollama_binary": (str,),
    "max_concurrent": (int,),
    "retention_days": (int,),
    "model_defaults": (dict,),
}

EXECUTION_PRESETS: dict[str, ExecutionOptions] = {
    "fast": ExecutionOptions(
        temperature=0.3, top_p=0.8, top_k=20, repeat_penalty=1.1, max_tokens=256, timeout=60
    ),
    "creative": ExecutionOptions(
        temperature=0.9, top_p=0.95, top_k=80, repeat_penalty=1.05, max_tokens=1024
    ),
    "balanced": ExecutionOptions(),
    "precise": ExecutionOptions(
        temperature=0.1, top_p=0.5, top_k=10, repeat_penalty=1.15, max_tokens=1024
    ),
    "long_form": ExecutionOptions(
        temperature=0.7, top_p=0.9, top_k=40, max_tokens=4096, context_window=8192, timeout=600
    ),
}
"""The presets (README lists them):

| preset | temperature | top_p | top_k | repeat_penalty | max_tokens | other |
|---|---|---|---|---|---|---|
| fast | 0.3 | 0.8 | 20 | 1.1 | 256 | timeout 60 s |
| creative | 0.9 | 0.95 | 80 | 1.05 | 1024 | |
| balanced | 0.7 | 0.9 | 40 | 1.1 | 2048 | the ExecutionOptions defaults |
| precise | 0.1 | 0.5 | 10 | 1.15 | 1024 | |
| long_form | 0.7 | 0.9 | 40 | 1.1 | 4096 | context_window 8192, timeout 600 s |
"""


def check_values(values: dict[str, Any]) -> list[str]:
    """Type errors in `values` (unknown keys included), as messages."""
    problems = []
    for key, value in values.items():
        expected = _FIELD_TYPES.get(key)
        if expected is None:
            problems.append(f"unknown setting {key!r}")
        elif isinstance(value, bool) and bool not in expected:
            problems.append(f"{key} must be {expected[0].__name__}, got bool")
        elif not isinstance(value, expected):
            problems.append(f"{key} must be {expected[0].__name__}, got {type(value).__name__}")
        elif isinstance(value, list) and not all(isinstance(b, str) for b in value):
            problems.append("backends must be a list of URLs")
        elif isinstance(value, dict) and not all(isinstance(v, dict) for v in value.values()):
            problems.append("model_defaults must map model names to option dicts")
    return problems


class ConfigManager(DatabaseUser):
    """The run-time configuration: load, change, save, validate, import and export."""

    def __init__(
        self,
        config_file: str | None = None,
        *,
        database_url: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        super().__init__(database_url or settings.database_url, name="config-manager")
        self.config_file = Path(config_file) if config_file else None
        self._settings = settings
        self.config = self.create_default_config()

    def __repr__(self) -> str:
        return f"ConfigManager({masked(self.database_url)!r}, file={self.config_file})"

    # -- defaults --------------------------------------------------------------------

    def create_default_config(self) -> OllamaConfig:
        """The defaults: `GATEWAY_*` settings where they exist, else OllamaConfig's."""
        return OllamaConfig(
            backends=list(self._settings.backends),
            timeout=int(self._settings.request_timeout),
            connect_timeout=float(self._settings.connect_timeout),
        )

    # -- load and save ---------------------------------------------------------------

    def _from_dict(self, data: dict[str, Any]) -> OllamaConfig:
        known = {f.name for f in fields(OllamaConfig)}
        values = {k: v for k, v in data.items() if k in known}
        problems = check_values(values)
        if problems:
            raise InvalidRequest("; ".join(problems))
        return OllamaConfig(**{**self.create_default_config().to_dict(), **values})

    async def aload_config(self) -> bool:
        """Load the live copy; with a `config_file`, that file wins and becomes live."""
        try:
            data = None
            if self.config_file is not None:
                data = await asyncio.to_thread(_read_json, self.config_file)
            if data is not None:
                self.config = self._from_dict(data)
                await self._store()
                return True
            await self._prepare()
            async with self.db.session() as session:
                stored = await GatewayConfigs(session).get(CONFIG_NAME)
            self.config = self._from_dict(stored) if stored else self.create_default_config()
            return True
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("cannot load config: %s", exc)
            return False

    def load_config(self) -> bool:
        return self._run(self.aload_config())

    async def _store(self) -> None:
        await self._prepare()
        async with self.db.session() as session:
            await GatewayConfigs(session).put(self.config.to_dict(), CONFIG_NAME)

    async def asave_config(self) -> bool:
        """Store the live copy; with a `config_file`, write it there too."""
        try:
            await self._store()
            if self.config_file is not None:
                await asyncio.to_thread(_write_json, self.config_file, self.config.to_dict())
            return True
        except (OSError, ValueError) as exc:
            logger.warning("cannot save config: %s", exc)
            return False

    def save_config(self) -> bool:
        return self._run(self.asave_config())

    async def aupdate_config(self, **kwargs: Any) -> bool:
        """Change some settings and store them; unknown keys or wrong types change nothing."""
        problems = check_values(kwargs)
        if problems:
            logger.warning("config not updated: %s", "; ".join(problems))
            return False
        self.config = OllamaConfig(**{**self.config.to_dict(), **kwargs})
        return await self.asave_config()

    def update_config(self, **kwargs: Any) -> bool:
        return self._run(self.aupdate_config(**kwargs))

    async def areset_to_defaults(self) -> bool:
        self.config = self.create_default_config()
        return await self.asave_config()

    def reset_to_defaults(self) -> bool:
        return self._run(self.areset_to_defaults())

    # -- per-model configs -----------------------------------------------------------

    async def aget_model_config(self, model_name: str) -> dict[str, Any] | None:
        """A model's stored config, else its `model_defaults` entry, else None."""
        await self._prepare()
        async with self.db.session() as session:
            row = await ModelConfigs(session).get(
                normalize_model_name(model_name), MODEL_CONFIG_NAME
            )
        if row is not None:
            return dict(row.config)
        for name, defaults in self.config.model_defaults.items():
            if model_key(name) == model_key(model_name):
                return dict(defaults)
        return None

    def get_model_config(self, model_name: str) -> dict[str, Any] | None:
        return self._run(self.aget_model_config(model_name))

    async def asave_model_config(self, model_name: str, config: dict[str, Any]) -> bool:
        if not isinstance(config, dict):
            return False
        try:
            await self._prepare()
            async with self.db.session() as session:
                await ModelConfigs(session).put(
                    normalize_model_name(model_name),
                    MODEL_CONFIG_NAME,
                    json.loads(json.dumps(config)),
                )
            return True
        except (TypeError, ValueError) as exc:
            logger.warning("cannot save config of %s: %s", model_name, exc)
            return False

    def save_model_config(self, model_name: str, config: dict[str, Any]) -> bool:
        return self._run(self.asave_model_config(model_name, config))

    # -- presets ---------------------------------------------------------------------

    def get_execution_presets(self) -> dict[str, ExecutionOptions]:
        """The presets, as fresh copies a caller may change:

        - fast: temperature 0.3, top_p 0.8, top_k 20, max_tokens 256, timeout 60 s;
        - creative: temperature 0.9, top_p 0.95, top_k 80, repeat_penalty 1.05,
          max_tokens 1024;
        - balanced: the ExecutionOptions defaults (0.7, 0.9, 40, 1.1, 2048 tokens);
        - precise: temperature 0.1, top_p 0.5, top_k 10, repeat_penalty 1.15,
          max_tokens 1024;
        - long_form: max_tokens 4096, context_window 8192, timeout 600 s.
        """
        return {name: ExecutionOptions(**asdict(opts)) for name, opts in EXECUTION_PRESETS.items()}

    # -- import and export -----------------------------------------------------------

    def export_config(self, export_path: str) -> bool:
        """Write the configuration and the per-model configs as JSON."""
        return self._run(self.aexport_config(export_path))

    async def aexport_config(self, export_path: str) -> bool:
        try:
            await asyncio.to_thread(_write_json, Path(export_path), await self.aexport_data())
            return True
        except OSError as exc:
            logger.warning("cannot export config: %s", exc)
            return False

    async def aexport_data(self) -> dict[str, Any]:
        await self._prepare()
        async with self.db.session() as session:
            rows = await ModelConfigs(session).all()
        return {
            "config": self.config.to_dict(),
            "model_configs": {r.model: r.config for r in rows if r.config_name == "default"},
        }

    def import_config(self, import_path: str) -> bool:
        """Read a file written by `export_config` (or a plain config dict) and apply it."""
        return self._run(self.aimport_config(import_path))

    async def aimport_config(self, import_path: str) -> bool:
        try:
            data = await asyncio.to_thread(_read_json, Path(import_path))
        except (OSError, ValueError) as exc:
            logger.warning("cannot import config: %s", exc)
            return False
        if data is None:
            logger.warning("cannot import config: %s does not exist", import_path)
            return False
        return await self.aimport_data(data)

    async def aimport_data(self, data: Any) -> bool:
        if not isinstance(data, dict):
            return False
        config = data.get("config", data)
        models = data.get("model_configs", {}) if "config" in data else {}
        try:
            new = self._from_dict(config if isinstance(config, dict) else {})
        except (ValueError, TypeError) as exc:
            logger.warning("cannot import config: %s", exc)
            return False
        if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
            return False
        self.config = new
        for name, model_config in models.items():
            await self.asave_model_config(name, model_config)
        return await self.asave_config()

    # -- validation ------------------------------------------------------------------

    async def avalidate_config(self) -> dict[str, Any]:
        """`{"valid", "warnings", "errors"}`: types, ranges, backends, the default model."""
        cfg = self.config
        errors = check_values(cfg.to_dict())
        warnings: list[str] = []
        if not errors:
            if cfg.timeout <= 0:
                errors.append(f"timeout must be positive, got {cfg.timeout}")
            if cfg.connect_timeout <= 0:
                errors.append(f"connect_timeout must be positive, got {cfg.connect_timeout}")
            if cfg.max_concurrent < 1:
                errors.append(f"max_concurrent must be at least 1, got {cfg.max_concurrent}")
            if cfg.retention_days < 1:
                errors.append(f"retention_days must be at least 1, got {cfg.retention_days}")
            if not cfg.backends:
                errors.append("backends must name at least one Ollama URL")
            for name, options in cfg.model_defaults.items():
                errors += _option_range_errors(name, options)
            installed, reachable = await self._probe_backends(cfg.backends, warnings)
            if cfg.backends and not reachable:
                errors.append("no backend is reachable")
            if reachable and not any(
                model_key(m) == model_key(cfg.default_model) for m in installed
            ):
                errors.append(
                    f"default model {cfg.default_model!r} is not installed on any reachable backend"
                )
            if not cfg.use_http_api:
                warnings.append("CLI mode: only list, pull, run and rm go through the binary")
        return {"valid": not errors, "warnings": warnings, "errors": errors}

    def validate_config(self) -> dict[str, Any]:
        return self._run(self.avalidate_config())

    async def _probe_backends(
        self, backends: list[str], warnings: list[str]
    ) -> tuple[set[str], int]:
        """Ask every backend for its models at once (`GET /api/tags`, short timeout).

        A backend that does not answer, or answers with something other than Ollama's
        model list, is unreachable for this purpose and named in a warning.
        """
        timeout = httpx.Timeout(self._settings.health_timeout)

        async def probe(client: httpx.AsyncClient, url: str) -> set[str] | str:
            """The backend's model names, or why it does not count as reachable."""
            try:
                response = await client.get(url.rstrip("/") + "/api/tags")
                response.raise_for_status()
                tags = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                return f"backend {url} is unreachable: {type(exc).__name__}"
            models = tags.get("models") if isinstance(tags, dict) else None
            if not isinstance(models, list):
                return f"backend {url} did not answer like Ollama (no model list)"
            return {str(m["name"]) for m in models if isinstance(m, dict) and "name" in m}

        async with httpx.AsyncClient(timeout=timeout) as client:
            answers = await asyncio.gather(*(probe(client, url) for url in backends))
        installed: set[str] = set()
        reachable = 0
        for answer in answers:
            if isinstance(answer, str):
                warnings.append(answer)
            else:
                installed |= answer
                reachable += 1
        return installed, reachable


def _read_json(path: Path) -> Any:
    """The file's JSON, or None when there is no such file."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "top_k": (1, 1000),
    "repeat_penalty": (0, 5),
    "max_tokens": (1, 131072),
    "num_predict": (-2, 131072),
    "timeout": (1, 3600),
    "context_window": (256, 1_048_576),
    "num_ctx": (256, 1_048_576),
}


def _option_range_errors(model: str, options: dict[str, Any]) -> list[str]:
    errors = []
    for key, value in options.items():
        bounds = _RANGES.get(key)
        if bounds is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"model_defaults[{model!r}].{key} must be a number")
        elif not bounds[0] <= value <= bounds[1]:
            errors.append(
                f"model_defaults[{model!r}].{key}={value} is outside {bounds[0]}..{bounds[1]}"
            )
    return errors
