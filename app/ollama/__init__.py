"""The seed's Python API: the one place the gateway's logic lives.

`OllamaManager` manages models and runs single generations; `ModelRunner` adds options,
streaming, batches, chats, context documents, benchmarks and comparisons. Both have sync
methods (the seed's) and async counterparts for code already on an event loop.
"""

from app.backends.errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    StreamInterrupted,
)
from app.ollama.config import EXECUTION_PRESETS, ConfigManager, OllamaConfig
from app.ollama.context import CONTEXT_TEMPLATE, build_context_prompt
from app.ollama.errors import InvalidRequest, RunCancelled
from app.ollama.manager import OllamaManager
from app.ollama.models import model_from_tag
from app.ollama.names import model_key, normalize_model_name, same_model
from app.ollama.options import (
    OLLAMA_OPTION_TYPES,
    RequestPlan,
    plan_from_dict,
    plan_from_execution_options,
)
from app.ollama.outputs import OutputManager
from app.ollama.runner import ModelRunner
from app.ollama.types import ExecutionOptions, ModelExecutionResult, OllamaModel, StreamingChunk

__all__ = [
    "CONTEXT_TEMPLATE",
    "EXECUTION_PRESETS",
    "OLLAMA_OPTION_TYPES",
    "BackendBusy",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "ConfigManager",
    "ExecutionOptions",
    "InvalidRequest",
    "ModelExecutionResult",
    "ModelRunner",
    "OllamaConfig",
    "OllamaManager",
    "OllamaModel",
    "OutputManager",
    "RequestPlan",
    "RunCancelled",
    "StreamInterrupted",
    "StreamingChunk",
    "build_context_prompt",
    "model_from_tag",
    "model_key",
    "normalize_model_name",
    "plan_from_dict",
    "plan_from_execution_options",
    "same_model",
]
