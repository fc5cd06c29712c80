"""Capacity pools, reservations and ordered waitlists.

Every change to a pool's numbers happens with the pool row locked (SELECT ... FOR UPDATE),
so concurrent reservations queue on that lock: none can overbook, and the waitlist order
is the order in which requests got the lock. The CHECK (reserved <= capacity) in the
database backs this up. Under the same lock, no request waits for more units than its
pool has: a request never joins a waitlist for more than the capacity (place_request),
and AdjustCapacity never writes capacity off below what a waiting request needs.

Lock order. Changing an assistance that holds or waits for a place locks pool, then
assistance, then need (promotion touches another survivor's assistance and need). A new
request locks its need and then, last, the pool. That cannot deadlock with the first
order: a need whose assistance sits in a pool has an unfinished assistance, so a new
request for it is refused before it ever asks for the pool's lock.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog
import yaml

from services.assistance.catalogue import (
    CANCEL,
    CANCELLED,
    PROMOTE,
    REQUEST,
    WAITLISTED,
    AssistanceTypePlugin,
)
from services.common.db import Connection

log = structlog.get_logger("mineaction.assistance")

SYSTEM_ACTOR = "system"

POOL_COLUMNS = """p.pool_id, p.provider_id, p.type_id, p.model, p.name_en, p.name_az,
    p.capacity, p.reserved, p.sessions, p.waiting AS waitlisted"""


@dataclass(frozen=True)
class Pool:
    pool_id: str
    provider_id: str
    type_id: str
    capacity: int
    reserved: int
    sessions: int | None
    waitlisted: int

    @property
    def free(self) -> int:
        return self.capacity - self.reserved

    @classmethod
    def of(cls, row: asyncpg.Record) -> Pool:
        return cls(
            row["pool_id"],
            row["provider_id"],
            row["type_id"],
            row["capacity"],
            row["reserved"],
            row["sessions"],
            row["waitlisted"],
        )


async def pool_row(conn: Connection, pool_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {POOL_COLUMNS} FROM capacity_pools p WHERE p.pool_id = $1"
        + (" FOR UPDATE" if lock else ""),
        pool_id,
    )


async def choose_pool(
    conn: Connection, type_id: str, provider_id: str, quantity: int
) -> str | None:
    """The caller left the pool open: prefer one that can take the request now (most
    free first), else the shortest waitlist. A preference only; the lock decides."""
    pool_id: str | None = await conn.fetchval(
        f"""SELECT pool_id FROM (SELECT {POOL_COLUMNS} FROM capacity_pools p
               WHERE p.type_id = $1 AND ($2 = '' OR p.provider_id = $2)
                 AND p.capacity >= $3) c
            ORDER BY (c.capacity - c.reserved >= $3 AND c.waitlisted = 0) DESC,
                     c.waitlisted, c.capacity - c.reserved DESC, c.pool_id
            LIMIT 1""",
        type_id,
        provider_id,
        quantity,
    )
    return pool_id


async def place_request(
    conn: Connection,
    *,
    assistance_id: str,
    pool_id: str,
    quantity: int,
    initial_state: str,
    actor: str,
    data_json: str,
) -> int | None:
    """Reserve `quantity` units for a new (provisionally waitlisted) assistance if they are
    free and nobody waits ahead of it (first come, first served), else put it on the
    waitlist; record the request event. Returns 0 when reserved, else the 1-based
    waitlist position; None, writing nothing, when the pool can no longer ever hold
    `quantity` (AdjustCapacity wrote capacity off after the caller read the pool).

    One statement: its UPDATE both locks the pool row and decides on the row's latest
    committed version (READ COMMITTED re-reads a row it had to wait for), and the waitlist
    entry's seq is drawn under that lock, so the waitlist order is the order of arrival at
    the lock. Being last before commit, it keeps the lock as short as it can be."""
    waiting: int | None = await conn.fetchval(
        """WITH pool AS (
               UPDATE capacity_pools SET
                   reserved = reserved + CASE WHEN waiting = 0 AND capacity - reserved >= $3
                                              THEN $3 ELSE 0 END,
                   waiting = waiting + CASE WHEN waiting = 0 AND capacity - reserved >= $3
                                            THEN 0 ELSE 1 END
               WHERE pool_id = $2 AND capacity >= $3 RETURNING waiting),
           placed AS (
               UPDATE assistance SET state = $4, holds_capacity = true
               WHERE assistance_id = $1 AND (SELECT waiting FROM pool) = 0),
           queued AS (
               INSERT INTO waitlist (pool_id, assistance_id, quantity)
               SELECT $2, $1, $3 FROM pool WHERE waiting > 0),
           event AS (
               INSERT INTO assistance_events
                   (assistance_id, seq, from_state, to_state, action, actor, data)
               SELECT $1, 1, '', CASE WHEN waiting = 0 THEN $4 ELSE $5 END, $6, $7, $8::jsonb
               FROM pool)
           SELECT waiting FROM pool""",
        assistance_id,
        pool_id,
        quantity,
        initial_state,
        WAITLISTED,
        REQUEST,
        actor,
        data_json,
    )
    return waiting


async def largest_waiting(conn: Connection, pool_id: str) -> int:
    """The most units any one request on the pool's waitlist needs (0: nobody waits). Read
    with the pool locked, in a statement of its own after the lock was taken, so that it
    sees every request that joined the waitlist before the lock was granted."""
    largest: int = await conn.fetchval(
        "SELECT coalesce(max(quantity), 0) FROM waitlist WHERE pool_id = $1", pool_id
    )
    return largest


async def leave_waitlist(conn: Connection, assistance_id: str) -> None:
    """Take a request off its waitlist; the pool must be locked."""
    await conn.execute(
        """WITH gone AS (DELETE FROM waitlist WHERE assistance_id = $1 RETURNING pool_id)
           UPDATE capacity_pools p SET waiting = waiting - 1 FROM gone
           WHERE p.pool_id = gone.pool_id""",
        assistance_id,
    )


async def release(conn: Connection, pool_id: str, quantity: int) -> None:
    await conn.execute(
        "UPDATE capacity_pools SET reserved = reserved - $2 WHERE pool_id = $1",
        pool_id,
        quantity,
    )


async def promote_waiting(
    conn: Connection, pool_id: str, plugin: AssistanceTypePlugin
) -> list[str]:
    """Give free places to those waiting, strictly in order: the head of the queue is
    never skipped for a smaller request behind it. Returns the promoted assistance ids.
    The pool must be locked; the caller refreshes the promoted needs' state."""
    promoted: list[str] = []
    while True:
        head = await conn.fetchrow(
            """SELECT w.seq, w.assistance_id, w.quantity, p.capacity - p.reserved AS free
               FROM waitlist w JOIN capacity_pools p USING (pool_id)
               WHERE w.pool_id = $1 ORDER BY w.seq LIMIT 1""",
            pool_id,
        )
        if head is None or head["free"] < head["quantity"]:
            return promoted
        await conn.execute("DELETE FROM waitlist WHERE seq = $1", head["seq"])
        await conn.execute(
            """UPDATE capacity_pools SET reserved = reserved + $2, waiting = waiting - 1
               WHERE pool_id = $1""",
            pool_id,
            head["quantity"],
        )
        await conn.execute(
            """UPDATE assistance SET state = $2, holds_capacity = true, updated_at = now()
               WHERE assistance_id = $1""",
            head["assistance_id"],
            plugin.initial_state,
        )
        await record_event(
            conn, head["assistance_id"], "waitlisted", plugin.initial_state, PROMOTE, SYSTEM_ACTOR
        )
        promoted.append(head["assistance_id"])


