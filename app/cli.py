"""The `ollama-gateway` command: serve, worker, keys, usage, migrate, emulator, openapi."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from app.settings import Settings

cli = typer.Typer(
    name="ollama-gateway",
    help="A gateway in front of one or more Ollama servers.",
    no_args_is_help=True,
    add_completion=False,
)


@cli.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default GATEWAY_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default GATEWAY_PORT).")
    ] = None,
    local_model: Annotated[
        bool,
        typer.Option(
            "--local-model",
            help="Also start the emulator with a real model (llama.cpp, SmolLM2-135M by "
            "default; the local-model extra) and use it as the only backend.",
        ),
    ] = False,
    gguf: Annotated[
        str | None, typer.Option(help="With --local-model: the GGUF file to run.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Server processes on the one port (default GATEWAY_WORKERS)."
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="The HTTP server: uvicorn or granian (default GATEWAY_SERVER, uvicorn)."),
    ] = None,
) -> None:
    """Run the gateway under uvicorn (or granian)."""
    from app.observability.logging_setup import log_config
    from app.settings import Settings
    from app.storage.migrations import SchemaOutOfDate, ensure_schema

    settings = Settings()
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    try:
        outcome = ensure_schema(settings.database_url, upgrade_old=settings.auto_migrate)
    except SchemaOutOfDate as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if outcome != "up to date":
        typer.echo(f"database schema {outcome}", err=True)
    refusal = exposure_refusal(settings) or spool_refusal(settings)
    if refusal is not None:
        typer.echo(f"Error: {refusal}", err=True)
        raise typer.Exit(2)
    with contextlib.ExitStack() as stack:
        if local_model:
            from app.local.local_model import (
                LocalModelError,
                check_local_model,
                local_model_backend,
            )

            try:
                typer.echo(check_local_model(gguf), err=True)
                url = stack.enter_context(local_model_backend(gguf))
            except LocalModelError as exc:
                typer.echo(f"Error: {exc}", err=True)
                raise typer.Exit(1) from exc
            settings.backends = [f"local={url}"]
            settings.local_model_url = url
            typer.echo(f"local model served by the emulator at {url}", err=True)
        if workers is not None:
            settings.workers = workers
        if server is not None:
            if server not in ("uvicorn", "granian"):
                typer.echo(f"Error: --server must be uvicorn or granian, not {server!r}", err=True)
                raise typer.Exit(2)
            settings.server = cast(Any, server)
        _clear_drain(settings.drain_path())  # a drain of an earlier process is not ours
        _welcome(settings)
        if settings.server == "granian":
            _serve_granian(settings)
            return
        import uvicorn

        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level,
            "log_config": log_config(settings.log_format, settings.log_level),
            "access_log": False,
            # the app ends what is left at the grace itself; this is only the backstop
            "timeout_graceful_shutdown": int(settings.shutdown_grace + settings.shutdown_drain) + 5,
        }
        if settings.workers == 1:
            from app.main import create_app

            uvicorn.run(create_app(settings), **options)
            return
        # Each worker process builds its app from the environment.
        _export(settings)
        with _metrics_directory():
            uvicorn.run("app.main:create_app", factory=True, workers=settings.workers, **options)


def _export(settings: Settings) -> None:
    """What `serve` changed, for the processes that build their app from the environment."""
    os.environ.update(
        GATEWAY_HOST=settings.host,
        GATEWAY_PORT=str(settings.port),
        GATEWAY_BACKENDS=",".join(settings.backends),
        GATEWAY_SERVER=settings.server,
    )
    if settings.local_model_url:
        os.environ["GATEWAY_LOCAL_MODEL_URL"] = settings.local_model_url


def _serve_granian(settings: Settings) -> None:
    """granian's worker processes (one or more, forked: nothing here may have imported the
    app, whose metrics choose their multiprocess mode at import) each build the app from
    the environment.
    granian's own SIGTERM stops listening at once; here the first SIGTERM drains first, as
    `ollama-gateway drain` does (unless a drain ran already: Kubernetes' preStop), then
    hands over to granian. SIGINT (Ctrl-C) and a second SIGTERM stop at once."""
    import signal
    import threading

    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    from app.observability.logging_setup import log_config

    class DrainingServer(Server):  # type: ignore[misc,valid-type]
        draining = False

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            stop = super().signal_handler_interrupt
            if self.draining or not args or args[0] != signal.SIGTERM:
                stop(*args, **kwargs)
                return
            self.draining = True
            if settings.drain_path().exists():  # drained already: nothing to wait for
                stop(*args, **kwargs)
                return

            def drain_then_stop() -> None:
                _drain(settings)
                stop(*args, **kwargs)

            threading.Thread(target=drain_then_stop, name="drain", daemon=True).start()

    _export(settings)
    with _metrics_directory() if settings.workers > 1 else contextlib.nullcontext():
        DrainingServer(
            "app.main:create_app",
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            loop=Loops.auto,  # uvloop, as uvicorn uses
            factory=True,
            log_level=LogLevels(settings.log_level),
            log_dictconfig=log_config(settings.log_format, settings.log_level),
            log_access=False,
            # the app ends what is left at the grace itself; this is only the backstop
            workers_kill_timeout=int(settings.shutdown_grace + settings.shutdown_drain) + 5,
        ).serve()


def _clear_drain(path: Path) -> None:
    from app.api.common.shutdown import in_flight_reports

    path.unlink(missing_ok=True)
    for pid in in_flight_reports(path):
        path.with_name(f"{path.name}.{pid}").unlink(missing_ok=True)


@cli.command()
def drain(
    port: Annotated[
        int | None, typer.Option(help="The port `serve` listens on (default GATEWAY_PORT).")
    ] = None,
) -> None:
    """Drain the gateway serving this port on this machine, before stopping it: /readyz
    answers 503 at once (a load balancer stops sending), and this returns when the requests
    and streams in flight have finished (at most GATEWAY_SHUTDOWN_DRAIN +
    GATEWAY_SHUTDOWN_GRACE seconds). Then SIGTERM ends the server at once, whichever it is.
    Kubernetes' preStop runs it; `serve` undoes it when it starts again."""
    from app.settings import Settings

    settings = Settings()
    if port is not None:
        settings.port = port
    typer.echo(f"draining port {settings.port} ({settings.drain_path()})", err=True)
    took, processes, left = _drain(settings)
    typer.echo(
        f"drained in {took:.1f} s: {processes} process(es), {left} request(s) still in flight",
        err=True,
    )


def _drain(settings: Settings) -> tuple[float, int, int]:
    """Create the drain file, let a load balancer see /readyz fail for
    GATEWAY_SHUTDOWN_DRAIN seconds, then wait (within the grace) until no process serving
    the port has a request in flight: (seconds taken, processes, requests left)."""
    import time

    from app.api.common.shutdown import DRAIN_POLL_SECONDS, in_flight_reports

    path = settings.drain_path()
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{datetime.now(UTC).isoformat()}\n")
    # Every process sees the file within a poll; the load balancer needs its checks.
    time.sleep(max(settings.shutdown_drain, 3 * DRAIN_POLL_SECONDS))
    deadline = started + settings.shutdown_drain + settings.shutdown_grace
    reports = in_flight_reports(path)
    while time.monotonic() < deadline:
        reports = in_flight_reports(path)
        if not any(reports.values()):
            break
        time.sleep(DRAIN_POLL_SECONDS / 2)
    return time.monotonic() - started, len(reports), sum(reports.values())


def _welcome(settings: Settings) -> None:
    """Where the gateway listens and, when no backend answers, how to start one."""
    import httpx

    from app.backends.pool import parse_backend

    typer.echo(
        f"ollama-gateway listening on http://{settings.host}:{settings.port} "
        f"(API docs at /docs), {settings.workers} process(es)",
        err=True,
    )
    urls = [parse_backend(b).url for b in settings.backends]
    for url in urls:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
    typer.echo(
        f"no Ollama backend answers at {', '.join(urls)}: start Ollama (`ollama serve`), or "
        "the emulator (`ollama-gateway emulator --port 11434`), or run "
        "`ollama-gateway serve --local-model`",
        err=True,
    )


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """Prometheus' multiprocess mode: every worker writes its samples under one directory,
    and `/metrics` sums them, whichever worker answers the scrape."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="ollama-gateway-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


@cli.command()
def worker() -> None:
    """Run jobs (batches, benchmarks, comparisons, pulls) and nothing else: no HTTP.

    Any number of workers may run beside `serve` replicas on one PostgreSQL database
    (there `serve` also runs jobs unless GATEWAY_EMBEDDED_WORKER=false). Stops on SIGTERM
    or Ctrl-C; a job it was running is taken over by another worker."""
    import logging.config

    from app.observability.logging_setup import log_config
    from app.settings import Settings
    from app.storage.migrations import SchemaOutOfDate, ensure_schema

    settings = Settings()
    logging.config.dictConfig(log_config(settings.log_format, settings.log_level))
    try:
        ensure_schema(settings.database_url, upgrade_old=settings.auto_migrate)
    except SchemaOutOfDate as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from exc
    refusal = spool_refusal(settings)
    if refusal is not None:
        typer.echo(f"Error: {refusal}", err=True)
        raise typer.Exit(2)
    asyncio.run(_work(settings))


async def _work(settings: Settings) -> None:
    from app.main import build_services
    from app.observability import telemetry, telemetry_setup

    telemetry_setup.configure(trace_content=settings.trace_content)
    services = build_services(settings)
    jobs, manager = services.jobs, services.manager
    with telemetry.suppressed():  # polling makes no trace; each job continues its own
        services.quotas.start()
        await jobs.start(run_jobs=False)
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(jobs.work(), name="jobs"),
            asyncio.create_task(manager.pool.watch(settings.health_interval), name="health"),
            # runs of jobs stored while the database did not answer (app/storage/spool.py)
            asyncio.create_task(services.spool.replay_forever(services.outputs.db), name="spool"),
        ]
    typer.echo(f"worker {jobs.worker} running jobs", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks.append(asyncio.create_task(stop.wait(), name="stop"))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await jobs.aclose()
        await services.quotas.aclose()
        await services.fleet.aclose()
        await manager.aclose()
        await services.outputs.aclose()
        telemetry_setup.shutdown()


def ensure_admin_key(settings: Settings) -> None:
    """Store the deployment's admin key (GATEWAY_ADMIN_KEY or GATEWAY_ADMIN_KEY_FILE), if it
    has one, unless it is stored already: safe to run from every replica at once."""
    from app.access import KeyStore
    from app.access.keys import BOOTSTRAP_KEY_NAME

    if settings.admin_key is None:
        return
    store = KeyStore(settings.database_url)
    try:
        outcome = store.ensure_bootstrap_key(settings.admin_key.get_secret_value())
    finally:
        store.close()
    if outcome == "created":
        typer.echo(
            f"stored the admin key from the environment (key {BOOTSTRAP_KEY_NAME!r})", err=True
        )
    elif outcome == "revoked":
        typer.echo("the admin key from the environment was revoked: it stays revoked", err=True)


def spool_refusal(settings: Settings) -> str | None:
    """Why the spool (results kept while the database does not answer) cannot be
    written, or None."""
    from app.storage.spool import RowSpool

    spool = RowSpool(settings.spool_dir, settings.database_url, settings.spool_max_bytes)
    try:
        spool.check()
    except OSError as exc:
        return (
            f"the spool directory {settings.spool_dir} cannot be written ({exc.strerror}: "
            f"{exc.filename}): set GATEWAY_SPOOL_DIR to a writable directory, or "
            "GATEWAY_SPOOL_MAX_BYTES=0 to serve without a spool"
        )
    return None


def exposure_refusal(settings: Settings) -> str | None:
    """Why `serve` must not start (anonymous access off loopback), or None.

    The deployment's admin key, if it has one, is stored first, so a container started
    with GATEWAY_ADMIN_KEY is secure and up with no manual step."""
    from app.access import KeyStore, is_loopback
    from app.settings import GENERATE_KEY_HINT

    ensure_admin_key(settings)
    if is_loopback(settings.host) or settings.allow_anonymous:
        return None
    store = KeyStore(settings.database_url)
    try:
        has_keys = bool(store.list())
    finally:
        store.close()
    if has_keys:
        return None
    return (
        f"refusing to serve on {settings.host} without API keys: anyone who can reach it "
        "could use it. Set GATEWAY_ADMIN_KEY (or GATEWAY_ADMIN_KEY_FILE) to an admin key of "
        f"your choosing ({GENERATE_KEY_HINT}), create a key first (ollama-gateway keys create "
        "--scope admin --name NAME), bind to 127.0.0.1, or set GATEWAY_ALLOW_ANONYMOUS=true."
    )


local_model_cli = typer.Typer(
    help="The local model (llama.cpp and SmolLM2: the local-model extra).", no_args_is_help=True
)
cli.add_typer(local_model_cli, name="local-model")


@local_model_cli.command("check")
def local_model_check(
    gguf: Annotated[str | None, typer.Option(help="The GGUF file (default: SmolLM2-135M).")] = None,
) -> None:
    """Have llama.cpp write one token at the engine's default context in a child process:
    what it took, or (exit 1) one line saying what to do."""
    from app.local.local_model import LocalModelError, check_local_model

    try:
        typer.echo(check_local_model(gguf))
    except LocalModelError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from exc


keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key (its principal in logs).")],
    scope: Annotated[str, typer.Option(help="admin or user.")] = "user",
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated glob patterns of the models it may use."),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute it may make.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute it may use.")] = None,
    team: Annotated[
        str | None, typer.Option(help="The team it belongs to (create it first, /gateway/teams).")
    ] = None,
    tokens_per_day: Annotated[
        int | None, typer.Option(help="Quota: prompt and output tokens a day.")
    ] = None,
    tokens_per_month: Annotated[
        int | None, typer.Option(help="Quota: prompt and output tokens a month.")
    ] = None,
    requests_per_day: Annotated[
        int | None, typer.Option(help="Quota: requests that run models a day.")
    ] = None,
    backend_seconds_per_day: Annotated[
        float | None, typer.Option(help="Quota: seconds of the backends' own time a day.")
    ] = None,
) -> None:
    """Create a key; it is printed once, as the last word of the output."""
    from app.access import KeyStore

    quotas = {
        "tokens_per_day": tokens_per_day,
        "tokens_per_month": tokens_per_month,
        "requests_per_day": requests_per_day,
        "backend_seconds_per_day": backend_seconds_per_day,
    }
    store = KeyStore(_settings().database_url)
    try:
        new = store.create(
            name,
            scope,
            models=models.split(",") if models is not None else None,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            team=team,
            quotas={k: v for k, v in quotas.items() if v is not None} or None,
        )
    except (ValueError, LookupError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        store.close()
    record = new.record
    allowed = ",".join(record["models"]) if record["models"] else "any model"
    extra = f", team {record['team']!r}" if record["team"] else ""
    if record["quotas"]:
        extra += ", quotas " + ", ".join(f"{k}={v}" for k, v in record["quotas"].items())
    typer.echo(
        f"created {record['scope']} key {record['name']!r} (id {record['id']}, {allowed}{extra})"
    )
    typer.echo("store it now: it cannot be shown again")
    typer.echo(new.key)


@keys_cli.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys (never the keys themselves: their first characters)."""
    from app.access import KeyStore

    store = KeyStore(_settings().database_url)
    try:
        records = store.list(include_revoked=all_keys)
    finally:
        store.close()
    typer.echo(f"{'ID':32}  {'NAME':20}  {'SCOPE':5}  {'PREFIX':12}  MODELS  LIMITS  REVOKED")
    for r in records:
        limits = f"{r['requests_per_minute'] or '-'} rpm/{r['tokens_per_minute'] or '-'} tpm"
        models = ",".join(r["models"]) if r["models"] else "*"
        revoked = r["revoked_at"] or "-"
        typer.echo(
            f"{r['id']:32}  {r['name']:20}  {r['scope']:5}  {r['prefix']:12}  "
            f"{models}  {limits}  {revoked}"
        )


@keys_cli.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
) -> None:
    """Revoke a key (other gateway processes notice within GATEWAY_KEY_CACHE_SECONDS)."""
    from app.access import KeyStore

    store = KeyStore(_settings().database_url)
    try:
        record = store.revoke(key)
    finally:
        store.close()
    if record is None:
        typer.echo(f"Error: no active key with id or name {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {record['name']!r} (id {record['id']})")


