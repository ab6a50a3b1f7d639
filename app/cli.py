"""The `ollama-gateway` command: serve, emulator, openapi, migrate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

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
) -> None:
    """Run the gateway under uvicorn."""
    import uvicorn

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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
    )


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
    cli()


if __name__ == "__main__":
    main()
