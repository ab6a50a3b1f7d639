"""The database schema (SQLAlchemy 2 declarative). Changed only together with a migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, configure_mappers, mapped_column
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator

# Stable constraint names on every database, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (UTC).

    PostgreSQL keeps `timestamptz`; SQLite keeps text without an offset, so values are
    converted to UTC before they are written or compared (a filter given in another offset
    still compares correctly) and get their UTC zone back when read. In migrations it is
    plain `sa.DateTime(timezone=True)` (env.py renders it so).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _in_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _in_utc(value)


def _in_utc(value: datetime | None) -> datetime | None:
    """`value` in UTC, timezone-aware: a naive value is taken to be UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


RowT = TypeVar("RowT", bound="Base")


def built_row(cls: type[RowT], values: dict[str, Any]) -> RowT:
    """A new (transient) `cls` row holding `values`, made without the ORM's attribute
    events: the declarative constructor sets each attribute through an instrumented
    descriptor, more than half of the time to build a run's row. Stored the same way:
    the ORM's flush, `insert_rows` and the spool read the instance's dict."""
    manager = cls._sa_class_manager  # type: ignore[attr-defined]
    if not manager.mapper.configured:  # as the first constructor call would
        configure_mappers()
    row: RowT = manager.new_instance()
    row.__dict__.update(values)
    return row


ID = String(32)
"""Ids are uuid4 hex strings: opaque to users, unique across databases and exports."""


def text_escaped_column() -> MappedColumn[bool]:
    """The `text_escaped` flag of a table whose rows `app.storage.escaping` may store
    escaped (runs, audit entries): false unless the row as given was refused."""
    return mapped_column(
        Boolean,
        default=False,
        server_default=false(),
        doc="True when the database refused the row as given and its text was stored escaped "
        "(NUL and lone surrogates as \\u escapes, over-long text cut)",
    )


class StoredReport:
    """The columns every stored report (a batch, a benchmark, a comparison) has: its id,
    who made it, its size and when; a table adds its own between `id` and these.

    `report_indexes` gives the indexes that go with them (newest first, per owner).
    """

    # sort_order: the id stays the first column; the others follow the table's own.
    id: Mapped[str] = mapped_column(ID, primary_key=True, sort_order=-1)
    principal: Mapped[str | None] = mapped_column(
        String(200), doc="The API key (by name) that made it; None when anonymous"
    )
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


def report_indexes(table: str) -> tuple[Index, Index]:
    """The indexes of a `StoredReport` table named `table`: by creation time, and by
    owner then creation time (a key's own reports, newest first)."""
    return (
        Index(f"ix_{table}_created_at", "created_at"),
        Index(f"ix_{table}_principal_created_at", "principal", "created_at"),
    )


class Batch(StoredReport, Base):
    __tablename__ = "batches"

    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(512))
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = report_indexes(__tablename__)


class BenchmarkReport(StoredReport, Base):
    __tablename__ = "benchmark_reports"

    model: Mapped[str] = mapped_column(String(512))
    report: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_benchmark_reports_model_created_at", "model", "created_at"),
        *report_indexes(__tablename__),
    )


class Comparison(StoredReport, Base):
    __tablename__ = "comparisons"

    models: Mapped[list[Any]] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text, default="")
    report: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = report_indexes(__tablename__)


ReportRow = Batch | BenchmarkReport | Comparison
"""A stored report: the three kinds runs link to as a group."""


class Execution(Base):
    """One run: generate, chat, stream, batch item, benchmark or comparison run."""

    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    surface: Mapped[str] = mapped_column(
        String(16),
        default="gateway",
        server_default="gateway",
        doc="The API the run came through: gateway (/gateway), ollama (/api), openai (/v1), "
        "anthropic (/v1/messages), responses (/v1/responses), transcription or speech",
    )
    model: Mapped[str] = mapped_column(String(512))
    principal: Mapped[str | None] = mapped_column(
        String(200), doc="The API key (by name) the run was made with; None when anonymous"
    )
    backend: Mapped[str | None] = mapped_column(String(512))
    prompt: Mapped[str] = mapped_column(Text, default="")
    messages: Mapped[list[Any] | None] = mapped_column(JSON)
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    response: Mapped[str] = mapped_column(Text, default="")
    success: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), doc="succeeded, failed or cancelled")
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(64))
    done_reason: Mapped[str | None] = mapped_column(String(32))
    execution_time: Mapped[float] = mapped_column(Float, default=0.0)
    time_to_first_token: Mapped[float | None] = mapped_column(Float)
    tokens_used: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    total_duration_ns: Mapped[int | None] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    text_escaped: Mapped[bool] = text_escaped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    benchmark_id: Mapped[str | None] = mapped_column(
        ForeignKey("benchmark_reports.id", ondelete="SET NULL")
    )
    comparison_id: Mapped[str | None] = mapped_column(
        ForeignKey("comparisons.id", ondelete="SET NULL")
    )
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), doc="The job that ran it, if any"
    )
    job_index: Mapped[int | None] = mapped_column(
        Integer, doc="Its place in the job (a batch's prompt, a comparison's model)"
    )

    __table_args__ = (
        UniqueConstraint("job_id", "job_index", name="uq_executions_job_id_job_index"),
        Index("ix_executions_created_at", "created_at"),
        Index("ix_executions_model_created_at", "model", "created_at"),
        Index("ix_executions_kind_created_at", "kind", "created_at"),
        Index("ix_executions_surface_created_at", "surface", "created_at"),
        Index("ix_executions_principal_created_at", "principal", "created_at"),
        Index("ix_executions_batch_id", "batch_id"),
        Index("ix_executions_benchmark_id", "benchmark_id"),
        Index("ix_executions_comparison_id", "comparison_id"),
    )