async def cancel_waiting(
    conn: Connection, pool_id: str, survivor_ids: Collection[str]
) -> list[str]:
    """Cancel the waiting requests of `survivor_ids`, whose consent to data processing no
    longer stands: a place cannot go to them (it would refer them to the provider), and
    held in the queue they would keep it from those behind them. Each is cancelled by
    `system`, the reason in its event. The pool must be locked; returns their needs, for
    the caller to refresh."""
    if not survivor_ids:
        return []
    rows = await conn.fetch(
        """WITH gone AS (
               DELETE FROM waitlist w USING assistance a
               WHERE w.pool_id = $1 AND a.assistance_id = w.assistance_id
                 AND a.survivor_id = ANY($2::text[])
               RETURNING w.assistance_id),
           counted AS (
               UPDATE capacity_pools SET waiting = waiting - (SELECT count(*) FROM gone)
               WHERE pool_id = $1)
           UPDATE assistance a SET state = $3, active = false, updated_at = now()
           FROM gone WHERE a.assistance_id = gone.assistance_id
           RETURNING a.assistance_id, a.need_id""",
        pool_id,
        list(survivor_ids),
        CANCELLED,
    )
    reason = json.dumps({"reason": "the survivor's consent to data processing was withdrawn"})
    for row in rows:
        await record_event(
            conn, row["assistance_id"], WAITLISTED, CANCELLED, CANCEL, SYSTEM_ACTOR, reason
        )
    return [row["need_id"] for row in rows]


