"""Migrations: numbered plain SQL, applied once, recorded, safe when two replicas start
at the same moment, and an edited migration stops start-up instead of drifting."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.common.db import Database, MigrationError, load_migrations, migrate


def write_migrations(folder: Path) -> Path:
    folder.mkdir()
    (folder / "001_survivors.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);\n")
    (folder / "002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;\n")
    return folder


async def test_two_replicas_starting_together_apply_each_migration_once(
    database_url: str, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path / "migrations")
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    first, second = await asyncio.gather(
        Database.open(database_url, schema, folder), Database.open(database_url, schema, folder)
    )
    try:
        recorded = await first.pool.fetch("SELECT name FROM schema_migrations ORDER BY name")
        assert [r["name"] for r in recorded] == [
            "common/000_idempotency_keys.sql",
            f"{tmp_path.name}/001_survivors.sql",  # named after the owning service's folder
            f"{tmp_path.name}/002_more.sql",
        ]
        await first.pool.execute("INSERT INTO things (id, name) VALUES (1, 'x')")
        conn = await asyncpg.connect(database_url)
        try:
            again = await migrate(conn, schema, load_migrations(folder))
        finally:
            await conn.close()
        assert again == 0
    finally:
        await first.close()
        await second.close()


async def test_an_edited_migration_stops_start_up(database_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations")
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    (await Database.open(database_url, schema, folder)).pool.terminate()
    (folder / "002_more.sql").write_text("ALTER TABLE things ADD COLUMN label text;\n")
    with pytest.raises(MigrationError, match=r"002_more\.sql changed after it was applied"):
        await Database.open(database_url, schema, folder)


def test_a_badly_named_migration_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "add_things.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"NNN_name\.sql"):
        load_migrations(folder)
