"""The gateway's settings: one pydantic-settings class, read from `GATEWAY_*` variables."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error", "critical"]

KEY_PREFIX = "ogw_"
"""What every API key starts with (keys the gateway makes: `ogw_` and 43 URL-safe characters)."""

ADMIN_KEY_MIN_CHARS = 32
ADMIN_KEY_MAX_CHARS = 200
_KEY_BODY = re.compile(r"^[A-Za-z0-9_-]+$")

GENERATE_KEY_HINT = (
    "make one with: python3 -c \"import secrets; print('ogw_' + secrets.token_urlsafe(32))\""
)


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key of the gateway (never quoting it), or None.

    A key chosen by an operator (`GATEWAY_ADMIN_KEY`) must look like one the gateway makes:
    `ogw_`, then URL-safe characters (letters, digits, `_`, `-`), 32 to 200 characters in all.
    """
    if not key.startswith(KEY_PREFIX):
        return f"it must start with {KEY_PREFIX!r}"
    if len(key) < ADMIN_KEY_MIN_CHARS:
        return f"it is {len(key)} characters long; it must have at least {ADMIN_KEY_MIN_CHARS}"
    if len(key) > ADMIN_KEY_MAX_CHARS:
        return f"it must have at most {ADMIN_KEY_MAX_CHARS} characters"
    if not _KEY_BODY.match(key[len(KEY_PREFIX) :]):
        return "after 'ogw_' it may hold only letters, digits, '_' and '-'"
    return None


class ModelPrice(BaseModel):
    """What one model's use costs (`GATEWAY_PRICES`): per million tokens and/or per hour of
    the backend's own time (a GPU hour)."""

    model_config = ConfigDict(extra="forbid")

    prompt_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    output_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    per_gpu_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_price(self) -> ModelPrice:
        prices = (self.prompt_per_million, self.output_per_million, self.per_gpu_hour)
        if all(price is None for price in prices):
            raise ValueError(
                "give prompt_per_million, output_per_million or per_gpu_hour (or several)"
            )
        return self

    def cost(self, prompt_tokens: float, output_tokens: float, backend_seconds: float) -> float:
        return (
            prompt_tokens / 1e6 * (self.prompt_per_million or 0.0)
            + output_tokens / 1e6 * (self.output_per_million or 0.0)
            + backend_seconds / 3600 * (self.per_gpu_hour or 0.0)
        )


class Prices(BaseModel):
    """`GATEWAY_PRICES`: a currency, named once, and prices by model glob (the first glob,
    in the order given, that matches a model's name prices it; a model none matches costs
    nothing)."""

    model_config = ConfigDict(extra="forbid")

    currency: str = Field(min_length=1, max_length=16)
    models: dict[str, ModelPrice] = Field(min_length=1)

    def price_of(self, model: str) -> ModelPrice | None:
        name = model.lower()
        for glob, price in self.models.items():
            if fnmatch.fnmatchcase(name, glob.lower()):
                return price
        return None


def data_dir() -> Path:
    """The per-user data directory (`~/.local/share/ollama-gateway` on Linux)."""
    return Path(user_data_dir("ollama-gateway", appauthor=False))


def default_database_url() -> str:
    """A SQLite file in the per-user data directory, so `serve` needs nothing installed."""
    return f"sqlite+aiosqlite:///{data_dir() / 'gateway.db'}"


def default_spool_dir() -> Path:
    """`spool/` in the per-user data directory, beside the default SQLite file."""
    return data_dir() / "spool"


