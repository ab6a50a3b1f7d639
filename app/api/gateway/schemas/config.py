"""Bodies of the config endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictBool

from app.api.gateway.schemas.common import NUMBER, Schema
from app.ollama import ExecutionOptions, OllamaConfig


class ConfigOut(BaseModel):
    """The run-time configuration (the live copy in the database)."""

    default_model: str
    backends: list[str]
    timeout: int = Field(description="Seconds a run may take.")
    connect_timeout: float
    auto_start_server: bool
    use_http_api: bool = Field(description="False: CLI mode, through the ollama binary.")
    ollama_binary: str
    max_concurrent: int = Field(description="Default concurrency of batches.")
    retention_days: int = Field(description="Age past which cleanup removes outputs.")
    model_defaults: dict[str, dict[str, Any]] = Field(description="Per-model option defaults.")

    @classmethod
    def from_config(cls, config: OllamaConfig) -> ConfigOut:
        return cls.model_validate(config.to_dict())


class ConfigPatch(Schema):
    """The settings to change; the others keep their values."""

    default_model: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    backends: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=2048)]],
            Field(min_length=1, max_length=64),
        ]
        | None
    ) = None
    timeout: Annotated[int, Field(ge=1, le=86400), NUMBER] | None = None
    connect_timeout: Annotated[float, Field(gt=0, le=600), NUMBER] | None = None
    auto_start_server: StrictBool | None = None
    use_http_api: StrictBool | None = None
    ollama_binary: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=64), NUMBER] | None = None
    retention_days: Annotated[int, Field(ge=1, le=36500), NUMBER] | None = None
    model_defaults: dict[str, dict[str, Any]] | None = None


class ConfigImport(Schema):
    """A configuration as `GET /gateway/config/export` returns it."""

    config: ConfigPatch
    model_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ConfigExport(BaseModel):
    config: ConfigOut
    model_configs: dict[str, dict[str, Any]]


class Validation(BaseModel):
    valid: bool
    warnings: list[str]
    errors: list[str]


class OptionsOut(BaseModel):
    """ExecutionOptions as a preset gives them."""

    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    max_tokens: int
    timeout: int
    stream: bool
    format: str | dict[str, Any] | None = None
    system_prompt: str | None = None
    context_window: int | None = None

    @classmethod
    def from_options(cls, options: ExecutionOptions) -> OptionsOut:
        return cls.model_validate(options.to_dict())