USAGE_GROUPS = ("team", "key", "model", "backend", "surface")


def since_moment(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `30m` before `now`, or a date (`2026-12-01`) or RFC 3339 date-time
    (UTC unless it says otherwise); ValueError naming what it takes."""
    match = re.fullmatch(r"(\d{1,4})([dhm])", text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration (7d, 12h, 30m) or a date (2026-12-01)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@cli.command()
def usage(
    group_by: Annotated[str, typer.Option(help="team, key, model, backend or surface.")] = "team",
    since: Annotated[
        str, typer.Option(help="How far back: 7d, 12h, 30m, or a date (2026-12-01).")
    ] = "7d",
    bucket: Annotated[str, typer.Option(help="hour or day (UTC).")] = "day",
) -> None:
    """Print the usage ledger (GATEWAY_DATABASE_URL): requests, failures, tokens and the
    backends' own seconds per bucket and group; with GATEWAY_PRICES, the cost."""
    from app.usage import UsageLedger

    if group_by not in USAGE_GROUPS:
        typer.echo(f"Error: --group-by must be one of {', '.join(USAGE_GROUPS)}", err=True)
        raise typer.Exit(2)
    if bucket not in ("hour", "day"):
        typer.echo("Error: --bucket must be hour or day", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)
    try:
        start = since_moment(since, now)
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    if start > now or now - start > timedelta(days=400):
        typer.echo("Error: --since must be in the past, at most 400 days ago", err=True)
        raise typer.Exit(2)
    settings = _settings()

    async def read() -> list[dict[str, Any]]:
        ledger = UsageLedger(settings.database_url)
        try:
            return await ledger.arows(
                group_by=cast(Any, group_by),
                bucket=cast(Any, bucket),
                since=start,
                until=now,
                prices=settings.prices,
            )
        finally:
            await ledger.aclose()

    rows = asyncio.run(read())
    priced = settings.prices is not None
    head = ["BUCKET", group_by.upper(), "REQUESTS", "FAILURES", "PROMPT_TOKENS",
            "OUTPUT_TOKENS", "BACKEND_S", "LOAD_S"]  # fmt: skip
    if settings.prices is not None:
        head.append(f"COST ({settings.prices.currency})")
    table = [head]
    for row in rows:
        line = [
            row["bucket"], str(row[group_by] if row[group_by] is not None else "-"),
            str(row["requests"]), str(row["failures"]), str(row["prompt_tokens"]),
            str(row["output_tokens"]), f"{row['backend_seconds']:.3f}",
            f"{row['load_seconds']:.3f}",
        ]  # fmt: skip
        if priced:
            line.append(f"{row['cost']:.4f}")
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    for line in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    if not rows:
        typer.echo(f"(no usage since {start.isoformat(timespec='seconds')})")


def _settings() -> Settings:
    from app.settings import Settings

    return Settings()


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database (GATEWAY_DATABASE_URL) to the newest schema."""
    from app.settings import Settings
    from app.storage.db import masked
    from app.storage.migrations import current_revision, upgrade

    url = Settings().database_url
    before = current_revision(url)
    upgrade(url, revision)
    after = current_revision(url)
    typer.echo(f"{masked(url)}: {before or 'empty'} -> {after}")


@cli.command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 11434,
    models: Annotated[
        str, typer.Option(help="Comma-separated model names installed at start (any name).")
    ] = "",
    token_delay_ms: Annotated[float, typer.Option(help="Delay between streamed tokens.")] = 0.0,
    first_token_delay_ms: Annotated[
        float, typer.Option(help="Delay before the first token (model load / prompt eval).")
    ] = 0.0,
    reply_tokens: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Filler engine: answers run to N tokens (or num_predict when smaller).",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="filler: deterministic text; llama-cpp: a real GGUF model run by llama.cpp "
            "(the local-model extra)."
        ),
    ] = "filler",
    gguf: Annotated[
        str | None,
        typer.Option(help="The GGUF file for --engine llama-cpp (default: SmolLM2-135M)."),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(help="Runs that may wait behind the running one (llama-cpp).")
    ] = 8,
    prompt_cache_slots: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Filler engine: prompts cached per loaded model (Ollama's parallel slots; "
            "default: --num-parallel, else 4); prompt_eval_count counts only the tokens past "
            "the longest cached prefix.",
        ),
    ] = None,
    num_parallel: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Runs of one model at once (Ollama's OLLAMA_NUM_PARALLEL); more wait inside "
            "the server, as in Ollama (default: no limit).",
        ),
    ] = None,
    prompt_eval_ms_per_token: Annotated[
        float,
        typer.Option(
            min=0,
            help="Filler engine: milliseconds per evaluated prompt token (prompt_eval_count, "
            "past the prompt cache) before the first token, as a GPU evaluates a prompt.",
        ),
    ] = 0.0,
) -> None:
    """Run the Ollama emulator: a stand-in Ollama server for tests and demos."""
    from app.emulator.config import EmulatorConfig
    from app.emulator.server import serve as serve_emulator

    serve_emulator(
        EmulatorConfig(
            host=host,
            port=port,
            models=[m.strip() for m in models.split(",") if m.strip()],
            token_delay_ms=token_delay_ms,
            first_token_delay_ms=first_token_delay_ms,
            reply_tokens=reply_tokens,
            engine=engine,
            gguf=gguf,
            max_queue=max_queue,
            prompt_cache_slots=prompt_cache_slots,
            num_parallel=num_parallel,
            prompt_eval_ms_per_token=prompt_eval_ms_per_token,
        )
    )


@cli.command()
def openapi(
    output: Annotated[Path, typer.Option(help="Where to write the spec.")] = Path(
        "openapi/openapi.json"
    ),
) -> None:
    """Write the gateway's OpenAPI spec (the committed copy lives in openapi/openapi.json)."""
    from app.main import create_app
    from app.settings import Settings

    spec = create_app(Settings()).openapi()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(spec, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    typer.echo(f"wrote {output}")


def main() -> None:
    from pydantic import ValidationError

    try:
        cli()
    except ValidationError as exc:
        # Bad settings: say which and why in one line each, never quoting a value (some are
        # secrets), instead of a traceback.
        for error in exc.errors(include_input=False, include_url=False):
            where = "GATEWAY_" + "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            prefix = "" if not error["loc"] else f"{where}: "
            typer.echo(f"Error: {prefix}{message}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
