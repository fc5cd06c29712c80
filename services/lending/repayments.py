"""RecordRepayment calls that arrive together, written by one statement in one transaction
(lending_repay_many, migration 011; services/common/group_commit.py).

Each repayment still runs lending_repay_once (migrations 009, 025): the key claimed first,
the repayment, the answer stored with the key and the audit entry; or a refusal, found
before anything but the key is written, which deletes the key and leaves nothing behind.
What a caller sees is what one statement per call gives; the group shares the round trip
and the commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg

from mineaction.lending.v1 import lending_service_pb2 as pb
from services.common import audit, idempotency
from services.common.db import Database
from services.common.group_commit import GroupCommit

METHOD = idempotency.method_of(pb.RecordRepaymentResponse)
# A group holds its loans' locks until it commits: it is kept to a size that commits in
# milliseconds.
MAX_GROUP = 32
# One group in the database at a time: calls that arrive meanwhile make the next, larger
# group, and PostgreSQL spends less per repayment (measured with the bench's alternating
# rounds on a quiet machine: ratio to the bare transaction 39-43% with 4 in flight,
# 38-58% with 2, 44-53% with 1; throughput the same). The price: a group waits for the
# one before it, so a repayment that waits on a lock holds up this process's repayments
# behind it: a loan locked by a write-off, withdrawal or pause being recorded (milliseconds),
# a loan or request_id held by another replica's group (its statement, milliseconds; a
# deadlock between two replicas' groups, about a second until PostgreSQL undoes one).
IN_FLIGHT = 1
_REPAY_MANY = "SELECT * FROM lending_repay_many(" + ", ".join(f"${n}" for n in range(1, 11)) + ")"


@dataclass
class Repayment:
    request: pb.RecordRepaymentRequest
    paid_on: date
    digest: bytes
    transaction_id: str
    audit: audit.PendingAudit | None


@dataclass(frozen=True)
class Outcome:
    """One repayment's row from lending_repay_many."""

    outcome: str  # OK, REPLAY, or lending_repay_once's refusal
    stored_method: str | None
    stored_payload_hash: bytes | None
    answer: bytes | None
    detail: dict[str, object]


class RepaymentGroups:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._group: GroupCommit[Repayment, Outcome] = GroupCommit(
            self._run, max_batch=MAX_GROUP, in_flight=IN_FLIGHT
        )

    async def record(self, repayment: Repayment) -> Outcome:
        return await self._group.submit(repayment)

    async def _run(self, calls: Sequence[Repayment]) -> Sequence[Outcome | BaseException]:
        try:
            return await self._write(calls)
        except asyncpg.DeadlockDetectedError:
            # Two groups that reused one request_id for different loans can wait on each
            # other; PostgreSQL undid this one. One at a time, they cannot.
            return [await self._alone(call) for call in calls]

    async def _alone(self, call: Repayment) -> Outcome | BaseException:
        try:
            return (await self._write([call]))[0]
        except Exception as error:  # this call's own failure
            return error

    async def _write(self, calls: Sequence[Repayment]) -> list[Outcome]:
        entries = [c.audit.ok_entry().as_json() if c.audit else None for c in calls]
        rows = await self.db.pool.fetch(
            _REPAY_MANY,
            [c.request.request_id for c in calls],
            METHOD,
            [c.digest for c in calls],
            [c.request.loan_id for c in calls],
            [c.request.amount_minor for c in calls],
            [c.paid_on for c in calls],
            [c.request.received_by for c in calls],
            [c.request.channel for c in calls],
            [c.transaction_id for c in calls],
            json.dumps(entries),
        )
        outcomes: list[Outcome | None] = [None] * len(calls)
        for row in rows:
            outcomes[row["call_position"] - 1] = Outcome(
                row["outcome"],
                row["stored_method"],
                row["stored_payload_hash"],
                row["answer"],
                json.loads(row["detail"] or "{}"),
            )
        for call, outcome in zip(calls, outcomes, strict=True):
            if outcome is None:
                raise RuntimeError("lending_repay_many left a repayment unanswered")
            if outcome.outcome == "OK" and call.audit is not None:
                call.audit.committed_with_effect()
        return [o for o in outcomes if o is not None]
