"""EligibilityService: survivor intake, assessments and the rule-set lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as pb_grpc
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.type.v1 import localized_text_pb2
from services.common import pagination
from services.common.config import Settings
from services.common.db import Connection, Database, fetch_one
from services.common.districts import require_known_district_filter
from services.common.encoded import holding, served
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    consent_withdrawn,
    invalid,
    invalid_fields,
)
from services.common.idempotency import once_per_request
from services.common.interceptors import GuardedServer
from services.common.programme_time import add_months, not_after_today, programme_today
from services.common.protoconv import from_proto_date, proto_date, timestamp
from services.common.server import ServiceSpec
from services.eligibility import intake as intake_mod
from services.eligibility import rules
from services.eligibility.assessing import Assessor, as_served
from services.eligibility.loans import LoanBook
from services.eligibility.rulebook import RuleBook
from services.eligibility.trace import OUTCOME, rule_result_message, score_component_message

SIMULATION_LIMIT = 100_000
# What a Survivor message shows of its row beside the intake.
_SURVIVOR_COLUMNS = """created_at, updated_at, pinned_rule_set_id, pinned_rule_set_version,
                      consent_withdrawn_on, consent_withdrawn_by"""


def _withdrawal(row: asyncpg.Record) -> pb.ConsentWithdrawal:
    """The survivor row's withdrawal of consent, which stands."""
    return pb.ConsentWithdrawal(
        withdrawn_on=proto_date(row["consent_withdrawn_on"]),
        recorded_by=row["consent_withdrawn_by"],
    )


def decision_to_proto(
    decision: rules.Decision,
) -> tuple[list[pb.ProgrammeDecision], pb.PriorityScore]:
    decisions = [
        pb.ProgrammeDecision(
            programme_id=d.programme_id,
            outcome=OUTCOME[d.outcome],
            missing_data=list(d.missing_data),
            rule_results=[rule_result_message(r) for r in d.rule_results],
        )
        for d in decision.decisions
    ]
    priority = pb.PriorityScore(
        total=decision.priority_total,
        components=[score_component_message(p) for p in decision.priority_parts],
    )
    return decisions, priority


def same_rules(published_yaml: str, candidate_yaml: str) -> bool:
    """Two sources that say the same (comments, spacing and key order aside): publishing
    one over the other would make a version that decides nothing differently. Compared
    with each value's type, as CEL reads them: true is not 1, nor 25000.0 25000."""
    published = rules.parse_yaml(published_yaml, published=True)
    return _typed(published) == _typed(rules.parse_yaml(candidate_yaml))


def _typed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def facts_of_case(intake_data: dict[str, Any], day: date) -> dict[str, Any]:
    """A rule-set test case's intake, checked as the API would check it."""
    from services.common.interceptors import shared_validator, violations_of

    survivor = intake_mod.intake_from_dict(intake_data)
    # The field rules first, as the API checks them: the date checks need valid dates (a
    # case without a date of birth said "year 0 is out of range").
    problems = violations_of(survivor, shared_validator()) or intake_mod.intake_violations(
        survivor, day, "intake"
    )
    if problems:
        raise ValueError("; ".join(f"{p.field}: {p.description}" for p in problems))
    return intake_mod.facts(survivor, day)


async def _unknown_rule_set(conn: Connection, rule_set_id: str) -> InvalidArgument:
    """A candidate naming no published rule set: its rules would decide no assessment."""
    known = await conn.fetch("SELECT DISTINCT rule_set_id FROM rule_sets ORDER BY 1")
    return invalid(
        "source_yaml",
        f"rule_set_id {rule_set_id!r} names no published rule set; "
        "publish a new version of one the service decides with: "
        + ", ".join(r["rule_set_id"] for r in known),
        "UNKNOWN_RULE_SET",
    )


def rule_set_error(error: rules.RuleSetError) -> InvalidArgument:
    return InvalidArgument(
        f"the rule set is not valid: {error}",
        [FieldViolation("source_yaml", str(p), "rule_set.invalid") for p in error.problems],
    )


