"""Idempotent mutations through a caller-chosen request_id.

The key row is inserted first, inside the caller's transaction. A concurrent duplicate
blocks on the primary key until the first transaction ends, then reads the stored answer;
if the first one rolled back, the duplicate proceeds as if it were first. So fifty
concurrent duplicates have exactly one effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from services.common.db import Connection, Database
from services.common.errors import AlreadyExists

ResponseT = TypeVar("ResponseT", bound=Message)


def payload_hash(request: Message) -> bytes:
    """Hash of the request without its request_id, stable across equal payloads."""
    payload = type(request)()
    payload.CopyFrom(request)
    payload.ClearField("request_id")
    return hashlib.sha256(payload.SerializeToString(deterministic=True)).digest()


async def idempotent(
    conn: Connection,
    *,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    effect: Callable[[], Awaitable[ResponseT]],
) -> ResponseT:
    """Run `effect` once per request_id; must be called inside a transaction."""
    request_id: str = request.request_id  # type: ignore[attr-defined]
    digest = payload_hash(request)
    first = await conn.fetchval(
        """INSERT INTO idempotency_keys (request_id, method, payload_hash)
           VALUES ($1, $2, $3) ON CONFLICT (request_id) DO NOTHING RETURNING true""",
        request_id,
        method,
        digest,
    )
    if not first:
        row = await conn.fetchrow(
            "SELECT method, payload_hash, response FROM idempotency_keys WHERE request_id = $1",
            request_id,
        )
        if row is None or row["method"] != method or bytes(row["payload_hash"]) != digest:
            raise AlreadyExists(
                f"request_id {request_id} was already used for a different request",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id},
            )
        return response_type.FromString(bytes(row["response"]))
    response = await effect()
    await conn.execute(
        "UPDATE idempotency_keys SET response = $2 WHERE request_id = $1",
        request_id,
        response.SerializeToString(deterministic=True),
    )
    return response


async def once_per_request(
    db: Database,
    request: Message,
    response_type: type[ResponseT],
    effect: Callable[[Connection], Awaitable[ResponseT]],
) -> ResponseT:
    """The shape of every mutating RPC: one transaction, run at most once per request_id.
    The method recorded with the key is the RPC's name, from its response type."""
    method = response_type.DESCRIPTOR.name.removesuffix("Response")
    async with db.transaction() as conn:
        return await idempotent(
            conn,
            method=method,
            request=request,
            response_type=response_type,
            effect=lambda: effect(conn),
        )
