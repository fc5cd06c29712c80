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
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from services.common import audit
from services.common.db import Connection, Database
from services.common.errors import AlreadyExists

ResponseT = TypeVar("ResponseT", bound=Message)

_CLAIM = """INSERT INTO idempotency_keys (request_id, method, payload_hash)
            VALUES ($1, $2, $3) ON CONFLICT (request_id) DO NOTHING RETURNING true"""
_STORED = "SELECT method, payload_hash, response FROM idempotency_keys WHERE request_id = $1"
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


@dataclass(frozen=True)
class Writes:
    """An effect's own writes, deferred to the statement that stores the answer (one
    round trip instead of several, in the same transaction): `ctes(first)` gives
    data-modifying common table expressions, `name AS (INSERT ...), ...`, whose
    parameters are numbered from $first, in the order of `arguments`."""

    ctes: Callable[[int], str]
    arguments: tuple[object, ...]


async def store_response(
    conn: Connection, request_id: str, response: Message, writes: Writes | None = None
) -> None:
    """Store the first answer, and with it the call's OK audit entry and the effect's
    deferred writes (one statement)."""
    answer = response.SerializeToString(deterministic=True)
    entry = audit.to_write_in_transaction()
    if writes is None:
        if entry is None:
            await conn.execute(_STORE, request_id, answer)
            return
        await conn.execute(_STORE_AND_AUDIT, request_id, answer, *entry.arguments())
        audit.written_in_transaction()
        return
    ctes = [writes.ctes(3)]
    arguments = [request_id, answer, *writes.arguments]
    if entry is not None:
        ctes.append(f"audit AS ({audit.insert_statement(3 + len(writes.arguments))})")
        arguments += entry.arguments()
    await conn.execute(f"WITH {', '.join(ctes)}\n{_STORE}", *arguments)
    if entry is not None:
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

    async def with_no_writes() -> tuple[ResponseT, Writes | None]:
        return await effect(), None

    return await _idempotent(conn, method, request, response_type, with_no_writes)


async def _idempotent(
    conn: Connection,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    effect: Callable[[], Awaitable[tuple[ResponseT, Writes | None]]],
) -> ResponseT:
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
    response, writes = await effect()
    await store_response(conn, request_id, response, writes)
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


async def once_per_request_deferred(
    db: Database,
    request: Message,
    response_type: type[ResponseT],
    effect: Callable[[Connection], Awaitable[tuple[ResponseT, Writes | None]]],
) -> ResponseT:
    """`once_per_request` for an effect that hands back its writes with its answer: they
    run in the statement that stores the answer, so a call is one round trip shorter per
    write. The effect may still read (and lock) before it returns."""
    async with db.transaction() as conn:
        response = await _idempotent(
            conn, method_of(response_type), request, response_type, lambda: effect(conn)
        )
    audit.transaction_committed()
    return response
