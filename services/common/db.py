"""The database: one asyncpg pool per process, each service in its own schema, with
numbered plain-SQL migrations applied at start.

Without DATABASE_URL the process uses an embedded PostgreSQL (pgserver) whose data lives
under the state folder; several processes share the same embedded server.

When PostgreSQL goes away (stopped, restarted, failed over, network cut):
- at start, `Database.open` raises `DatabaseUnreachable` (a ConnectionError) naming the
  server, within `CONNECT_TIMEOUT_SECONDS`; the entry points print it as one line;
- while serving, every use of the pool that meets a lost or refused connection raises
  `Unavailable` (gRPC UNAVAILABLE, reason DATABASE_UNAVAILABLE) instead of a bare asyncpg
  error, so the caller gets a clear, retryable answer and never INTERNAL;
- broken connections never go back into the pool, so once the server is back the same
  process serves again: the pool opens fresh connections on demand;
- `Database.transaction` retries only what is safe: acquiring a connection and BEGIN,
  where nothing has been sent yet. It never replays a unit of work. A loss before COMMIT
  rolled the work back; a loss during COMMIT leaves the outcome unknown, and it is the
  caller's retry with the same request_id that the idempotency key resolves to exactly
  one effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from services.common.config import Settings
from services.common.errors import DomainError, Unavailable

log = structlog.get_logger("mineaction.db")

# A connection from the pool or a plain one: service code takes either.
Connection = asyncpg.Connection | PoolConnectionProxy

COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


# How long opening one connection may take before the server counts as unreachable
# (asyncpg's own default is 60 s, long enough to look like a hang).
CONNECT_TIMEOUT_SECONDS = 5.0

# What a lost, refused or shut-down connection looks like from asyncpg and the socket.
_SERVER_GONE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and "closed mid-operation"
    asyncpg.exceptions.AdminShutdownError,  # 57P01: server stopping or restarting
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    ConnectionError,  # refused, reset, broken pipe
)
# ...and, while connecting, any socket error (no such host or socket file, timeout).
_CANNOT_CONNECT: tuple[type[BaseException], ...] = (*_SERVER_GONE, OSError)
# ...and at start-up, also a refusal by the server (no such database, bad password).
_OPEN_FAILURES: tuple[type[BaseException], ...] = (*_CANNOT_CONNECT, asyncpg.PostgresError)


# How long a connection that failed with a protocol-state error gets to show it was
# closed by the server (see `lost`).
_SETTLE_SECONDS = 0.5
_SETTLE_STEPS = 50


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, after asyncpg has rolled back any open transaction.

    The services keep no session state: every setting is SET LOCAL, every advisory lock
    transaction-scoped, no LISTEN, no cursor outlives its transaction. So the default
    reset (RESET ALL, CLOSE ALL, UNLISTEN, unlock: one more round trip per use of a
    connection) has nothing to undo and is skipped."""


class MigrationError(Exception):
    """A migration folder or the recorded migrations are not what the code expects."""


class DatabaseUnreachable(ConnectionError):
    """PostgreSQL cannot be reached at start-up (a ConnectionError, so the entry points
    print it as one line and exit 1)."""


def server_location(url: str) -> str:
    """Where a DATABASE_URL points, without user or password: host:port/database."""
    parts = urlsplit(url)
    host = parts.hostname or ",".join(parse_qs(parts.query).get("host", [])) or "localhost"
    port = parts.port or 5432
    database = parts.path.lstrip("/") or "postgres"
    return f"{host}:{port}/{database}"


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_closed(conn: Connection) -> bool:
    """Closed, or already taken back by the pool, which it does when a connection closes."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return True


def _discard(conn: Connection) -> None:
    """Close a connection at once so that the pool never hands it out again."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what it was raised from or while handling (a few links at most)."""
    link: BaseException | None = error
    for _ in range(8):
        if link is None:
            return
        yield link
        link = link.__cause__ or link.__context__


def connection_lost(error: BaseException, conn: Connection | None = None) -> bool:
    """Whether `error` means the server is gone rather than the statement being wrong.

    The cause chain counts: asyncpg may report a lost connection as a protocol-state
    error raised while handling it (a rollback on a connection the server just closed).
    A DomainError is already an answer, never a lost connection."""
    for link in _chain(error):
        if isinstance(link, DomainError):
            return False
        if isinstance(link, _SERVER_GONE):
            return True
        # asyncpg says "connection is closed" with a plain InterfaceError.
        if isinstance(link, asyncpg.InterfaceError) and conn is not None and _is_closed(conn):
            return True
    return False


async def lost(error: BaseException, conn: Connection | None) -> bool:
    """connection_lost, and also asyncpg's protocol-state error when the server has closed
    the connection under it.

    When PostgreSQL shuts down it sends each session a FATAL message and then closes the
    socket. A query that starts between the two fails with InternalClientError ("another
    operation is in progress") before asyncpg has seen the close. Such a connection closes
    within moments; a connection that stays open means a real bug, which stays INTERNAL."""
    if connection_lost(error, conn):
        return True
    if conn is None or not any(isinstance(e, asyncpg.InternalClientError) for e in _chain(error)):
        return False
    for _ in range(_SETTLE_STEPS):
        if _is_closed(conn):
            return True
        await asyncio.sleep(_SETTLE_SECONDS / _SETTLE_STEPS)
    return _is_closed(conn)


