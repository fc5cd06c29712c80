"""Idempotent mutations through a caller-chosen request_id.

The key row is inserted first, inside the caller's transaction. A concurrent duplicate
blocks on the primary key until the first transaction ends, then reads the stored answer;
if the first one rolled back, the duplicate proceeds as if it were first. So fifty
concurrent duplicates have exactly one effect.

The stored answer is written by the same statement as the call's audit entry, in the
transaction of the effect (see services/common/audit.py, PendingAudit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from services.common import audit
from services.common.db import Connection, Database
from services.common.errors import AlreadyExists

ResponseT = TypeVar("ResponseT", bound=Message)

_CLAIM = """INSERT INTO idempotency_keys (request_id, method, payload_hash)
            VALUES ($1, $2, $3) ON CONFLICT (request_id) DO NOTHING RETURNING true"""
_STORED = "SELECT method, payload_hash, response FROM idempotency_keys WHERE request_id = $1"
_SEEN = "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE request_id = $1)"
_STORE = "UPDATE idempotency_keys SET response = $2 WHERE request_id = $1"
_STORE_AND_AUDIT = f"WITH audit AS ({audit.insert_statement(3)})\n{_STORE}"


def payload_hash(request: Message) -> bytes:
    """Hash of the request without its request_id, stable across equal payloads."""
    # Cleared and put back around the serialization instead of hashing a copy: nothing
    # else runs in between (no await).
    request_id: str = request.request_id  # type: ignore[attr-defined]
    request.ClearField("request_id")
    try:
        return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
    finally:
        request.request_id = request_id  # type: ignore[attr-defined]


def method_of(response_type: type[Message]) -> str:
    """The method recorded with the key: the RPC's name, from its response type."""
    return response_type.DESCRIPTOR.name.removesuffix("Response")


def check_replay(
    stored_method: str | None,
    stored_hash: bytes | None,
    *,
    request_id: str,
    method: str,
    digest: bytes,
) -> None:
    """A request_id already used is answered again only for the same method and payload."""
    if stored_method != method or bytes(stored_hash or b"") != digest:
        raise AlreadyExists(
            f"request_id {request_id} was already used for a different request",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": request_id},
        )


def replayed(
    stored: tuple[str | None, bytes | None, bytes | None] | None,
    *,
    request_id: str,
    method: str,
    digest: bytes,
    response_type: type[ResponseT],
) -> ResponseT:
    """The first answer for a request_id already used: (method, payload hash, response)
    as stored. A different method or payload is refused."""
    method_stored, hash_stored, response = stored or (None, None, None)
    check_replay(method_stored, hash_stored, request_id=request_id, method=method, digest=digest)
    return response_type.FromString(bytes(response or b""))


async def seen(db: Connection | asyncpg.Pool, request_id: str) -> bool:
    """The request_id was used already (committed): its call gets its first answer, and
    checks made only for a new request are skipped."""
    return bool(await db.fetchval(_SEEN, request_id))


async def store_response(conn: Connection, request_id: str, response: Message) -> None:
    """Store the first answer, and with it the call's OK audit entry (one statement)."""
    answer = response.SerializeToString(deterministic=True)
    entry = audit.to_write_in_transaction()
    if entry is None:
        await conn.execute(_STORE, request_id, answer)
        return
    await conn.execute(_STORE_AND_AUDIT, request_id, answer, *entry.arguments())
    audit.written_in_transaction()


async def idempotent(
    conn: Connection,
    *,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    effect: Callable[[], Awaitable[ResponseT]],
) -> ResponseT:
    """Run `effect` once per request_id; must be called inside a transaction. The caller
    calls `audit.transaction_committed()` once that transaction has committed."""
    request_id: str = request.request_id  # type: ignore[attr-defined]
    digest = payload_hash(request)
    first = await conn.fetchval(_CLAIM, request_id, method, digest)
    if not first:
        row = await conn.fetchrow(_STORED, request_id)
        return replayed(
            None if row is None else (row["method"], row["payload_hash"], row["response"]),
            request_id=request_id,
            method=method,
            digest=digest,
            response_type=response_type,
        )
    response = await effect()
    await store_response(conn, request_id, response)
    return response


async def once_per_request(
    db: Database,
    request: Message,
    response_type: type[ResponseT],
    effect: Callable[[Connection], Awaitable[ResponseT]],
) -> ResponseT:
    """The shape of every mutating RPC: one transaction, run at most once per request_id."""
    async with db.transaction() as conn:
        response = await idempotent(
            conn,
            method=method_of(response_type),
            request=request,
            response_type=response_type,
            effect=lambda: effect(conn),
        )
    audit.transaction_committed()
    return response
