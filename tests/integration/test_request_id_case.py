"""Request ids stored in capitals before they were read in lower case: the migration that
moves them (services/common/migrations/001) lets a retry find its first answer, and
never fails on a request recorded twice in two spellings."""

from __future__ import annotations

from services.common.db import COMMON_MIGRATIONS
from tests.conftest import Cluster
from tests.lending_helpers import lending_db

MIGRATION = (COMMON_MIGRATIONS / "001_request_ids_in_lower_case.sql").read_text()


async def test_keys_stored_in_capitals_move_to_lower_case(cluster: Cluster) -> None:
    # Fixed ids (the transaction is rolled back): two spellings that surely differ.
    only_upper = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    both = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
    two_spellings = "abcdef01-2345-4678-9abc-def012345678"
    rows = [
        (only_upper.upper(), 1),
        (both.upper(), 2),
        (both, 3),
        (two_spellings.upper(), 4),
        ("Abcdef01-2345-4678-9abc-def012345678", 5),
    ]
    async with lending_db(cluster).pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for request_id, order in rows:
                await conn.execute(
                    """INSERT INTO idempotency_keys (request_id, method, payload_hash, response,
                                                   created_at)
                       VALUES ($1, 'test', '\\x00', $2, now() + make_interval(secs => $3))""",
                    request_id,
                    str(order).encode(),
                    order,
                )
            await conn.execute(MIGRATION)
            stored: dict[str, bytes] = {
                r["request_id"]: r["response"]
                for r in await conn.fetch(
                    "SELECT request_id, response FROM idempotency_keys WHERE method = 'test'"
                )
            }
        finally:
            await transaction.rollback()
    assert stored[only_upper] == b"1"
    assert stored[both] == b"3" and stored[both.upper()] == b"2"  # both kept, lower first
    assert stored[two_spellings] == b"4"  # the earliest spelling takes the name
    assert stored["Abcdef01-2345-4678-9abc-def012345678"] == b"5"