def _unavailable(what: str, error: BaseException) -> Unavailable:
    root = next((e for e in _chain(error) if isinstance(e, _CANNOT_CONNECT)), error)
    return Unavailable(
        f"database unavailable: {what} ({_reason(root)}); retry later, "
        "mutating calls with the same request_id",
        reason="DATABASE_UNAVAILABLE",
    )


async def _quietly(release: Awaitable[object]) -> None:
    """Give a connection back. If that fails (it is reset first, and the server may have
    closed it meanwhile), asyncpg has already closed it, so it is never reused; the work
    done on it stands or fell on its own, and the caller is not told about the release."""
    try:
        await release
    except Exception as error:
        log.warning("a connection was closed instead of reused", error=_reason(error))


class _GuardedAcquire(PoolAcquireContext):
    """`async with pool.acquire() as conn:` that turns a lost connection into Unavailable,
    whether it is lost while connecting or inside the block; a connection lost while being
    given back is only logged."""

    __slots__ = ()

    async def __aexit__(self, *exc: object) -> None:
        exc_val = exc[1] if len(exc) > 1 and isinstance(exc[1], BaseException) else None
        conn = self.connection
        gone = exc_val is not None and await lost(exc_val, conn)
        if gone and conn is not None:
            _discard(conn)  # half-closed: never reset it, never hand it out again
        await _quietly(super().__aexit__(*exc))
        if gone and exc_val is not None:
            raise _unavailable("the connection was lost mid-call", exc_val) from exc_val


class GuardedPool(asyncpg.Pool):
    """The process's pool: asyncpg's, but a lost or refused connection is Unavailable.

    asyncpg already discards a closed connection on release and reconnects its holder on
    the next acquire; this class only makes the failure a clear, retryable answer."""

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return _GuardedAcquire(self, timeout)

    # asyncpg's one internal path for both `async with pool.acquire()` and `await`.
    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy:  # noqa: ASYNC109
        try:
            return await super()._acquire(timeout)  # type: ignore[misc, no-any-return]
        except _CANNOT_CONNECT as error:
            raise _unavailable("cannot connect to PostgreSQL", error) from error


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
        """Migrate, then open the pool. An unreachable server raises DatabaseUnreachable
        within about CONNECT_TIMEOUT_SECONDS, naming the server (never the password)."""
        migrations = load_migrations(COMMON_MIGRATIONS, migrations_dir)
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
        except _OPEN_FAILURES as error:
            raise DatabaseUnreachable(
                f"cannot reach PostgreSQL at {server_location(url)}: {_reason(error)}; "
                "check DATABASE_URL and that the server is running"
            ) from None
        try:
            await migrate(conn, schema, migrations)
        finally:
            await conn.close()
        pool = GuardedPool(
            url,
            min_size=min_size,
            max_size=max_size,
            max_queries=50_000,
            max_inactive_connection_lifetime=300.0,
            loop=None,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            timeout=CONNECT_TIMEOUT_SECONDS,
            server_settings={"search_path": schema, "application_name": f"mineaction-{schema}"},
            reset=keep_session,
        )
        try:
            await pool
        except Unavailable as error:
            raise DatabaseUnreachable(
                f"cannot reach PostgreSQL at {server_location(url)}: {error.message}"
            ) from None
        return cls(pool, schema)

    async def _begin(self) -> tuple[PoolConnectionProxy, Any]:
        """A pooled connection inside a fresh transaction. A pooled connection that turns
        out to be dead at BEGIN is dropped and BEGIN tried once more on a new one: nothing
        had been sent, so this retry is always safe."""
        for attempt in (1, 2):
            conn: PoolConnectionProxy = await self.pool.acquire()
            tx = conn.transaction()
            try:
                await tx.start()
            except BaseException as error:
                gone = await lost(error, conn)
                if gone:
                    _discard(conn)
                await self._release(conn)
                if not gone:
                    raise
                if attempt == 2:
                    raise _unavailable("the connection was lost at BEGIN", error) from error
                log.warning("dropped a dead pooled connection", error=_reason(error))
                continue
            return conn, tx
        raise AssertionError("unreachable")

    async def _release(self, conn: PoolConnectionProxy) -> None:
        await _quietly(self.pool.release(conn))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Every write goes through here: one connection, one transaction.

        A lost connection raises Unavailable: before COMMIT nothing was written; during
        COMMIT the outcome is unknown and the message says so."""
        conn, tx = await self._begin()
        try:
            try:
                yield conn
            except BaseException as error:
                if await lost(error, conn):
                    _discard(conn)  # never back into the pool, never a rollback on it
                    raise _unavailable(
                        "the connection was lost before commit, nothing was written", error
                    ) from error
                if not _is_closed(conn):
                    try:
                        await tx.rollback()
                    except Exception:
                        _discard(conn)  # a connection in an unknown state is not reused
                raise
            try:
                await tx.commit()
            except Exception as error:
                if await lost(error, conn):
                    _discard(conn)
                    raise _unavailable(
                        "the connection was lost during commit, the outcome is unknown", error
                    ) from error
                raise
        finally:
            await self._release(conn)

    async def close(self) -> None:
        await self.pool.close()
