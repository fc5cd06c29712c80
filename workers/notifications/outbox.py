"""The outbox: activities queue messages in the worker's own schema; the dispatcher
delivers them. The dedupe key makes queueing idempotent, so a retried or replayed step
never produces a second message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from services.common.db import Database
from workers.notifications.channels import Channel, OutgoingMessage
from workers.notifications.messages import render

SCHEMA = "journeys"
MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger("mineaction.notifications")


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def queue(
        self, dedupe_key: str, kind: str, recipient: str, language: str, params: dict[str, object]
    ) -> bool:
        """Queue a message; False when this dedupe key was queued before."""
        text = render(kind, language, dict(params))
        async with self.db.transaction() as conn:
            inserted = await conn.fetchval(
                """INSERT INTO outbox (dedupe_key, kind, recipient, language, text)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true""",
                dedupe_key,
                kind,
                recipient,
                language,
                text,
            )
        return bool(inserted)

    async def dispatch(self, channel: Channel, limit: int = 100) -> int:
        """Deliver pending messages; several dispatchers may run, each takes its own rows."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                """SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY queued_at
                   LIMIT $1 FOR UPDATE SKIP LOCKED""",
                limit,
            )
            for row in rows:
                await channel.send(
                    OutgoingMessage(
                        row["dedupe_key"],
                        row["kind"],
                        row["recipient"],
                        row["language"],
                        row["text"],
                    )
                )
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE dedupe_key = ANY($1::text[])",
                [row["dedupe_key"] for row in rows],
            )
        return len(rows)

    async def run_dispatcher(self, channel: Channel, interval: float = 1.0) -> None:
        while True:
            try:
                sent = await self.dispatch(channel)
                if sent:
                    log.info("notifications sent", count=sent)
            except Exception:
                log.exception("notification dispatch failed; will retry")
            await asyncio.sleep(interval)
