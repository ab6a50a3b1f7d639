"""The `ollama-gateway` command: serve, worker, keys, migrate, emulator, openapi."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
) -> None:
    """Run the gateway under uvicorn."""
    import uvicorn

    from app.logging_setup import log_config
    from app.main import create_app
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
            url = stack.enter_context(_local_model_backend(gguf))
            settings.backends = [f"local={url}"]
            typer.echo(f"local model served by the emulator at {url}", err=True)
        if workers is not None:
            settings.workers = workers
        _welcome(settings)
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
            uvicorn.run(create_app(settings), **options)
            return
        # Each worker process builds its app from the environment.
        os.environ.update(
            GATEWAY_HOST=settings.host,
            GATEWAY_PORT=str(settings.port),
            GATEWAY_BACKENDS=",".join(settings.backends),
        )
        with _metrics_directory():
            uvicorn.run("app.main:create_app", factory=True, workers=settings.workers, **options)


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

    from app.logging_setup import log_config
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
    from app import telemetry, telemetry_setup
    from app.main import build_services

    telemetry_setup.configure(trace_content=settings.trace_content)
    services = build_services(settings)
    jobs, manager = services.jobs, services.manager
    with telemetry.suppressed():  # polling makes no trace; each job continues its own
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
        await manager.aclose()
        await services.outputs.aclose()
        telemetry_setup.shutdown()


def _end_with_parent() -> None:
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _local_model_backend(gguf: str | None) -> Iterator[str]:
    """The engine-backed emulator as a child process on a free loopback port."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "app.cli", "emulator", "--engine", "llama-cpp",
            "--port", str(port)]  # fmt: skip
    if gguf:
        args += ["--gguf", gguf]
    # uvicorn re-raises the signal that stopped it, so a `finally` may never run: the
    # child is also told to end when this process does (Linux's parent-death signal).
    child = subprocess.Popen(args, preexec_fn=_end_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if child.poll() is not None:
                raise typer.Exit(1)  # it said why on stderr
            try:
                with urllib.request.urlopen(url + "/api/version", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    typer.echo("Error: the local model did not start within 120 s", err=True)
                    raise typer.Exit(1) from None
                time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


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
        "your choosing, create a key first (ollama-gateway keys create --scope admin "
        "--name NAME), bind to 127.0.0.1, or set GATEWAY_ALLOW_ANONYMOUS=true."
    )


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
) -> None:
    """Create a key; it is printed once, as the last word of the output."""
    from app.access import KeyStore

    store = KeyStore(_settings().database_url)
    try:
        new = store.create(
            name,
            scope,
            models=models.split(",") if models is not None else None,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
        )
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        store.close()
    record = new.record
    allowed = ",".join(record["models"]) if record["models"] else "any model"
    typer.echo(f"created {record['scope']} key {record['name']!r} (id {record['id']}, {allowed})")
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
        int,
        typer.Option(
            min=1,
            help="Filler engine: prompts cached per loaded model (Ollama's parallel slots); "
            "prompt_eval_count counts only the tokens past the longest cached prefix.",
        ),
    ] = 4,
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
