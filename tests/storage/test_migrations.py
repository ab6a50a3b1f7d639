"""Migrations: every step up and down, the schema check, and no drift from the models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from app.cli import cli
from app.storage import migrations
from app.storage.tables import Base


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def test_every_migration_goes_up_and_down_step_by_step(empty_db_url: str) -> None:
    revisions = _revisions()
    assert revisions[-1] == migrations.head_revision()
    for revision in revisions:
        migrations.upgrade(empty_db_url, revision)
        assert migrations.current_revision(empty_db_url) == revision
    for previous in [*reversed(revisions[:-1]), None]:
        migrations.downgrade(empty_db_url, previous or "base")
        assert migrations.current_revision(empty_db_url) == previous
    migrations.upgrade(empty_db_url)
    assert migrations.is_up_to_date(empty_db_url)


def test_models_and_migrations_do_not_drift(db_url: str) -> None:
    async def diff() -> list[object]:
        engine = create_async_engine(db_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}),
                        Base.metadata,
                    )
                )
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []


def test_a_new_database_is_created_and_an_old_one_refused(empty_db_url: str) -> None:
    assert migrations.ensure_schema(empty_db_url) == "created"
    assert migrations.ensure_schema(empty_db_url) == "up to date"
    migrations.downgrade(empty_db_url, "base")
    # An alembic_version table without a revision and no other tables counts as new.
    assert migrations.ensure_schema(empty_db_url) == "created"


def test_an_out_of_date_schema_is_refused_unless_upgrading(empty_db_url: str) -> None:
    revisions = _revisions()
    if len(revisions) < 2:
        # With one revision, fake an older schema: a table of ours but no version.
        migrations.upgrade(empty_db_url)
        migrations.downgrade(empty_db_url, "base")

        async def make_table() -> None:
            engine = create_async_engine(empty_db_url, poolclass=NullPool)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("CREATE TABLE executions (id VARCHAR(32))")
            await engine.dispose()

        asyncio.run(make_table())
    else:
        migrations.upgrade(empty_db_url, revisions[-2])
    with pytest.raises(migrations.SchemaOutOfDate, match="ollama-gateway migrate"):
        migrations.ensure_schema(empty_db_url)


async def test_migration_functions_work_inside_a_running_loop(empty_db_url: str) -> None:
    assert migrations.current_revision(empty_db_url) is None
    assert not migrations.is_up_to_date(empty_db_url)
    migrations.upgrade(empty_db_url)
    assert migrations.current_revision(empty_db_url) == migrations.head_revision()
    assert migrations.is_up_to_date(empty_db_url)


def test_migrate_command_creates_the_database_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/not/yet/there/gateway.db"
    monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
    outcome = CliRunner().invoke(cli, ["migrate"])
    assert outcome.exit_code == 0, outcome.output
    assert f"empty -> {migrations.head_revision()}" in outcome.output
    assert migrations.is_up_to_date(url)
    again = CliRunner().invoke(cli, ["migrate"])
    assert again.exit_code == 0 and "-> " + migrations.head_revision() in again.output


def test_migrate_command_upgrades_an_empty_database(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", empty_db_url)
    outcome = CliRunner().invoke(cli, ["migrate"])
    assert outcome.exit_code == 0, outcome.output
    assert migrations.is_up_to_date(empty_db_url)