class Job(Base):
    """Long work (a batch, benchmark, comparison or pull) that any worker may run.

    The record is the truth about a job, shared by every replica: its status, progress,
    owner and outcome. Its runs are `executions` rows with its `job_id` and their
    `job_index` (unique together: a run is never stored twice, and a job restarted after
    its worker died redoes only the indexes with no stored run).
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), doc="batch, benchmark, comparison or pull")
    status: Mapped[str] = mapped_column(
        String(16), doc="queued, running, succeeded, failed or cancelled"
    )
    subject: Mapped[str] = mapped_column(String(512), doc="The model (or models) it is about")
    request: Mapped[dict[str, Any]] = mapped_column(JSON, doc="What to run")
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0, doc="Times it was started")
    worker: Mapped[str | None] = mapped_column(String(255), doc="host:pid running it")
    owner: Mapped[str | None] = mapped_column(String(200), doc="The API key that started it")
    error: Mapped[str | None] = mapped_column(Text)
    report_id: Mapped[str | None] = mapped_column(
        String(32), doc="The batch, benchmark or comparison it produced"
    )
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_status", "status"),
    )


class JobEvent(Base):
    """One event of a job, numbered across all jobs: the SSE `id` a client resumes from."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32), doc="progress or done")
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)

    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)


class ModelConfig(Base):
    __tablename__ = "model_configs"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    model: Mapped[str] = mapped_column(String(512))
    config_name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)

    __table_args__ = (UniqueConstraint("model", "config_name", name="uq_model_configs_model_name"),)


class GatewayConfig(Base):
    """The live copy of the run-time configuration (one row per name; "default" in use)."""

    __tablename__ = "gateway_config"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class AuditEntry(Base):
    """Who did what to which target, with what outcome and how long it took."""

    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(512))
    outcome: Mapped[str] = mapped_column(String(32))
    duration_ms: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    surface: Mapped[str | None] = mapped_column(
        String(16), doc="gateway, ollama, openai, anthropic, responses, transcription or speech"
    )
    status: Mapped[int | None] = mapped_column(Integer, doc="The HTTP status answered")
    client: Mapped[str | None] = mapped_column(String(64), doc="The client's address")
    text_escaped: Mapped[bool] = text_escaped_column()

    __table_args__ = (
        Index("ix_audit_log_created_at", "created_at"),
        Index("ix_audit_log_actor_created_at", "actor", "created_at"),
        Index("ix_audit_log_action_created_at", "action", "created_at"),
    )


class ApiKey(Base):
    """An API key: only its SHA-256 is kept; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16), doc="admin or user")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(
        String(16), doc="The key's first characters, to tell keys apart"
    )
    models: Mapped[list[str] | None] = mapped_column(JSON, doc="Glob patterns; None = any model")
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    team: Mapped[str | None] = mapped_column(String(100), doc="The key's team; None: no team")
    quotas: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, doc="tokens_per_day, tokens_per_month, requests_per_day, backend_seconds_per_day"
    )

    __table_args__ = (Index("ix_api_keys_name", "name"), Index("ix_api_keys_team", "team"))


class Team(Base):
    """A team of keys: its model allowlist narrows its keys' own, its quotas are shared."""

    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, doc="Glob patterns; None = any model")
    quotas: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class QuotaUsage(Base):
    """What a key or a team used in one quota window, summed by every replica (upserts)."""

    __tablename__ = "quota_usage"

    scope: Mapped[str] = mapped_column(String(120), primary_key=True, doc="key:NAME or team:NAME")
    period: Mapped[str] = mapped_column(String(16), primary_key=True, doc="d:YYYY-MM-DD, m:YYYY-MM")
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    backend_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class RegisteredBackend(Base):
    """The backend registry: a backend added or removed through `/gateway/backends`.

    Every process and replica brings its pool in line with these rows: a row without
    `removed_at` is a backend in use (its `spec` wins over a `GATEWAY_BACKENDS` entry of
    the same name); a row with `removed_at` keeps that name out of every pool, even when
    `GATEWAY_BACKENDS` lists it, until it is added through the API again. Backends that
    were never changed through the API have no row.
    """

    __tablename__ = "backends"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    spec: Mapped[str] = mapped_column(
        Text, doc="As in GATEWAY_BACKENDS: `name=url[;max=N][;weight=W]`"
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_now, doc="When it was (last) added through the API"
    )
    removed_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), doc="When it was removed through the API; None while in use"
    )