async def record_event(
    conn: Connection,
    assistance_id: str,
    from_state: str,
    to_state: str,
    action: str,
    actor: str,
    data_json: str = "{}",
) -> None:
    await conn.execute(
        """INSERT INTO assistance_events
               (assistance_id, seq, from_state, to_state, action, actor, data)
           SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6::jsonb
           FROM assistance_events WHERE assistance_id = $1""",
        assistance_id,
        from_state,
        to_state,
        action,
        actor,
        data_json,
    )


def load_reference_data(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


async def seed_reference_data(
    conn: Connection, data: Mapping[str, Any], catalogue: Mapping[str, AssistanceTypePlugin]
) -> None:
    """Providers and pools from the reference data; existing ones are never changed.
    A pool whose type is not installed is skipped: it would serve nobody; so is one at a
    provider whose kind does not deliver its type (CreateCapacityPool refuses it)."""
    for provider in data["providers"]:
        await conn.execute(
            """INSERT INTO providers (provider_id, name_en, name_az, kind, district_code)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
            provider["provider_id"],
            provider["name"]["en"],
            provider["name"]["az"],
            provider["kind"],
            provider["district_code"],
        )
        for pool in provider["pools"]:
            plugin = catalogue.get(pool["type_id"])
            if plugin is None or not plugin.uses_capacity:
                log.warning("reference pool skipped", pool_id=pool["pool_id"])
                continue
            if plugin.provider_kinds and provider["kind"] not in plugin.provider_kinds:
                log.warning(
                    "reference pool skipped: its provider does not deliver its type",
                    pool_id=pool["pool_id"],
                    provider_kind=provider["kind"],
                )
                continue
            await insert_pool(
                conn,
                pool_id=pool["pool_id"],
                provider_id=provider["provider_id"],
                type_id=pool["type_id"],
                model=plugin.capacity_model,
                name_en=pool["name"]["en"],
                name_az=pool["name"]["az"],
                capacity=pool["capacity"],
                sessions=pool.get("sessions"),
                reason="reference data",
            )


async def insert_pool(
    conn: Connection,
    *,
    pool_id: str,
    provider_id: str,
    type_id: str,
    model: str,
    name_en: str,
    name_az: str,
    capacity: int,
    sessions: int | None,
    reason: str,
) -> bool:
    """Create a pool with its opening capacity on the audit trail; False if it exists."""
    created = await conn.fetchval(
        """INSERT INTO capacity_pools
               (pool_id, provider_id, type_id, model, name_en, name_az, capacity, sessions)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING true""",
        pool_id,
        provider_id,
        type_id,
        model,
        name_en,
        name_az,
        capacity,
        sessions,
    )
    if created and capacity:
        await conn.execute(
            "INSERT INTO capacity_adjustments (pool_id, delta, reason) VALUES ($1, $2, $3)",
            pool_id,
            capacity,
            reason,
        )
    return bool(created)