async def _consent_event(
    conn: Connection, survivor_id: str, event: str, on: date, recorded_by: str
) -> None:
    """Keep a withdrawal of consent, or consent given again after one, for audit."""
    await conn.execute(
        """INSERT INTO consent_events (survivor_id, event, event_date, recorded_by)
           VALUES ($1, $2, $3, $4)""",
        survivor_id,
        event,
        on,
        recorded_by,
    )


async def _decided_again(
    conn: Connection, candidate: rules.RuleSet, *, every_day: bool
) -> AsyncIterator[tuple[asyncpg.Record, dict[str, rules.Outcome]]]:
    """The stored assessments (at most SIMULATION_LIMIT, oldest first), each with the
    candidate's outcomes for its survivor on its day. INVALID_ARGUMENT on source_yaml,
    naming the assessment, when the candidate cannot decide one (RULES_CANNOT_DECIDE), or,
    with `every_day`, is not in force on one's day (RULES_NOT_IN_FORCE; otherwise such an
    assessment is passed over: the candidate will never decide that day)."""
    cursor = conn.cursor(
        # Not those of survivors whose consent stands withdrawn: a what-if uses their data.
        """SELECT a.assessment_id, a.assessment_date, a.intake::text, a.intake_pb, a.result
           FROM assessments a JOIN survivors s USING (survivor_id)
           WHERE s.consent_withdrawn_on IS NULL
           ORDER BY a.assessment_date, a.assessment_id LIMIT $1""",
        SIMULATION_LIMIT,
    )
    async for row in cursor:
        day = row["assessment_date"]
        why = candidate.not_in_force(day)
        if why is not None:
            if not every_day:
                continue
            raise invalid(
                "source_yaml", f"assessment {row['assessment_id']}: {why}", "RULES_NOT_IN_FORCE"
            )
        facts = intake_mod.facts(intake_mod.stored_intake(row), day)
        try:
            after = rules.evaluate(candidate, facts, day).outcomes()
        except rules.CannotDecide as error:
            raise invalid(
                "source_yaml",
                f"assessment {row['assessment_id']}: the rules cannot decide it: {error}",
                "RULES_CANNOT_DECIDE",
            ) from None
        yield row, after


# How early a follow-up visit may come before its day (+6 or +12 months after the loan
# closed): field visits are planned a few weeks around it.
FOLLOW_UP_EARLY = timedelta(days=30)


