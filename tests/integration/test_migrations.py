"""Migrations: numbered plain SQL, applied once, recorded, safe when two replicas start
at the same moment, and an edited migration stops start-up instead of drifting."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.common.db import (
    COMMON_MIGRATIONS,
    Database,
    MigrationError,
    load_migrations,
    migrate,
)


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
        common = sorted(f"common/{p.name}" for p in COMMON_MIGRATIONS.glob("*.sql"))
        assert [r["name"] for r in recorded] == [
            *common,
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


def copy_eligibility_migrations(folder: Path, last: str) -> Path:
    """The eligibility service's migrations up to number `last`, copied into `folder`."""
    folder.mkdir(exist_ok=True)
    for migration in sorted(Path("services/eligibility/migrations").glob("*.sql")):
        if migration.name[:3] <= last:
            (folder / migration.name).write_text(migration.read_text())
    return folder


async def test_follow_ups_recorded_before_they_named_a_loan_are_kept(
    database_url: str, tmp_path: Path
) -> None:
    """004_follow_ups_per_loan.sql on a database with follow-ups: they stay, with an empty
    loan id, and the survivor can then be followed up after a loan as well."""
    folder = copy_eligibility_migrations(tmp_path / "eligibility", last="002")
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    before = await Database.open(database_url, schema, folder)
    try:
        await before.pool.execute(
            """INSERT INTO survivors (survivor_id, intake, district_code, consent_given_on)
               VALUES ('srv-old', '{}', 'saatli', '2024-01-01')"""
        )
        await before.pool.execute(
            """INSERT INTO follow_ups (survivor_id, months_after, household_income_minor,
                   working, family_members_supported, recorded_by, recorded_on)
               VALUES ('srv-old', 6, 90000, true, 4, 'cw-07', '2025-06-01')"""
        )
    finally:
        await before.close()
    copy_eligibility_migrations(folder, last="999")
    after = await Database.open(database_url, schema, folder)
    try:
        rows = await after.pool.fetch(
            "SELECT survivor_id, loan_id, months_after, family_members_supported FROM follow_ups"
        )
        assert [tuple(r) for r in rows] == [("srv-old", "", 6, 4)]
        insert = """INSERT INTO follow_ups (survivor_id, loan_id, months_after,
                        household_income_minor, working, family_members_supported,
                        recorded_by, recorded_on)
                    VALUES ('srv-old', $1, 6, 90000, true, 4, 'cw-07', '2026-06-01')"""
        await after.pool.execute(insert, "loan-2")
        with pytest.raises(asyncpg.UniqueViolationError):
            await after.pool.execute(insert, "loan-2")
        with pytest.raises(asyncpg.UniqueViolationError):
            await after.pool.execute(insert, "")
    finally:
        await after.close()
