"""AssessEligibility, many calls per transaction (services/common/group_commit.py).

A batch is one transaction of four statements, however many calls it holds:
1. claim every request_id (sorted, so two batches never wait on each other in a cycle);
2. read and lock every survivor claimed for (sorted by id), with the latest version of
   the rule set each is or would be assessed under;
3. decide each call in Python, in arrival order, so that a survivor assessed twice in one
   batch is pinned by the first assessment, as one after the other would be;
4. one statement stores every answer, assessment row, version pin and audit entry, and
   releases the request_ids of calls that were refused.
What a caller sees is what one transaction per call gives: a refused call leaves nothing
behind, a request_id already used gets its first answer (or is refused for a different
payload), and concurrent duplicates have exactly one effect.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from services.common import audit
from services.common.db import Connection, Database
from services.common.errors import FailedPrecondition, NotFound, invalid
from services.common.group_commit import RUN_AGAIN, GroupCommit, RunAgain
from services.common.idempotency import method_of, payload_hash, replayed
from services.common.protoconv import from_proto_date, timestamp
from services.eligibility import intake as intake_mod
from services.eligibility import trace
from services.eligibility.rulebook import RuleBook

DEFAULT_RULE_SET = "reintegration"
_METHOD = method_of(pb.AssessEligibilityResponse)

_CLAIM = """INSERT INTO idempotency_keys (request_id, method, payload_hash)
            SELECT k.request_id, $2, k.payload_hash
            FROM unnest($1::text[], $3::bytea[]) AS k(request_id, payload_hash)
            ORDER BY k.request_id
            ON CONFLICT (request_id) DO NOTHING RETURNING request_id"""

_SURVIVORS = """
    SELECT s.survivor_id, s.intake_pb,
           CASE WHEN s.intake_pb IS NULL THEN s.intake::text END AS intake,
           s.pinned_rule_set_id, s.pinned_rule_set_version,
           (SELECT max(r.version) FROM rule_sets r
            WHERE r.rule_set_id = coalesce(s.pinned_rule_set_id, $2)) AS latest_version
    FROM survivors s WHERE s.survivor_id = ANY($1::text[])
    ORDER BY s.survivor_id FOR UPDATE OF s"""

# Rows are found through their primary keys (= ANY, array_position): a join against
# unnest() is planned for its default hundred rows, as a scan of the whole table.
_WRITE = f"""
    WITH answers AS (
        UPDATE idempotency_keys k
        SET response = ($2::bytea[])[array_position($1::text[], k.request_id)]
        WHERE k.request_id = ANY($1::text[])),
      assessed AS (
        INSERT INTO assessments (assessment_id, survivor_id, assessment_date, rule_set_id,
            rule_set_version, district_code, intake, result, reassessment_reason, intake_pb)
        SELECT a.assessment_id, a.survivor_id, a.day, a.rule_set_id, a.version,
               a.district_code, s.intake, a.result, a.reason, coalesce(s.intake_pb, a.intake_pb)
        FROM unnest($3::text[], $4::text[], $5::date[], $6::text[], $7::int[], $8::text[],
                    $9::bytea[], $10::text[], $11::bytea[])
             AS a(assessment_id, survivor_id, day, rule_set_id, version, district_code,
                  result, reason, intake_pb),
             LATERAL (SELECT intake, intake_pb FROM survivors
                      WHERE survivor_id = a.survivor_id) AS s),
      pinned AS (
        UPDATE survivors s
        SET pinned_rule_set_id = ($13::text[])[array_position($12::text[], s.survivor_id)],
            pinned_rule_set_version = ($14::int[])[array_position($12::text[], s.survivor_id)]
        WHERE s.survivor_id = ANY($12::text[])),
      released AS (DELETE FROM idempotency_keys WHERE request_id = ANY($15::text[])),
      audited AS ({audit.insert_many_statement(16)})
    SELECT 1"""

_ASSESSMENTS = """SELECT assessment_id, result FROM assessments
                  WHERE assessment_id = ANY($1::text[])"""
_STORED = """SELECT request_id, method, payload_hash, response FROM idempotency_keys
             WHERE request_id = ANY($1::text[])"""


@dataclass
class _Call:
    request: pb.AssessEligibilityRequest
    day: date
    digest: bytes
    audit: audit.PendingAudit | None


@dataclass
class _Pin:
    rule_set_id: str
    version: int | None


@dataclass
class _Assessed:
    """A decided call: its answer and what its row in each array of _WRITE holds."""

    call: _Call
    response: pb.AssessEligibilityResponse
    reason: str
    intake_pb: bytes | None


Outcome = pb.AssessEligibilityResponse | BaseException | RunAgain


class Assessor:
    def __init__(self, db: Database, rulebook: RuleBook) -> None:
        self.db = db
        self.rulebook = rulebook
        self._group: GroupCommit[_Call, pb.AssessEligibilityResponse] = GroupCommit(self._run)

    async def assess(self, request: pb.AssessEligibilityRequest) -> pb.AssessEligibilityResponse:
        call = _Call(
            request,
            from_proto_date(request.assessment_date),
            payload_hash(request),
            audit.current_call(),
        )
        return await self._group.submit(call)

    async def _run(self, calls: Sequence[_Call]) -> list[Outcome]:
        outcomes: list[Outcome] = [RUN_AGAIN] * len(calls)
        # A request_id twice in one batch: the later call waits for the next batch, where
        # it finds the first one's answer (or, if that was refused, claims the id itself).
        first: dict[str, int] = {}
        for index, call in enumerate(calls):
            first.setdefault(call.request.request_id, index)
        ours = [calls[i] for i in first.values()]
        assessed: list[_Assessed] = []
        refused: list[str] = []
        async with self.db.transaction() as conn:
            claimed = {
                row["request_id"]
                for row in await conn.fetch(
                    _CLAIM, [c.request.request_id for c in ours], _METHOD, [c.digest for c in ours]
                )
            }
            survivors = {
                row["survivor_id"]: row
                for row in await conn.fetch(
                    _SURVIVORS,
                    sorted(
                        {c.request.survivor_id for c in ours if c.request.request_id in claimed}
                    ),
                    DEFAULT_RULE_SET,
                )
            }
            pins: dict[str, _Pin] = {}
            for index in first.values():
                call = calls[index]
                if call.request.request_id not in claimed:
                    continue
                try:
                    decided = await self._decide(
                        conn, call, survivors.get(call.request.survivor_id), pins
                    )
                except Exception as error:  # this call's refusal; the others go on
                    outcomes[index] = error
                    refused.append(call.request.request_id)
                    continue
                assessed.append(decided)
                outcomes[index] = decided.response
            entries = [a.call.audit for a in assessed if a.call.audit is not None]
            await conn.execute(_WRITE, *_write_arguments(assessed, pins, refused, entries))
            for pending in entries:
                pending.written = True
        for pending in entries:
            pending.committed = True
        await self._replay(calls, first, claimed, outcomes)
        return outcomes

    async def _decide(
        self, conn: Connection, call: _Call, row: asyncpg.Record | None, pins: dict[str, _Pin]
    ) -> _Assessed:
        request, day = call.request, call.day
        if row is None:
            raise NotFound(f"survivor {request.survivor_id} is not registered")
        survivor = intake_mod.stored_intake(row)
        if not survivor.consent.data_processing:
            raise FailedPrecondition("no recorded consent", reason="CONSENT_REQUIRED")
        if day < from_proto_date(survivor.date_of_birth):
            raise invalid("assessment_date", "is before the survivor's date of birth")

        pin = pins.get(request.survivor_id) or _Pin(
            row["pinned_rule_set_id"] or DEFAULT_RULE_SET, row["pinned_rule_set_version"]
        )
        latest = row["latest_version"]
        if latest is None:
            raise NotFound(f"rule set {pin.rule_set_id} has no published version")
        if request.reassess_under_latest:
            if not request.reassessment_reason.strip():
                raise invalid(
                    "reassessment_reason", "a re-assessment under a newer rule set needs a reason"
                )
            version = latest
        else:
            version = pin.version or latest
        rule_set = await self.rulebook.get(conn, pin.rule_set_id, version)
        facts = intake_mod.facts(survivor, day)
        response = pb.AssessEligibilityResponse()
        assessment = response.assessment
        assessment.MergeFromString(trace.assessment_trace(rule_set, facts, day))
        assessment.assessment_id = f"asm-{uuid.uuid4().hex[:20]}"
        assessment.survivor_id = request.survivor_id
        assessment.assessment_date.CopyFrom(request.assessment_date)
        assessment.rule_set_id = pin.rule_set_id
        assessment.rule_set_version = version
        assessment.create_time.CopyFrom(timestamp(datetime.now(UTC)))
        assessment.district_code = survivor.district_code
        assessment.sex = survivor.sex
        assessment.age_band = intake_mod.age_band(facts["age"])  # type: ignore[assignment]
        # Rows from before intake_pb existed: the intake parsed from its JSON.
        intake_pb = None if row["intake_pb"] is not None else survivor.SerializeToString()
        if pin.version is None or request.reassess_under_latest:
            pins[request.survivor_id] = _Pin(pin.rule_set_id, version)
        return _Assessed(call, response, request.reassessment_reason, intake_pb)

    async def _replay(
        self,
        calls: Sequence[_Call],
        first: dict[str, int],
        claimed: set[str],
        outcomes: list[Outcome],
    ) -> None:
        """The first answer for each call whose request_id was already used."""
        used = [i for i in first.values() if calls[i].request.request_id not in claimed]
        if not used:
            return
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(_STORED, [calls[i].request.request_id for i in used])
            stored = {
                r["request_id"]: (r["method"], r["payload_hash"], r["response"]) for r in rows
            }
            answers: dict[int, pb.AssessEligibilityResponse] = {}
            for index in used:
                call = calls[index]
                try:
                    answers[index] = replayed(
                        stored.get(call.request.request_id),
                        request_id=call.request.request_id,
                        method=_METHOD,
                        digest=call.digest,
                        response_type=pb.AssessEligibilityResponse,
                    )
                except Exception as error:
                    outcomes[index] = error
            # The answer stored with the key names the assessment (see _write_arguments);
            # answers stored before that hold it whole.
            named = [a.assessment.assessment_id for a in answers.values() if _names_only(a)]
            results = (
                {r["assessment_id"]: r["result"] for r in await conn.fetch(_ASSESSMENTS, named)}
                if named
                else {}
            )
        for index, answer in answers.items():
            if _names_only(answer):
                answer.assessment.ParseFromString(results[answer.assessment.assessment_id])
            outcomes[index] = answer


def _names_only(answer: pb.AssessEligibilityResponse) -> bool:
    return not answer.assessment.rule_set_id


def _stored_answer(assessment: pb.Assessment) -> bytes:
    """What the key keeps as the first answer: the assessment's id, not a second copy of
    its 7 kB trace; a replay reads the assessment itself."""
    return pb.AssessEligibilityResponse(
        assessment=pb.Assessment(assessment_id=assessment.assessment_id)
    ).SerializeToString()


def _write_arguments(
    assessed: list[_Assessed],
    pins: dict[str, _Pin],
    refused: list[str],
    audit_entries: list[audit.PendingAudit],
) -> tuple[object, ...]:
    """The arguments of _WRITE, one array per column."""
    assessments = [a.response.assessment for a in assessed]
    return (
        [a.call.request.request_id for a in assessed],
        [_stored_answer(x) for x in assessments],
        [x.assessment_id for x in assessments],
        [x.survivor_id for x in assessments],
        [a.call.day for a in assessed],
        [x.rule_set_id for x in assessments],
        [x.rule_set_version for x in assessments],
        [x.district_code for x in assessments],
        [x.SerializeToString() for x in assessments],
        [a.reason for a in assessed],
        [a.intake_pb for a in assessed],
        list(pins),
        [p.rule_set_id for p in pins.values()],
        [p.version for p in pins.values()],
        refused,
        json.dumps([pending.entry("OK", "").as_json() for pending in audit_entries]),
    )
