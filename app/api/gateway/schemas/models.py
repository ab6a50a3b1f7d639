"""Bodies of the model endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.ollama import OllamaModel


class ModelOut(BaseModel):
    """An installed model, as the backends describe it."""

    name: str = Field(examples=["llama3.1:8b"])
    id: str = Field(description="First 12 hex digits of the model's digest.")
    size: int = Field(description="Bytes on disk.")
    modified: str = Field(description="When the backend last changed it (RFC 3339).")
    parameters: str | None = Field(default=None, examples=["8.0B"])
    family: str | None = Field(default=None, examples=["llama"])
    format: str | None = Field(default=None, examples=["gguf"])
    status: str = "available"
    backends: list[str] = Field(
        default_factory=list, description="The backends (by name) that have the model."
    )

    @classmethod
    def from_model(cls, model: OllamaModel, backends: list[str] | None = None) -> ModelOut:
        return cls(**model.to_dict(), backends=backends or [])


class ModelStats(BaseModel):
    total_models: int
    total_size: int = Field(description="Bytes, all models together.")
    total_size_gb: float
    models: list[ModelOut]
    families: dict[str, int] = Field(description="How many models of each family.")
    backends: list[str]

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> ModelStats:
        return cls.model_validate(stats)