class PlacementRules(Base):
    """The placement rules set through `/gateway/placement` (one row, `id` 1).

    Every process and replica follows this row once it exists (instead of its
    GATEWAY_PLACEMENT); without it the start-up rules apply.
    """

    __tablename__ = "placement_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rules: Mapped[str] = mapped_column(
        Text, doc="A JSON object from model glob to backend names or `tag:NAME`, in order"
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_now, doc="When they were last replaced through the API"
    )


class StoredResponse(Base):
    """A response of the OpenAI Responses API (`/v1/responses`) kept so that it can be read
    again and continued (`previous_response_id`), from any replica.

    It is an index over the run that produced it (`execution_id`, an `executions` row):
    the answer's text, thinking and tool calls are read from that row, never stored twice.
    The row holds what the run's row cannot: the turn's own input items as the client sent
    them (with their ids), the ids and names of the output items, and the request fields
    a response echoes. A conversation is a chain of rows by `previous_response_id`; each row
    holds its own turn only, so a chain of n turns takes O(n) rows and one query to walk
    (a recursive CTE, see `app.storage.response_repository`).
    """

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, doc="resp_<32 hex>")
    principal: Mapped[str | None] = mapped_column(
        String(200), doc="The API key (by name) that made it; None when anonymous"
    )
    previous_response_id: Mapped[str | None] = mapped_column(
        String(64), doc="The response it continues (None: the first of its conversation)"
    )
    depth: Mapped[int] = mapped_column(
        Integer, default=0, doc="Responses before it in its conversation"
    )
    execution_id: Mapped[str] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"),
        doc="The run that produced it (deleting the run deletes the response)",
    )
    model: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), doc="completed, incomplete or failed")
    input_items: Mapped[list[Any]] = mapped_column(
        JSON, doc="Its own input items (not its conversation's), each with an id"
    )
    output_items: Mapped[list[Any]] = mapped_column(
        JSON, doc="Its output items without their text (ids, names, call ids)"
    )
    params: Mapped[dict[str, Any]] = mapped_column(
        JSON, doc="The request fields a response echoes (instructions, tools, text, ...)"
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_responses_previous_response_id", "previous_response_id"),
        Index("ix_responses_execution_id", "execution_id"),
        Index("ix_responses_principal_created_at", "principal", "created_at"),
    )


class UsageEntry(Base):
    """The usage ledger: what the runs of one key, team, model, backend and surface used in
    one hour (UTC). Written in the transaction that stores the runs (one upsert per group
    of runs, never one write per request; see `app.storage.usage_ledger`), so its sums are
    the stored runs' sums; runs that are not stored are added from memory every few seconds.

    The key columns are never NULL (`''`: no key, no team, no backend), so that the upsert's
    conflict target matches on every database.
    """

    __tablename__ = "usage_ledger"

    bucket: Mapped[datetime] = mapped_column(
        UTCDateTime(), primary_key=True, doc="The hour (UTC) the runs were stored in"
    )
    principal: Mapped[str] = mapped_column(
        String(200), primary_key=True, doc="The API key (by name); '' when anonymous"
    )
    team: Mapped[str] = mapped_column(String(200), primary_key=True, doc="Its team; '' for none")
    model: Mapped[str] = mapped_column(String(512), primary_key=True)
    backend: Mapped[str] = mapped_column(
        String(512), primary_key=True, doc="The backend that answered; '' when none did"
    )
    surface: Mapped[str] = mapped_column(String(16), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    backend_seconds: Mapped[float] = mapped_column(
        Float, default=0.0, doc="The backend's own time (Ollama's total_duration)"
    )
    load_seconds: Mapped[float] = mapped_column(
        Float, default=0.0, doc="Of it, loading models (Ollama's load_duration)"
    )

    __table_args__ = (
        Index("ix_usage_ledger_principal_bucket", "principal", "bucket"),
        Index("ix_usage_ledger_team_bucket", "team", "bucket"),
    )
