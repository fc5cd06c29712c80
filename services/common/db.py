"""The database: one asyncpg pool per process, each service in its own schema, with
numbered plain-SQL migrations applied at start.

Without DATABASE_URL the process uses an embedded PostgreSQL (pgserver) whose data lives
under the state folder; several processes share the same embedded server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from services.common.config import Settings

log = structlog.get_logger("mineaction.db")

# A connection from the pool or a plain one: service code takes either.
Connection = asyncpg.Connection | PoolConnectionProxy

COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class MigrationError(Exception):
    """A migration folder or the recorded migrations are not what the code expects."""


def embedded_postgres_url(state_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL under the state folder."""
    import pgserver  # imported lazily: only the embedded default needs it

    data_dir = (state_dir / "postgres").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
    return str(server.get_uri())


def database_url(settings: Settings) -> str:
    return settings.database_url or embedded_postgres_url(settings.state_dir)


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(*folders: Path) -> list[Migration]:
    """Common migrations first, then the service's, each folder in numeric order."""
    migrations: list[Migration] = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".sql")
        for path in files:
            if not _MIGRATION_NAME.match(path.name):
                raise MigrationError(f"migration file name must be NNN_name.sql: {path}")
            migrations.append(Migration(f"{folder.parent.name}/{path.name}", path.read_text()))
    return migrations


async def fetch_one(conn: Connection | asyncpg.Pool, query: str, *args: object) -> asyncpg.Record:
    """fetchrow for statements that always return a row (INSERT ... RETURNING)."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError(f"expected a row from: {query.split()[0]} ...")
    return row


async def migrate(conn: Connection, schema: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations not yet recorded in `schema`; return how many were applied.

    A transaction-scoped advisory lock makes replicas that start together take turns.
    An applied migration whose file has since changed stops start-up.
    """
    if not _SCHEMA_NAME.match(schema):
        raise MigrationError(f"bad schema name {schema!r}")
    applied_now = 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(f"SET LOCAL search_path TO {schema}")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        recorded = {
            r["name"]: r["checksum"]
            for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
        }
        for migration in migrations:
            if migration.name in recorded:
                if recorded[migration.name] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} changed after it was applied to "
                        f"schema {schema}; add a new migration instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )
            applied_now += 1
            log.info("migration applied", schema=schema, migration=migration.name)
    return applied_now


class Database:
    """The process's pool, bound to one service schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    @classmethod
    async def open(
        cls, url: str, schema: str, migrations_dir: Path, *, min_size: int = 1, max_size: int = 10
    ) -> Database:
        migrations = load_migrations(COMMON_MIGRATIONS, migrations_dir)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, schema, migrations)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            server_settings={"search_path": schema, "application_name": f"mineaction-{schema}"},
        )
        return cls(pool, schema)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Every write goes through here: one connection, one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def close(self) -> None:
        await self.pool.close()
