"""AssessEligibility, many calls per commit (services/common/group_commit.py).

A group of calls costs two round trips, however many calls it holds:
1. read every survivor assessed (no lock), with the row's version (xmin) and the latest
   version of the rule set each is or would be assessed under;
2. decide each call in Python, in arrival order, so that a survivor assessed twice in one
   group is pinned by the first assessment, as one after the other would be;
3. one statement, its own transaction, writes the group: for each call whose survivor row
   is still as it was read, it claims the request_id and stores the answer with it, the
   assessment row, the version pin and the audit entry. A call whose survivor changed
   meanwhile (re-registered, pinned by another group) runs again in the next group; a call
   whose request_id was already used writes nothing and gets the first answer.
What a caller sees is what one transaction per call gives: a refused call leaves nothing
behind, a request_id already used gets its first answer (or is refused for a different
payload), and concurrent duplicates have exactly one effect. No row is locked while
Python decides.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from services.common import audit
from services.common.db import Connection, Database
from services.common.encoded import Encoded, holding
from services.common.errors import FailedPrecondition, NotFound, consent_withdrawn, invalid
from services.common.group_commit import RUN_AGAIN, GroupCommit, RunAgain
from services.common.idempotency import method_of, payload_hash, replayed
from services.common.protoconv import from_proto_date, now_timestamp, proto_date
from services.eligibility import DEFAULT_RULE_SET, rules, trace
from services.eligibility import intake as intake_mod
from services.eligibility.rulebook import RuleBook

_METHOD = method_of(pb.AssessEligibilityResponse)

_SURVIVORS = """
    SELECT s.survivor_id, s.xmin::text AS row_version, s.intake_pb,
           CASE WHEN s.intake_pb IS NULL THEN s.intake::text END AS intake,
           s.pinned_rule_set_id, s.pinned_rule_set_version, s.consent_withdrawn_on,
           (SELECT max(r.version) FROM rule_sets r
            WHERE r.rule_set_id = coalesce(s.pinned_rule_set_id, $2)) AS latest_version
    FROM survivors s WHERE s.survivor_id = ANY($1::text[])"""

# Rows are found through their primary keys (= ANY, array_position): a join against
# unnest() is planned for its default hundred rows, as a scan of the whole table.
_WRITE = f"""
    WITH calls AS (
        SELECT * FROM unnest($1::text[], $3::bytea[], $4::bytea[], $5::text[], $6::text[],
                             $7::date[], $8::text[], $9::int[], $10::text[], $11::bytea[],
                             $12::text[], $13::bytea[], $14::text[])
            AS c(request_id, payload_hash, answer, assessment_id, survivor_id, day,
                 rule_set_id, version, district_code, result, reason, intake_pb, row_version)),
      fresh AS (
        SELECT c.*, s.intake AS stored_intake, s.intake_pb AS stored_intake_pb
        FROM calls c, LATERAL (SELECT intake, intake_pb, xmin FROM survivors
                               WHERE survivor_id = c.survivor_id) AS s
        WHERE s.xmin::text = c.row_version),
      claimed AS (
        INSERT INTO idempotency_keys (request_id, method, payload_hash, response)
        SELECT request_id, $2, payload_hash, answer FROM fresh ORDER BY request_id
        ON CONFLICT (request_id) DO NOTHING RETURNING request_id),
      assessed AS (
        INSERT INTO assessments (assessment_id, survivor_id, assessment_date, rule_set_id,
            rule_set_version, district_code, intake, result, reassessment_reason, intake_pb)
        SELECT f.assessment_id, f.survivor_id, f.day, f.rule_set_id, f.version,
               f.district_code, f.stored_intake, f.result, f.reason,
               coalesce(f.stored_intake_pb, f.intake_pb)
        FROM fresh f JOIN claimed USING (request_id)),
      pinned AS (
        -- A first assessment pins an unpinned survivor; a re-assessment moves the pin. Both
        -- are judged on the row as it is once locked (a re-registration committing
        -- meanwhile keeps the pin unset; another process's first assessment has set it).
        UPDATE survivors s
        SET pinned_rule_set_id = ($16::text[])[array_position($15::text[], s.survivor_id)],
            pinned_rule_set_version = ($17::int[])[array_position($15::text[], s.survivor_id)]
        WHERE s.survivor_id = ANY($15::text[])
          AND (s.pinned_rule_set_version IS NULL
               OR ($18::bool[])[array_position($15::text[], s.survivor_id)])
          AND EXISTS (SELECT 1 FROM fresh f JOIN claimed USING (request_id)
                      WHERE f.survivor_id = s.survivor_id)),
      audited AS ({audit.insert_many_statement(19)}
                  WHERE e.request_id IN (SELECT request_id FROM claimed))
    SELECT c.request_id,
           EXISTS (SELECT 1 FROM fresh f WHERE f.request_id = c.request_id) AS fresh,
           EXISTS (SELECT 1 FROM claimed k WHERE k.request_id = c.request_id) AS claimed
    FROM calls c"""

_ASSESSMENTS = """SELECT assessment_id, result, reassessment_reason FROM assessments
                  WHERE assessment_id = ANY($1::text[])"""
_STORED = """SELECT request_id, method, payload_hash, response FROM idempotency_keys
             WHERE request_id = ANY($1::text[])"""
_USED = "SELECT request_id FROM idempotency_keys WHERE request_id = ANY($1::text[])"


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
    moved: bool = False  # by a re-assessment under the latest version


@dataclass
class _Assessed:
    """A decided call: its assessment (the header: ids, version, survivor's district and
    band), the whole assessment encoded, and what else its row in _WRITE holds."""

    call: _Call
    assessment: pb.Assessment
    encoded: bytes
    reason: str
    intake_pb: bytes | None

    def response(self) -> Answer:
        return holding(
            pb.AssessEligibilityResponse, "assessment", as_served(self.encoded, self.reason)
        )


Answer = pb.AssessEligibilityResponse | Encoded[pb.AssessEligibilityResponse]
Outcome = Answer | BaseException | RunAgain


class Assessor:
    def __init__(self, db: Database, rulebook: RuleBook) -> None:
        self.db = db
        self.rulebook = rulebook
        # One group at a time: a group is two round trips, and the calls that arrive
        # meanwhile make the next one (measured: no better with two or more in flight).
        self._group: GroupCommit[_Call, Answer] = GroupCommit(self._run, in_flight=1)

    async def assess(self, request: pb.AssessEligibilityRequest) -> Answer:
        call = _Call(
            request,
            from_proto_date(request.assessment_date),
            payload_hash(request),
            audit.current_call(),
        )
        return await self._group.submit(call)

    async def _run(self, calls: Sequence[_Call]) -> list[Outcome]:
        outcomes: list[Outcome] = [RUN_AGAIN] * len(calls)
        # A request_id twice in one group: the later call waits for the next group, where
        # it finds the first one's answer (or, if that was refused, is decided itself).
        first: dict[str, int] = {}
        for index, call in enumerate(calls):
            first.setdefault(call.request.request_id, index)
        assessed: list[_Assessed] = []
        refused: list[int] = []
        async with self.db.pool.acquire() as conn:
            # A re-assessment sent again gets its first answer, and is not decided again:
            # deciding it would move the survivor's pin for the calls after it.
            moving = [
                calls[i].request.request_id
                for i in first.values()
                if calls[i].request.reassess_under_latest
            ]
            answered = (
                {r["request_id"] for r in await conn.fetch(_USED, moving)} if moving else set()
            )
            survivors = {
                row["survivor_id"]: row
                for row in await conn.fetch(
                    _SURVIVORS,
                    list({calls[i].request.survivor_id for i in first.values()}),
                    DEFAULT_RULE_SET,
                )
            }
            pins: dict[str, _Pin] = {}
            for index in first.values():
                call = calls[index]
                if call.request.request_id in answered:
                    refused.append(index)  # replayed below, as a refusal's reuse is
                    continue
                try:
                    decided = await self._decide(
                        conn, call, survivors.get(call.request.survivor_id), pins
                    )
                except Exception as error:  # this call's refusal; the others go on
                    outcomes[index] = error
                    refused.append(index)
                    continue
                assessed.append(decided)
            written = {}
            if assessed:
                rows = await conn.fetch(_WRITE, *_write_arguments(assessed, pins, survivors))
                written = {r["request_id"]: (r["fresh"], r["claimed"]) for r in rows}
            used: list[int] = list(refused)  # a refusal of a request_id already used: replayed
            for decided in assessed:
                call = decided.call
                fresh, claimed = written[call.request.request_id]
                index = first[call.request.request_id]
                if not fresh:
                    continue  # its survivor changed since it was read: RUN_AGAIN
                if not claimed:
                    used.append(index)
                    continue
                outcomes[index] = decided.response()
                if call.audit is not None:
                    call.audit.committed_with_effect()
            await self._replay(conn, calls, used, outcomes)
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
        if row["consent_withdrawn_on"] is not None:
            raise consent_withdrawn(row["consent_withdrawn_on"])
        if day < from_proto_date(survivor.date_of_birth):
            raise invalid(
                "assessment_date", "is before the survivor's date of birth", "BEFORE_BIRTH"
            )
        if survivor.HasField("incident_date") and day < from_proto_date(survivor.incident_date):
            # A survivor assessed before the incident made them one (years_since_incident -1).
            raise invalid("assessment_date", "is before the survivor's incident", "BEFORE_INCIDENT")

        pin = pins.get(request.survivor_id) or _Pin(
            row["pinned_rule_set_id"] or DEFAULT_RULE_SET, row["pinned_rule_set_version"]
        )
        latest = row["latest_version"]
        if latest is None:
            raise NotFound(f"rule set {pin.rule_set_id} has no published version")
        if request.reassess_under_latest:
            if not request.reassessment_reason.strip():
                raise invalid(
                    "reassessment_reason",
                    "a re-assessment under a newer rule set needs a reason",
                    "REASON_REQUIRED",
                )
            version = latest
        else:
            version = pin.version or latest
        rule_set = await self.rulebook.get(conn, pin.rule_set_id, version)
        why = rule_set.not_in_force(day)
        if why is not None:
            raise invalid("assessment_date", why, "rule_set.in_force")
        try:
            assessment, encoded = new_assessment(
                survivor, rule_set, day, survivor_id=request.survivor_id, version=version
            )
        except rules.CannotDecide as error:
            raise FailedPrecondition(
                f"rule set {pin.rule_set_id} version {version} cannot decide this survivor "
                f"({error}): publish a corrected version and re-assess under it",
                reason="RULES_CANNOT_DECIDE",
            ) from None
        # Rows from before intake_pb existed: the intake parsed from its JSON.
        intake_pb = None if row["intake_pb"] is not None else survivor.SerializeToString()
        if pin.version is None or request.reassess_under_latest:
            pins[request.survivor_id] = _Pin(
                pin.rule_set_id, version, moved=pin.moved or request.reassess_under_latest
            )
        return _Assessed(call, assessment, encoded, request.reassessment_reason, intake_pb)

    @staticmethod
    async def _replay(
        conn: Connection, calls: Sequence[_Call], used: list[int], outcomes: list[Outcome]
    ) -> None:
        """The first answer for each call whose request_id was already used; a refused
        call whose request_id is unused keeps its refusal."""
        if not used:
            return
        rows = await conn.fetch(_STORED, [calls[i].request.request_id for i in used])
        stored = {r["request_id"]: (r["method"], r["payload_hash"], r["response"]) for r in rows}
        answers: dict[int, pb.AssessEligibilityResponse] = {}
        for index in used:
            call = calls[index]
            if call.request.request_id not in stored:
                continue
            try:
                answers[index] = replayed(
                    stored[call.request.request_id],
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
            {
                r["assessment_id"]: as_served(r["result"], r["reassessment_reason"])
                for r in await conn.fetch(_ASSESSMENTS, named)
            }
            if named
            else {}
        )
        for index, answer in answers.items():
            if _names_only(answer):
                answer.assessment.ParseFromString(results[answer.assessment.assessment_id])
            outcomes[index] = answer


def new_assessment(
    survivor: pb.SurvivorIntake,
    rule_set: rules.RuleSet,
    day: date,
    *,
    survivor_id: str,
    version: int,
) -> tuple[pb.Assessment, bytes]:
    """An assessment of `survivor` on `day`: its header (ids, version, the survivor's
    district and band) and the whole assessment encoded, the header followed by the
    decisions and priority score (once parsed, one Assessment). Stored and served as
    these bytes, never parsed here."""
    facts = intake_mod.facts(survivor, day)
    assessment = pb.Assessment(
        assessment_id=f"asm-{secrets.token_hex(10)}",
        survivor_id=survivor_id,
        assessment_date=proto_date(day),
        rule_set_id=rule_set.rule_set_id,
        rule_set_version=version,
        create_time=now_timestamp(),
        district_code=survivor.district_code,
        sex=survivor.sex,
        age_band=intake_mod.age_band(facts["age"]),  # type: ignore[arg-type]
    )
    return assessment, assessment.SerializeToString() + trace.assessment_trace(rule_set, facts, day)


def as_served(result: bytes, reassessment_reason: str) -> bytes:
    """A stored assessment as it is answered: the row's reason for a re-assessment, kept
    in its own column, appended as the message's field (bytes appended parse as one
    message)."""
    if not reassessment_reason:
        return result
    return result + pb.Assessment(reassessment_reason=reassessment_reason).SerializeToString()


def _names_only(answer: pb.AssessEligibilityResponse) -> bool:
    return not answer.assessment.rule_set_id


def _stored_answer(assessment: pb.Assessment) -> bytes:
    """What the key keeps as the first answer: the assessment's id, not a second copy of
    its 7 kB trace; a replay reads the assessment itself."""
    return pb.AssessEligibilityResponse(
        assessment=pb.Assessment(assessment_id=assessment.assessment_id)
    ).SerializeToString()


def _write_arguments(
    assessed: list[_Assessed], pins: dict[str, _Pin], survivors: dict[str, asyncpg.Record]
) -> tuple[object, ...]:
    """The arguments of _WRITE, one array per column."""
    assessments = [a.assessment for a in assessed]
    entries = [a.call.audit.ok_entry().as_json() for a in assessed if a.call.audit]
    return (
        [a.call.request.request_id for a in assessed],
        _METHOD,
        [a.call.digest for a in assessed],
        [_stored_answer(x) for x in assessments],
        [x.assessment_id for x in assessments],
        [x.survivor_id for x in assessments],
        [a.call.day for a in assessed],
        [x.rule_set_id for x in assessments],
        [x.rule_set_version for x in assessments],
        [x.district_code for x in assessments],
        [a.encoded for a in assessed],
        [a.reason for a in assessed],
        [a.intake_pb for a in assessed],
        [survivors[x.survivor_id]["row_version"] for x in assessments],
        list(pins),
        [p.rule_set_id for p in pins.values()],
        [p.version for p in pins.values()],
        [p.moved for p in pins.values()],
        json.dumps(entries),
    )
