"""Calls made to queue behind a row lock another session holds: each then acts on what
the one before it committed, as concurrent callers do at their worst."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from services.common.db import Database


async def queued_behind(
    db: Database, lock: str, key: str, *calls: Awaitable[Any], waiting: int = 0
) -> list[Any]:
    """Run `calls` while another session holds the row lock `lock` (a SELECT ... FOR
    UPDATE taking `key`), and let it go once `waiting` of them (default: all) wait for
    it. Returns each call's answer or error."""
    waiting = waiting or len(calls)
    async with db.pool.acquire() as holder, holder.transaction():
        await holder.execute(lock, key)
        tasks = [asyncio.ensure_future(call) for call in calls]
        for _ in range(600):  # 30 s: on a machine loaded by other work 10 s fell short
            await asyncio.sleep(0.05)
            await holder.execute("SELECT pg_stat_clear_snapshot()")  # fresh, in a transaction
            locked_out = await holder.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND datname = current_database()"""
            )
            if locked_out >= waiting:
                break
        else:
            # A call that ended instead (refused at once) never waits: say how it ended.
            ended = [t.exception() or t.result() for t in tasks if t.done()]
            raise AssertionError(
                f"only {locked_out} of {waiting} calls reached the lock; ended: {ended}"
            )
    return list(await asyncio.gather(*tasks, return_exceptions=True))