class EligibilityServicer(pb_grpc.EligibilityServiceServicer):
    def __init__(
        self,
        db: Database,
        rulebook: RuleBook,
        loans: LoanBook,
        *,
        accept_future_dates: bool = False,
    ) -> None:
        self.db = db
        self.rulebook = rulebook
        self.loans = loans
        self.assessor = Assessor(db, rulebook)
        self.accept_future_dates = accept_future_dates  # a simulated clock only

    # --- survivors -----------------------------------------------------------------

    async def RegisterSurvivor(
        self, request: pb.RegisterSurvivorRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterSurvivorResponse:
        intake = request.intake
        violations = intake_mod.intake_violations(intake, programme_today(), "intake")
        if violations:
            raise invalid_fields(violations)
        if not intake.consent.data_processing:
            raise FailedPrecondition(
                "consent to data processing is not recorded; nothing was stored",
                reason="CONSENT_REQUIRED",
            )

        async def register(conn: Connection) -> pb.RegisterSurvivorResponse:
            consented = (
                from_proto_date(intake.consent.recorded_on)
                if intake.consent.HasField("recorded_on")
                else programme_today()
            )
            # The consent on record only moves on: an intake carrying an older one (a file
            # from before a withdrawal and the consent given since) is out of date. A
            # withdrawn consent is given again by a newer one, dated on or after the
            # withdrawal: until then the record is not to be used, nor changed (the intake
            # sent again as it was is still the withdrawn one).
            withdrawn_on = await conn.fetchval(  # locked: the withdrawal this may clear
                """SELECT consent_withdrawn_on FROM survivors WHERE survivor_id = $1
                   FOR UPDATE""",
                intake.survivor_id,
            )
            row = await conn.fetchrow(
                f"""INSERT INTO survivors (survivor_id, intake, district_code, consent_given_on,
                                          intake_pb)
                   VALUES ($1, $2::jsonb, $3, $4, $5)
                   ON CONFLICT (survivor_id) DO UPDATE
                     SET intake = EXCLUDED.intake, district_code = EXCLUDED.district_code,
                         consent_given_on = EXCLUDED.consent_given_on,
                         intake_pb = EXCLUDED.intake_pb, updated_at = now(),
                         consent_withdrawn_on = NULL, consent_withdrawn_by = NULL
                     WHERE EXCLUDED.consent_given_on >= survivors.consent_given_on
                       AND (survivors.consent_withdrawn_on IS NULL
                            OR (EXCLUDED.consent_given_on >= survivors.consent_withdrawn_on
                                AND EXCLUDED.consent_given_on > survivors.consent_given_on))
                   RETURNING {_SURVIVOR_COLUMNS}""",
                intake.survivor_id,
                intake_mod.intake_json(intake),
                intake.district_code,
                consented,
                intake.SerializeToString(),
            )
            if row is None:  # the row the conflict locked: a withdrawal, or a newer consent
                stands = await fetch_one(
                    conn,
                    """SELECT consent_given_on, consent_withdrawn_on FROM survivors
                       WHERE survivor_id = $1""",
                    intake.survivor_id,
                )
                given, withdrawn = stands["consent_given_on"], stands["consent_withdrawn_on"]
                if withdrawn is None:
                    raise FailedPrecondition(
                        f"the consent on record was given on {given}; this intake carries an "
                        f"older one ({consented}): send the record with the consent on record "
                        "or a newer one; nothing was stored",
                        reason="CONSENT_OUT_OF_DATE",
                    )
                raise FailedPrecondition(
                    f"the survivor withdrew consent on {withdrawn}; the consent recorded on "
                    f"{consented} is not one given since: record the consent given again, "
                    f"dated on or after {withdrawn} and after the consent withdrawn ({given}); "
                    "nothing was stored",
                    reason="CONSENT_WITHDRAWN",
                )
            if withdrawn_on is not None:
                await _consent_event(
                    conn, intake.survivor_id, "GIVEN_AGAIN", consented, intake.consent.recorded_by
                )
            return pb.RegisterSurvivorResponse(survivor=self._survivor(intake, row))

        return await once_per_request(self.db, request, pb.RegisterSurvivorResponse, register)

    @staticmethod
    def _survivor(intake: pb.SurvivorIntake, row: asyncpg.Record) -> pb.Survivor:
        """The record, with the rule-set version the survivor's assessments use and a
        withdrawal of consent that stands."""
        survivor = pb.Survivor(
            survivor_id=intake.survivor_id,
            intake=intake,
            create_time=timestamp(row["created_at"]),
            update_time=timestamp(row["updated_at"]),
            pinned_rule_set_id=row["pinned_rule_set_id"] or "",
            pinned_rule_set_version=row["pinned_rule_set_version"] or 0,
        )
        if row["consent_withdrawn_on"] is not None:
            survivor.consent_withdrawal.CopyFrom(_withdrawal(row))
        return survivor

    async def GetSurvivor(
        self, request: pb.GetSurvivorRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSurvivorResponse:
        row = await self.db.pool.fetchrow(
            f"""SELECT intake::text, intake_pb, {_SURVIVOR_COLUMNS}
               FROM survivors WHERE survivor_id = $1""",
            request.survivor_id,
        )
        if row is None:
            raise NotFound(f"survivor {request.survivor_id} is not registered")
        return pb.GetSurvivorResponse(survivor=self._survivor(intake_mod.stored_intake(row), row))

    async def GetConsent(
        self, request: pb.GetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConsentResponse:
        consents = await self._consents([request.survivor_id])
        if not consents:
            raise NotFound(f"survivor {request.survivor_id} is not registered")
        return pb.GetConsentResponse(consent=consents[0])

    async def BatchGetConsents(
        self, request: pb.BatchGetConsentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchGetConsentsResponse:
        return pb.BatchGetConsentsResponse(consents=await self._consents(request.survivor_ids))

    async def _consents(self, survivor_ids: Sequence[str]) -> list[pb.SurvivorConsent]:
        """The consent of each registered survivor among `survivor_ids`, in their order."""
        rows = await self.db.pool.fetch(
            """SELECT survivor_id, consent_given_on, consent_withdrawn_on, consent_withdrawn_by
               FROM survivors WHERE survivor_id = ANY($1::text[])""",
            list(set(survivor_ids)),
        )
        found = {row["survivor_id"]: row for row in rows}
        consents = []
        for survivor_id in survivor_ids:
            row = found.get(survivor_id)
            if row is None:
                continue
            consent = pb.SurvivorConsent(
                survivor_id=survivor_id,
                given_on=proto_date(row["consent_given_on"]),
                stands=row["consent_withdrawn_on"] is None,
            )
            if row["consent_withdrawn_on"] is not None:
                consent.withdrawal.CopyFrom(_withdrawal(row))
            consents.append(consent)
        return consents

    async def WithdrawConsent(
        self, request: pb.WithdrawConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithdrawConsentResponse:
        withdrawn_on = from_proto_date(request.withdrawn_on)
        not_after_today("withdrawn_on", withdrawn_on, simulated_clock=self.accept_future_dates)

        async def withdraw(conn: Connection) -> pb.WithdrawConsentResponse:
            row = await conn.fetchrow(
                """SELECT consent_given_on, consent_withdrawn_on FROM survivors
                   WHERE survivor_id = $1 FOR UPDATE""",
                request.survivor_id,
            )
            if row is None:
                raise NotFound(f"survivor {request.survivor_id} is not registered")
            if row["consent_withdrawn_on"] is not None:
                raise FailedPrecondition(
                    f"the survivor's consent was withdrawn on {row['consent_withdrawn_on']} "
                    "already",
                    reason="CONSENT_ALREADY_WITHDRAWN",
                )
            if withdrawn_on < row["consent_given_on"]:
                raise invalid(
                    "withdrawn_on",
                    f"is before the consent on record was given ({row['consent_given_on']})",
                    "BEFORE_CONSENT",
                )
            row = await fetch_one(
                conn,
                f"""UPDATE survivors
                   SET consent_withdrawn_on = $2, consent_withdrawn_by = $3, updated_at = now()
                   WHERE survivor_id = $1
                   RETURNING intake::text, intake_pb, {_SURVIVOR_COLUMNS}""",
                request.survivor_id,
                withdrawn_on,
                request.recorded_by,
            )
            await _consent_event(
                conn, request.survivor_id, "WITHDRAWN", withdrawn_on, request.recorded_by
            )
            survivor = self._survivor(intake_mod.stored_intake(row), row)
            return pb.WithdrawConsentResponse(survivor=survivor)

        return await once_per_request(self.db, request, pb.WithdrawConsentResponse, withdraw)

    # --- assessments -----------------------------------------------------------------

    async def AssessEligibility(
        self, request: pb.AssessEligibilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.AssessEligibilityResponse:
        # An assessment decides on a day that has come: one dated later would pin the
        # survivor to rules, and record a decision, for a day nobody has seen yet.
        not_after_today(
            "assessment_date",
            from_proto_date(request.assessment_date),
            simulated_clock=self.accept_future_dates,
        )
        return served(pb.AssessEligibilityResponse, await self.assessor.assess(request))

    async def GetAssessment(
        self, request: pb.GetAssessmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAssessmentResponse:
        row = await self.db.pool.fetchrow(
            "SELECT result, reassessment_reason FROM assessments WHERE assessment_id = $1",
            request.assessment_id,
        )
        if row is None:
            raise NotFound(f"assessment {request.assessment_id} does not exist")
        response = pb.GetAssessmentResponse
        assessment = as_served(row["result"], row["reassessment_reason"])
        return served(response, holding(response, "assessment", assessment))

    async def ListAssessments(
        self, request: pb.ListAssessmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAssessmentsResponse:
        require_known_district_filter(request.district_code)
        query = {
            "survivor_id": request.survivor_id,
            "district_code": request.district_code,
            "from": _optional_date(request, "from_date"),
            "to": _optional_date(request, "to_date"),
        }
        after = pagination.decode(request.page_token, query, (pagination.iso_date, pagination.text))
        size = pagination.page_size(request.page_size)
        rows = await self.db.pool.fetch(
            """SELECT assessment_id, assessment_date, result, reassessment_reason
               FROM assessments
               WHERE ($1 = '' OR survivor_id = $1)
                 AND ($2 = '' OR district_code = $2)
                 AND ($3::date IS NULL OR assessment_date >= $3)
                 AND ($4::date IS NULL OR assessment_date <= $4)
                 AND ($5::date IS NULL OR (assessment_date, assessment_id) > ($5, $6))
               ORDER BY assessment_date, assessment_id
               LIMIT $7""",
            request.survivor_id,
            request.district_code,
            query["from"],
            query["to"],
            after[0] if after else None,
            after[1] if after else "",
            size + 1,
        )
        page = rows[:size]
        token = (
            pagination.encode(
                [page[-1]["assessment_date"].isoformat(), page[-1]["assessment_id"]], query
            )
            if len(rows) > size
            else ""
        )
        response = pb.ListAssessmentsResponse
        # Served as stored, never parsed here.
        assessments = [as_served(r["result"], r["reassessment_reason"]) for r in page]
        return served(
            response,
            holding(response, "assessments", *assessments, rest=response(next_page_token=token)),
        )

    # --- rule sets ---------------------------------------------------------------------

    async def _rule_set(
        self, conn: Connection, row: asyncpg.Record, compiled: rules.RuleSet | None = None
    ) -> pb.RuleSet:
        """A published version, with the names of the programmes it decides (read from
        the version as compiled, kept once per process)."""
        if compiled is None:
            compiled = await self.rulebook.get(conn, row["rule_set_id"], row["version"])
        return pb.RuleSet(
            rule_set_id=row["rule_set_id"],
            version=row["version"],
            source_yaml=row["source_yaml"],
            publish_time=timestamp(row["published_at"]),
            published_by=row["published_by"],
            change_note=row["change_note"],
            programmes=[
                pb.RuleSetProgramme(
                    programme_id=programme_id,
                    name=localized_text_pb2.LocalizedText(en=name.en, az=name.az),
                )
                for programme_id, name in compiled.programmes.items()
            ],
        )

    async def ListRuleSets(
        self, request: pb.ListRuleSetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRuleSetsResponse:
        query = {"rule_set_id": request.rule_set_id}
        after = pagination.decode(request.page_token, query, (pagination.text, pagination.int32))
        size = pagination.page_size(request.page_size)
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT * FROM rule_sets
                   WHERE ($1 = '' OR rule_set_id = $1)
                     AND ($2::text IS NULL OR (rule_set_id, version) > ($2, $3))
                   ORDER BY rule_set_id, version LIMIT $4""",
                request.rule_set_id,
                after[0] if after else None,
                after[1] if after else 0,
                size + 1,
            )
            page = rows[:size]
            rule_sets = [await self._rule_set(conn, r) for r in page]
        token = (
            pagination.encode([page[-1]["rule_set_id"], page[-1]["version"]], query)
            if len(rows) > size
            else ""
        )
        return pb.ListRuleSetsResponse(rule_sets=rule_sets, next_page_token=token)

    async def GetRuleSet(
        self, request: pb.GetRuleSetRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRuleSetResponse:
        async with self.db.pool.acquire() as conn:
            version = request.version or await self.rulebook.latest_version(
                conn, request.rule_set_id
            )
            row = await conn.fetchrow(
                "SELECT * FROM rule_sets WHERE rule_set_id = $1 AND version = $2",
                request.rule_set_id,
                version,
            )
            if row is None:
                raise NotFound(f"rule set {request.rule_set_id} version {version} does not exist")
            return pb.GetRuleSetResponse(rule_set=await self._rule_set(conn, row))

    async def PublishRuleSet(
        self, request: pb.PublishRuleSetRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublishRuleSetResponse:
        try:
            rule_set = rules.load(request.source_yaml)
        except rules.RuleSetError as error:
            raise rule_set_error(error) from None
        results = rules.run_tests(rule_set, facts_of_case)
        failed = [r for r in results if not r.passed]
        if not rule_set.tests or failed:
            detail = (
                [FieldViolation("source_yaml", "the rule set has no test cases", "rule_set.tests")]
                if not rule_set.tests
                else [
                    FieldViolation("source_yaml", f"test {r.case_id}: {f}", "rule_set.test_failed")
                    for r in failed
                    for f in r.failures
                ]
            )
            raise InvalidArgument(
                "the rule set was not published: " + "; ".join(v.description for v in detail[:10]),
                detail,
            )

        # A version that cannot decide a stored survivor, on a day it is in force, is not
        # published: a re-assessment of them under it would be refused.
        async with self.db.pool.acquire() as conn, conn.transaction(readonly=True):
            async for _ in _decided_again(conn, rule_set, every_day=False):
                pass

        async def publish(conn: Connection) -> pb.PublishRuleSetResponse:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"rule_set:{rule_set.rule_set_id}"
            )
            latest = await conn.fetchrow(
                """SELECT version, source_yaml FROM rule_sets WHERE rule_set_id = $1
                   ORDER BY version DESC LIMIT 1""",
                rule_set.rule_set_id,
            )
            if latest is None:
                # A new id (a typo above all) would publish rules no assessment ever uses.
                raise await _unknown_rule_set(conn, rule_set.rule_set_id)
            if same_rules(latest["source_yaml"], request.source_yaml):
                raise FailedPrecondition(
                    f"rule set {rule_set.rule_set_id} version {latest['version']} already says "
                    "exactly this; nothing was published",
                    reason="RULE_SET_UNCHANGED",
                    metadata={
                        "rule_set_id": rule_set.rule_set_id,
                        "version": str(latest["version"]),
                    },
                )
            version = (latest["version"] if latest else 0) + 1
            row = await fetch_one(
                conn,
                """INSERT INTO rule_sets (rule_set_id, version, source_yaml, published_by,
                                          change_note)
                   VALUES ($1, $2, $3, $4, $5) RETURNING *""",
                rule_set.rule_set_id,
                version,
                request.source_yaml,
                request.published_by,
                request.change_note,
            )
            return pb.PublishRuleSetResponse(
                rule_set=await self._rule_set(conn, row, rule_set),
                test_results=[
                    pb.TestCaseResult(case_id=r.case_id, passed=r.passed, failures=r.failures)
                    for r in results
                ],
            )

        return await once_per_request(self.db, request, pb.PublishRuleSetResponse, publish)

    async def SimulateRuleSet(
        self, request: pb.SimulateRuleSetRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimulateRuleSetResponse:
        try:
            candidate = rules.load(request.source_yaml)
        except rules.RuleSetError as error:
            raise rule_set_error(error) from None
        max_examples = request.max_examples or 5
        changed: dict[str, list[pb.DecisionChangeExample]] = {}
        counts: dict[str, int] = {}
        evaluated = 0
        async with self.db.pool.acquire() as conn, conn.transaction(readonly=True):
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT FROM rule_sets WHERE rule_set_id = $1)",
                candidate.rule_set_id,
            ):  # a typo of the id: "no changes" would say nothing of the rules
                raise await _unknown_rule_set(conn, candidate.rule_set_id)
            async for row, after in _decided_again(conn, candidate, every_day=True):
                evaluated += 1
                before = {
                    d.programme_id: d.outcome
                    for d in pb.Assessment.FromString(row["result"]).decisions
                }
                # A programme the candidate no longer decides changes too (to unspecified).
                for programme_id in after.keys() | before.keys():
                    old = before.get(programme_id, pb.OUTCOME_UNSPECIFIED)
                    new = (
                        OUTCOME[after[programme_id]]
                        if programme_id in after
                        else pb.OUTCOME_UNSPECIFIED
                    )
                    if new == old:
                        continue
                    counts[programme_id] = counts.get(programme_id, 0) + 1
                    examples = changed.setdefault(programme_id, [])
                    if len(examples) < max_examples:
                        examples.append(
                            pb.DecisionChangeExample(
                                assessment_id=row["assessment_id"],
                                before=old,
                                after=new,
                            )
                        )
        return pb.SimulateRuleSetResponse(
            assessments_evaluated=evaluated,
            changes=[
                pb.ProgrammeChange(
                    programme_id=p, changed_count=counts[p], examples=changed.get(p, [])
                )
                for p in sorted(counts)
            ],
        )

    # --- impact follow-ups and reach ------------------------------------------------

    async def RecordFollowUp(
        self, request: pb.RecordFollowUpRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordFollowUpResponse:
        follow_up = request.follow_up

        async def record(conn: Connection) -> pb.RecordFollowUpResponse:
            # The survivor and the visit's date first: refused without asking lending.
            survivor = await conn.fetchrow(
                """SELECT intake, intake_pb, consent_withdrawn_on FROM survivors
                   WHERE survivor_id = $1""",
                follow_up.survivor_id,
            )
            if survivor is None:
                raise invalid(
                    "follow_up.survivor_id", "survivor is not registered", "UNKNOWN_SURVIVOR"
                )
            visited = from_proto_date(follow_up.recorded_on)
            not_after_today(
                "follow_up.recorded_on", visited, simulated_clock=self.accept_future_dates
            )
            born = from_proto_date(intake_mod.stored_intake(survivor).date_of_birth)
            if visited < born:
                # The rule, never the value: refusals are logged (personal data).
                raise invalid("follow_up.recorded_on", "is before the survivor's date of birth")
            if survivor["consent_withdrawn_on"] is not None:
                raise consent_withdrawn(survivor["consent_withdrawn_on"])
            # Asked only for a new request (a retry gets its first answer, lending up or not).
            if follow_up.loan_id:
                loan = await self.loans.loan_of(
                    "follow_up.loan_id", follow_up.loan_id, follow_up.survivor_id
                )
                if not loan.tranches:
                    raise invalid(
                        "follow_up.loan_id",
                        f"loan {follow_up.loan_id} was never disbursed: nothing to follow up",
                        "LOAN_NOT_DISBURSED",
                    )
                # A loan's follow-ups come after its final repayment (+6 and +12 months):
                # a written-off loan was never repaid, and has none.
                if loan.state == lending_pb.LOAN_STATE_CLOSED_WRITTEN_OFF:
                    raise FailedPrecondition(
                        f"loan {follow_up.loan_id} was written off: follow-ups come after a "
                        "loan is repaid",
                        reason="LOAN_WRITTEN_OFF",
                    )
                if not loan.HasField("close_date"):
                    state = lending_pb.LoanState.Name(loan.state).removeprefix("LOAN_STATE_")
                    raise FailedPrecondition(
                        f"loan {follow_up.loan_id} is {state}: its follow-ups come after it "
                        "is repaid",
                        reason="LOAN_NOT_CLOSED",
                    )
                closed = from_proto_date(loan.close_date)
                if visited < closed:
                    raise invalid(
                        "follow_up.recorded_on",
                        f"is before loan {follow_up.loan_id} closed ({closed})",
                        "BEFORE_LOAN_CLOSED",
                    )
                # A +12 visit on the day the loan closed took the slot of the real one
                # and counted as working a year on.
                opens = add_months(closed, follow_up.months_after) - FOLLOW_UP_EARLY
                if visited < opens:
                    raise invalid(
                        "follow_up.recorded_on",
                        f"is before the +{follow_up.months_after} month follow-up of loan "
                        f"{follow_up.loan_id} can be made: from {opens} (closed {closed})",
                        "BEFORE_FOLLOW_UP_WINDOW",
                    )
            inserted = await conn.fetchval(
                """INSERT INTO follow_ups (survivor_id, loan_id, months_after,
                       household_income_minor, working, family_members_supported,
                       recorded_by, recorded_on)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT DO NOTHING RETURNING true""",
                follow_up.survivor_id,
                follow_up.loan_id,
                follow_up.months_after,
                follow_up.household_income_minor,
                follow_up.working,
                follow_up.family_members_supported,
                follow_up.recorded_by,
                from_proto_date(follow_up.recorded_on),
            )
            if not inserted:
                of_loan = f" after loan {follow_up.loan_id}" if follow_up.loan_id else ""
                raise FailedPrecondition(
                    f"the +{follow_up.months_after}-month follow-up of "
                    f"{follow_up.survivor_id}{of_loan} is already recorded",
                    reason="FOLLOW_UP_RECORDED",
                )
            return pb.RecordFollowUpResponse(follow_up=follow_up)

        return await once_per_request(self.db, request, pb.RecordFollowUpResponse, record)

    async def GetReachReport(
        self, request: pb.GetReachReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReachReportResponse:
        require_known_district_filter(request.district_code)
        row = await fetch_one(
            self.db.pool,
            """SELECT count(*) AS survivors,
                      coalesce(sum((intake->>'household_size')::int - 1), 0) AS family_members
               FROM survivors WHERE $1 = '' OR district_code = $1""",
            request.district_code,
        )
        # Survivors are counted, not follow-ups: a survivor followed up after two loans
        # counts once. Working at +12 is read from the survivor's latest +12-month
        # follow-up; family members supported from the survivor's latest follow-up: that
        # of the loan visited last, and of that loan the +12 if recorded, else the +6.
        follow = await fetch_one(
            self.db.pool,
            """WITH f AS (
                   SELECT f.survivor_id, f.loan_id, f.months_after, f.working,
                          f.family_members_supported, f.recorded_on, f.created_at,
                          max(f.recorded_on) OVER loan AS loan_visited,
                          max(f.created_at) OVER loan AS loan_recorded
                   FROM follow_ups f JOIN survivors s USING (survivor_id)
                   WHERE $1 = '' OR s.district_code = $1
                   WINDOW loan AS (PARTITION BY f.survivor_id, f.loan_id)
               ), latest AS (
                   SELECT DISTINCT ON (survivor_id) family_members_supported FROM f
                   ORDER BY survivor_id, loan_visited DESC, loan_recorded DESC,
                            months_after DESC
               ), latest_12 AS (
                   SELECT DISTINCT ON (survivor_id) working FROM f WHERE months_after = 12
                   ORDER BY survivor_id, recorded_on DESC, created_at DESC
               )
               SELECT (SELECT count(DISTINCT survivor_id) FROM f WHERE months_after = 6)
                          AS six,
                      (SELECT count(*) FROM latest_12) AS twelve,
                      (SELECT count(*) FROM latest_12 WHERE working) AS working,
                      (SELECT coalesce(sum(family_members_supported), 0) FROM latest)
                          AS supported""",
            request.district_code,
        )
        return pb.GetReachReportResponse(
            report=pb.ReachReport(
                survivors=row["survivors"],
                family_members=row["family_members"],
                followed_up_6=follow["six"],
                followed_up_12=follow["twelve"],
                working_at_12=follow["working"],
                family_members_supported=follow["supported"],
            )
        )


def _optional_date(request: Any, name: str) -> date | None:
    return from_proto_date(getattr(request, name)) if request.HasField(name) else None


async def attach(
    server: GuardedServer, db: Database, settings: Settings, resources: AsyncExitStack
) -> None:
    rulebook = RuleBook()
    async with db.transaction() as conn:
        await rulebook.seed_shipped(conn)
    pb_grpc.add_EligibilityServiceServicer_to_server(
        EligibilityServicer(
            db,
            rulebook,
            LoanBook.open(settings, resources),
            accept_future_dates=settings.eligibility_accept_future_dates,
        ),
        server,
    )


SPEC = ServiceSpec(
    name="eligibility",
    full_name="mineaction.eligibility.v1.EligibilityService",
    migrations_dir=Path(__file__).parent / "migrations",
    attach=attach,
    address=lambda settings: settings.eligibility_address,
)
