"""The seed's Python API: the one place the gateway's logic lives."""

from app.ollama.types import ExecutionOptions, ModelExecutionResult, OllamaModel, StreamingChunk

__all__ = ["ExecutionOptions", "ModelExecutionResult", "OllamaModel", "StreamingChunk"]