class Settings(BaseSettings):
    """Everything the gateway reads from its environment.

    Tests and embedding applications build their own `Settings(...)` and pass it to
    `create_app`; nothing reads the environment after start-up.
    """

    # Errors never quote a value: some hold secrets (the admin key, the database password).
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    backends: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:11434"],
        description="Comma-separated Ollama backends, each `[name=]url[;max=N]"
        "[;max_per_model=N][;weight=W][;tags=a,b][;token_env=NAME]`.",
    )
    placement: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Placement rules: a JSON object from model glob to a list of backend "
        'names or `tag:NAME` (`{"llama3.1:70b": ["gpu1"], "qwen2.5:*": ["tag:small"]}`); '
        "the first rule whose glob matches a model's normalised name decides where it may "
        "run (and where a pull without a target goes); a model no rule matches runs "
        "anywhere. Admins may replace them at `/gateway/placement` (stored in the database, "
        "shared by every replica).",
    )
    keep_warm: dict[str, int] = Field(
        default_factory=dict,
        description="Warm models: a JSON object from model name to how many backends keep "
        'it loaded (`{"llama3.1:8b": 2}`). Loaded at start and again when evicted (checked '
        "every health round), on backends its placement allows that have it installed.",
    )
    prefix_routing: bool = Field(
        default=True,
        description="Route runs by expected time to first token: the wait at each backend "
        "plus the prompt tokens not cached there (a per-backend index of the prompt "
        "prefixes each evaluated lately, kept per process) times its observed prompt "
        "evaluation time per token, plus the model's load time where it is not loaded; "
        "`false` routes by expected wait alone. With one backend there is nothing to "
        "choose and the index is not kept.",
    )
    prefix_index_max_entries: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Most prefix keys (about 500 prompt tokens each) the index keeps per "
        "backend (under 300 bytes each; the least recently used prompts forgotten first).",
    )
    prefix_max_sessions: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="Most client-named sessions (`prompt_cache_key`, `x-session-affinity`) "
        "whose backend the index remembers per process, for 10 minutes each.",
    )
    batch_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Part of a backend's `max` slots that runs of jobs (batches, benchmarks, "
        "comparisons) may hold while interactive requests wait for one; those wait behind "
        "interactive requests in every backend's queue.",
    )
    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `serve` listens on.")
    log_level: LogLevel = Field(default="info", description="Log level of the service.")
    log_format: Literal["json", "text"] | None = Field(
        default=None,
        description="`json`: one JSON object per log line; `text`: plain lines; unset: text "
        "when standard output is a terminal, else JSON.",
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="Server processes `serve` runs on its one port."
    )
    server: Literal["uvicorn", "granian"] = Field(
        default="uvicorn",
        description="The HTTP server `serve` runs the gateway under: `uvicorn`, or `granian` "
        "(Rust; `serve` drains on SIGTERM before granian stops listening).",
    )
    drain_file: Path | None = Field(
        default=None,
        description="The file whose appearance drains every process serving this port "
        "(/readyz 503, requests in flight finish within GATEWAY_SHUTDOWN_GRACE); "
        "`ollama-gateway drain` creates it and `serve` removes it. Unset: "
        "`ollama-gateway-<port>.drain` in the temporary directory.",
    )
    trace_content: bool = Field(
        default=False,
        description="Put prompts and answers into trace spans (`gen_ai.prompt`, "
        "`gen_ai.completion`); off: spans carry models, counts and timings only. Tracing "
        "itself is on when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set.",
    )
    shutdown_grace: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds requests and streams in flight may take to finish after SIGTERM; "
        "what is left then ends with a `shutting_down` error.",
    )
    shutdown_drain: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="Seconds after SIGTERM during which the process still takes requests but "
        "answers /readyz with 503, so a load balancer stops sending before it stops listening.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the gateway from a browser (comma-separated); "
        "empty: CORS is off.",
    )
    request_timeout: float = Field(
        default=300.0, gt=0, description="Seconds a backend request may take in all."
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to open a connection to a backend."
    )
    health_timeout: float = Field(
        default=2.0, gt=0, description="Seconds a readiness probe waits for a backend."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (else 413)."
    )
    max_upload_bytes: int = Field(
        default=26_214_400,
        ge=1024,
        description="Largest file upload accepted (`/v1/audio/transcriptions`; else 413): "
        "25 MiB, Ollama's own limit. The upload is streamed to a temporary file, never held "
        "in memory, and replaces `max_body_bytes` on that path.",
    )
    max_json_depth: int = Field(
        default=64,
        ge=2,
        le=10_000,
        description="Deepest nesting of arrays and objects a JSON body may have (else 400).",
    )
    max_prompt_chars: int = Field(
        default=200_000,
        ge=1,
        le=200_000,
        description="Longest prompt, message, context document or batch prompt (characters).",
    )
    max_messages: int = Field(default=500, ge=1, le=500, description="Most messages in a chat.")
    max_batch_prompts: int = Field(
        default=100, ge=1, le=100, description="Most prompts in a batch or benchmark."
    )
    batch_sync_max: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Batches (and benchmarks and comparisons) with more runs than this run as "
        "a background job (202 + SSE progress).",
    )
    embedded_worker: bool = Field(
        default=True,
        description="`serve` also runs jobs (batches, benchmarks, comparisons, pulls); false "
        "leaves them to `ollama-gateway worker` processes.",
    )
    job_concurrency: int = Field(
        default=4, ge=1, le=64, description="Jobs one worker runs at once."
    )
    job_stalled_seconds: float = Field(
        default=10.0,
        ge=1.0,
        le=600.0,
        description="Seconds without a heartbeat after which a worker counts as dead and its "
        "jobs are taken over (PostgreSQL).",
    )
    max_comparison_models: int = Field(
        default=8, ge=1, le=8, description="Most models in one comparison."
    )
    max_context_docs: int = Field(
        default=100, ge=0, le=100, description="Most context documents in one generation."
    )
    max_tokens_limit: int = Field(
        default=131_072, ge=1, le=131_072, description="Largest `max_tokens` a request may ask."
    )
    http_transport: Literal["httpx", "aiohttp"] = Field(
        default="aiohttp",
        description="How the gateway talks to backends: on aiohttp directly, or on httpx's "
        "own transport; see bench/RESULTS.md.",
    )
    health_interval: float = Field(
        default=10.0, gt=0, description="Seconds between background backend health checks."
    )
    load_sample_interval: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds between samples of each backend's load (requests running, "
        "queued and finished), kept for 15 minutes in each process for "
        "`/gateway/backends/history` and the web console's load chart.",
    )
    local_model_url: str | None = Field(
        default=None,
        description="Set by `serve --local-model`: the URL of the emulator that runs the local "
        "model, whose engine `/readyz` asks about (not ready while it is down).",
    )
    backend_registry: bool = Field(
        default=True,
        description="Keep backends added or removed through `/gateway/backends` in the "
        "database, where every process and replica follows them (within seconds) and a "
        "restart keeps them; false: such changes stay in the process that made them.",
    )
    store_ollama_api: bool = Field(
        default=True,
        description="Store generations and chats that come through Ollama's API (`/api`).",
    )
    store_openai_api: bool = Field(
        default=True,
        description="Store completions and chats that come through the OpenAI API (`/v1`).",
    )
    store_anthropic_api: bool = Field(
        default=True,
        description="Store messages that come through the Anthropic Messages API "
        "(`/v1/messages`: Claude Code).",
    )
    store_transcription_audio: bool = Field(
        default=False,
        description="Keep the audio of a transcription in its stored run (base64, in its "
        "messages); false: the stored run keeps the transcript and the upload's size and "
        "type only.",
    )
    relay_web_tools: bool = Field(
        default=False,
        description="Relay `/api/experimental/web_search` and `web_fetch` to a backend. They "
        "spend the backend's own ollama.com account, so they are refused (403) unless an "
        "admin turns this on; the client's `Authorization` is never forwarded.",
    )
    require_auth: bool = Field(
        default=False,
        description="Demand an API key on every request, even on a loopback address.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Serve requests without a key while no key exists, even when bound to "
        "an address other than loopback (otherwise `serve` refuses to start there).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for rate limits shared by several gateway processes "
        "(e.g. `redis://127.0.0.1:6379/0`); unset: limits are kept per process.",
    )
    quota_tz: str = Field(
        default="UTC",
        description="The time zone whose midnight (and first of the month) starts a new quota "
        "window (an IANA name such as `Europe/Paris`).",
    )
    quota_sync_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between two syncs of a process's quota counters with the "
        "database (its charges written, the other replicas' read): what other replicas used "
        "within this time may overshoot a quota.",
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Seconds an API key lookup is reused; a key revoked by another process "
        "stops working within this time. While the database does not answer, a key looked up "
        "within this time of its last answer keeps working.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="An admin API key to store (hashed, named `bootstrap-admin`) at start if "
        "no active key has it: a deployment is secure and up with no manual step. `ogw_` "
        "and URL-safe characters, at least 32 in all. Never logged or shown.",
    )
    admin_key_file: Path | None = Field(
        default=None,
        description="A file holding the admin key (a mounted secret; surrounding whitespace "
        "is stripped). Set this or `admin_key`, not both.",
    )
    spool_dir: Path = Field(
        default_factory=default_spool_dir,
        description="Where results wait, fsynced, while the database does not answer; they "
        "are written to it, in order and once each, when it answers again (also after a "
        "restart: keep this directory on a persistent disk). One subdirectory per database.",
    )
    spool_max_bytes: int = Field(
        default=268_435_456,
        ge=0,
        description="Largest size of the spool file; when a result would take it over, its "
        "request fails with 503 and Retry-After (0: no spool, every such request fails).",
    )
    prices: Annotated[Prices | None, NoDecode] = Field(
        default=None,
        description="Prices for chargeback: a JSON object with a `currency` (named once) and "
        "`models`, from model glob to `prompt_per_million` and `output_per_million` (per "
        "million tokens) and/or `per_gpu_hour` (per hour of the backend's own time), e.g. "
        '`{"currency": "EUR", "models": {"llama3*": {"prompt_per_million": 0.1, '
        '"output_per_million": 0.3, "per_gpu_hour": 2.0}}}`. The first glob that matches a '
        "model prices it. Set, `/gateway/usage` rows carry a `cost`.",
    )
    auto_migrate: bool = Field(
        default=False,
        description="Upgrade the database schema at start instead of refusing to start.",
    )

    def drain_path(self) -> Path:
        """Where the drain file is: GATEWAY_DRAIN_FILE, else one per port in the temporary
        directory (the `serve` and `drain` of one container or host agree on it)."""
        if self.drain_file is not None:
            return self.drain_file
        return _temporary_directory() / f"ollama-gateway-{self.port}.drain"

    @field_validator("quota_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """An IANA time zone the system knows (`UTC`, `Europe/Paris`)."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("admin_key", "admin_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`GATEWAY_ADMIN_KEY=` (an empty line of an env file) means no key."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _read_admin_key(self) -> Settings:
        if self.admin_key_file is not None:
            if self.admin_key is not None:
                raise ValueError("set GATEWAY_ADMIN_KEY or GATEWAY_ADMIN_KEY_FILE, not both")
            try:
                text = self.admin_key_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"GATEWAY_ADMIN_KEY_FILE: cannot read {str(self.admin_key_file)!r} "
                    f"({type(exc).__name__})"
                ) from None
            if not text:
                raise ValueError(f"GATEWAY_ADMIN_KEY_FILE: {str(self.admin_key_file)!r} is empty")
            self.admin_key = SecretStr(text)
        if self.admin_key is not None:
            problem = api_key_problem(self.admin_key.get_secret_value())
            if problem is not None:
                source = "GATEWAY_ADMIN_KEY_FILE" if self.admin_key_file else "GATEWAY_ADMIN_KEY"
                raise ValueError(
                    f"{source} is not a usable API key: {problem}; {GENERATE_KEY_HINT}"
                )
        return self

    @field_validator("backends", mode="before")
    @classmethod
    def _split_backends(cls, value: object) -> object:
        """Comma-separated entries; a piece without `://` continues the entry before it
        (the rest of its `tags=a,b`)."""
        if isinstance(value, str):
            entries: list[str] = []
            for part in (p.strip() for p in value.split(",")):
                if part and entries and "://" not in part:
                    entries[-1] += "," + part
                elif part:
                    entries.append(part)
            value = entries
        if isinstance(value, list):
            return [str(part).strip().rstrip("/") for part in value if str(part).strip()]
        return value

    @field_validator("placement", mode="before")
    @classmethod
    def _check_placement(cls, value: object) -> object:
        """Rules as `app.backends.placement` reads them (ValueError naming what is wrong)."""
        from app.backends.placement import parse_placement

        return parse_placement(value).as_json()

    @field_validator("keep_warm")
    @classmethod
    def _check_keep_warm(cls, value: dict[str, int]) -> dict[str, int]:
        for model, count in value.items():
            if not model.strip() or not 1 <= count <= 1000:
                raise ValueError(
                    f"keep_warm: {model!r}: {count} backends; give a model name and 1 to 1000"
                )
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        """JSON text (the environment's) parsed here, so bad JSON is a setting's error."""
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def _temporary_directory() -> Path:
    """TMPDIR (or TEMP, TMP), else /tmp: read, not probed. `tempfile.gettempdir()` creates
    and removes a file to test each candidate, a write outside a container's volumes at
    every start."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        if given := os.environ.get(name):
            return Path(given)
    return Path("/tmp") if os.name == "posix" else Path(tempfile.gettempdir())
