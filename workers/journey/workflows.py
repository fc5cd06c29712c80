"""The survivor's journey: one SurvivorJourneyWorkflow per survivor at a time, keyed by the
opaque survivor id (and, from a survivor's second journey on, its number: see
journey_workflow_id), from intake to final repayment and the impact follow-ups; each
assistance item runs as an AssistanceWorkflow child, in parallel with the loan.

Workflow code is deterministic: time comes from workflow.now(), money from the ledger
(through activities), and nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from services.common.identity import same_person
    from services.common.programme_time import PROGRAMME_ZONE, add_months
    from workers.journey import search_attributes as sa
    from workers.journey.activities import JourneyActivities
    from workers.journey.model import (
        CLOSED_LOAN_STATES,
        LOAN_PROGRAMMES,
        AdvanceInput,
        AssessInput,
        AssessmentSummary,
        AssistanceAction,
        AssistanceInput,
        AssistanceRefresh,
        AssistanceResume,
        AssistanceState,
        CommitteeDecision,
        DisburseInput,
        FollowUp,
        FollowUpInput,
        Hardship,
        HardshipInput,
        JourneyInput,
        JourneyState,
        JourneyStatus,
        LoanApplicationInput,
        LoanChanged,
        LoanDecisionInput,
        LoanRequest,
        LoanSnapshot,
        LoanSummary,
        NeedInput,
        Notification,
        RequestAssistanceInput,
        SnapshotInput,
        Stage,
        SurvivorProfile,
        TranchePlan,
        WriteOffDecision,
        WriteOffInput,
        WriteOffProposal,
        WriteOffStepInput,
        WriteOffWithdrawal,
        assistance_workflow_id,
    )

Arg = TypeVar("Arg")
Result = TypeVar("Result")

# Service calls are short; retries cover restarts and network blips, never rejections
# (those raise non-retryable ApplicationErrors in the activities).
SERVICE_CALL_TIMEOUT = timedelta(seconds=30)
SERVICE_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)


async def call_service(
    activity: Callable[[JourneyActivities, Arg], Awaitable[Result]], arg: Arg
) -> Result:
    """Run one service-calling activity with the journey's timeout and retry policy."""
    return await workflow.execute_activity_method(
        activity,
        arg,
        start_to_close_timeout=SERVICE_CALL_TIMEOUT,
        schedule_to_close_timeout=timedelta(hours=1),
        retry_policy=SERVICE_CALL_RETRY,
    )


async def call_local(
    activity: Callable[[JourneyActivities, Arg], Awaitable[Result]], arg: Arg
) -> Result:
    """The same call as a local activity: it runs in the worker inside the workflow task
    that asks for it (a marker in the history), so it costs no activity task and no
    further workflow task. Same timeouts and retry policy; the activity's request id still
    comes from the workflow id and the step."""
    return await workflow.execute_local_activity_method(
        activity,
        arg,
        start_to_close_timeout=SERVICE_CALL_TIMEOUT,
        schedule_to_close_timeout=timedelta(hours=1),
        retry_policy=SERVICE_CALL_RETRY,
    )


# Reads, and the outbox write in the worker's own database: cheap, idempotent, and on the
# journey's busiest paths (the start, every instalment), so they run as local activities.
LOCAL_ACTIVITIES = frozenset(
    {
        "survivor_profile",
        "assess_eligibility",
        "submit_loan_application",
        "loan_snapshot",
        "loan_product_max_tranches",
        "notify",
    }
)

# Journeys started from this change on (workflow.patched): the start path and the reads of
# the repayment cycle run as local activities, and search attributes are upserted once per
# workflow task, only when a value changes. Older histories replay on the old path.
FEWER_TASKS_PATCH = "journey-fewer-tasks"

# Journeys reaching committee review from this change on: the reminders and escalation go
# on until a decision is accepted by lending (not merely sent), and each decision sent is
# its own request (its attempt number in the request id), so one the service refused (four
# eyes) can be followed by a correct one.
DECISION_ATTEMPTS_PATCH = "journey-decision-attempts"
# Hardship requests from this change on are numbered per journey; the request id comes
# from the number, so a second pause or reschedule the same day is a request of its own.
HARDSHIP_SEQUENCE_PATCH = "journey-hardship-sequence"
# Hardship reschedules from this change on never make the borrower pay sooner: the journey
# reads the loan first and, if the next instalment falls later than the grace asked for
# would reach (the loan's first grace, or instalments prepaid), lengthens the grace to
# reach it and the term by as much, keeping the number of instalments asked for.
RESCHEDULE_NOT_SOONER_PATCH = "journey-reschedule-not-sooner"
# Assistance items from this change on, when the service refuses a step, read the item's
# record from the service again and publish it if it moved: a step sent straight to the
# assistance service (a drop-out under staff's own token) or a promotion off the waitlist
# reaches the item, its journey, and ends the item when the record is finished.
ASSISTANCE_CATCH_UP_PATCH = "assistance-catch-up"
# Items waitlisted from this change on read their record once a day while they wait, so a
# promotion reaches the journey without anyone acting; after WAITLIST_READS_PER_RUN reads
# (or when the server suggests it) the item continues as new, so its history stays small.
ASSISTANCE_WAITLIST_READS_PATCH = "assistance-waitlist-reads"
# Follow-ups recorded from this change on name the journey's loan, so the eligibility
# service records a survivor's +6 and +12 month follow-ups once per loan: a later loan
# journey is followed up as well. Follow-ups recorded before were the survivor's.
FOLLOW_UP_PER_LOAN_PATCH = "follow-up-per-loan"
# Journeys started from this change on request assistance only for programmes their
# assessment found the survivor eligible for: an item whose programme is NOT_ELIGIBLE or
# NEEDS_REVIEW is not requested and shows as such (nothing reserved); a journey whose
# items are all refused so, with no loan asked for, closes as not eligible. Types the
# rule set has no programme for are requested as before.
ASSISTANCE_NEEDS_ELIGIBILITY_PATCH = "assistance-needs-eligibility"
# Journeys whose loan is refused (not eligible, or rejected by the committee) from this
# change on follow their assistance items to the end before closing with that outcome:
# the items (children that outlive their parent) were left running with no journey, and a
# later journey could request the same assistance again.
LOAN_REFUSED_KEEPS_ASSISTANCE_PATCH = "loan-refused-keeps-assistance"
# Journeys from this change on hear of money moved outside them (signal loan_changed)
# while they wait for a later tranche or a follow-up too, and read the loan before each:
# a loan repaid in full before its last tranche lapses the rest of the plan (the tranche
# was refused and the journey failed), and a repaid loan reopened by a reversal takes the
# journey back to its repayment cycle (it stayed REPAID and completed).
FOLLOWS_THE_LEDGER_PATCH = "journey-follows-the-ledger"
# Journeys reaching committee review from this change on hear of a decision recorded
# straight with lending (ApproveLoan or RejectLoan through the API, a loan withdrawn): told
# by the signal `loan_changed`, they read the loan and go on as the ledger says. They
# stayed in COMMITTEE_REVIEW for good, refusing the committee's decision sent to them as
# one the ledger already held.
COMMITTEE_HEARS_THE_LEDGER_PATCH = "journey-committee-hears-the-ledger"
# Journeys whose loan is written off from this change on follow their assistance items to
# the end (stage ASSISTANCE_ONLY) before closing as WRITTEN_OFF, as a refused loan's do
# (LOAN_REFUSED_KEEPS_ASSISTANCE_PATCH): the items ran on with no journey, and a later
# journey could request the same assistance again.
WRITTEN_OFF_KEEPS_ASSISTANCE_PATCH = "written-off-keeps-assistance"
# Journeys (and runs continued as new) from this change on count their days in Baku, as
# the services do (WorkflowDays): the day they approve, disburse, pause or follow up on,
# and the midnight they wake at for a due date. Before, they counted UTC's days, a day
# behind from 20:00 UTC. Older histories replay on UTC's days.
PROGRAMME_DAYS_PATCH = "journey-programme-days"
# Journeys whose application is withdrawn (WithdrawLoan through the API) from this change
# on close as CLOSED_WITHDRAWN: they closed as CLOSED_REJECTED, counted with the
# committee's rejections in every list by stage.
WITHDRAWN_STAGE_PATCH = "journey-withdrawn-stage"
# Hardship pauses asked of lending from this change on cover the days asked for: the end
# date sent is the pause's last day, as lending counts it. A pause of 60 days covered 61.
PAUSE_DAYS_COUNTED_PATCH = "journey-pause-days-counted"
# Journeys from this change on wait for the fund when lending refuses a tranche for want
# of money (INSUFFICIENT_FUNDS): the case worker is told once, and the tranche is tried
# again each day until repayments flowing back into the fund cover it. The refusal failed
# the journey for good, leaving its loan ACTIVE with nothing following it; a journey whose
# tranche plan cannot be paid out as planned (tranches not adding up to the loan) now
# fails at its start, before anything is asked of lending.
FUND_WAIT_PATCH = "journey-waits-for-the-fund"
# Journeys from this change on fit their tranche plan to the loan: a plan with more
# tranches than the product allows fails at the start, before anything is applied for
# (lending refused the extra tranche months after the approval, leaving the loan ACTIVE
# with nothing following it), and a further tranche planned after the day the borrower is
# reminded of the first instalment lapses on that day, the case worker told (the journey
# waited in DISBURSEMENT for the planned day, and the borrower heard of no instalment
# until the field visit for arrears). A further tranche re-spreads the schedule, so it
# must come before the borrower is told what to pay.
TRANCHES_FIT_THE_LOAN_PATCH = "journey-tranches-fit-the-loan"
# Runs from this change on record a write-off proposal with lending as it is made, and
# withdraw or confirm it there, one request per step; the journey holds what the ledger
# holds, reading back a proposal made or withdrawn through lending's API. Before, the
# journey alone held its proposal until the confirmation (lending saw none, and one made
# through the API was invisible to the journey). Chosen once per run.
WRITE_OFFS_WITH_LENDING_PATCH = "journey-write-offs-with-lending"
# Runs from this change on end their tranche plan when lending refuses a tranche as
# beyond the approved principal or the product's tranches (it was paid out through
# lending's API meanwhile), or while a write-off is proposed there (the tranche lapses,
# the case worker told): the loan goes on as the ledger holds it. The refusal failed the
# journey on the tranche's day.
TRANCHES_PAID_ELSEWHERE_PATCH = "journey-tranches-paid-elsewhere"
# Items from this change on end refused when the assistance service refuses their need
# (a type it does not have): the journey goes on without them. The refusal failed the
# item's workflow, and the journey waited for the item for ever.
ASSISTANCE_NEED_REFUSED_PATCH = "assistance-need-refused"
# Runs from this change on count a follow-up that eligibility says is recorded already
# (staff recorded it there, or another client did) as recorded, and go on to the next.
# The refusal failed the journey after its update had told the caller all was well.
FOLLOW_UP_RECORDED_ELSEWHERE_PATCH = "journey-follow-up-recorded-elsewhere"
# Loan news heard while the repayment cycle was in an activity (its read of the loan, a
# reminder: ordinary activities on runs from before FEWER_TASKS_PATCH) is read before the
# cycle waits: the wait used to clear it and sleep to the next reminder or due date with
# the read from before the news. Asked only when such news is unread.
CYCLE_KEEPS_NEWS_PATCH = "journey-cycle-keeps-news"
# A reversal heard after the last follow-up, while the journey still follows assistance
# items, takes it back to its repayment cycle: it stayed REPAID and completed as such
# while the ledger said ACTIVE. Asked only when news comes in that wait.
REOPENED_AFTER_FOLLOW_UPS_PATCH = "journey-reopened-after-follow-ups"
# Arrears followed as the ledger has them. A loan behind is read again on the day its
# days past due cross into the next delinquency bucket or reach an escalation, not only
# at the next due date or a month on: DaysPastDue lagged the ledger by up to a month,
# and operators' queries (DaysPastDue > 30) missed loans for weeks. A borrower who
# catches up below an escalation's threshold leaves ARREARS_REVIEW, and falling behind
# again escalates again (it stuck, and a relapse got no field visit).
ARREARS_FOLLOW_THE_LEDGER_PATCH = "journey-arrears-follow-the-ledger"
# A reminder whose wait ended after its due date (the worker down meanwhile) is not sent:
# it would tell the borrower of a date already past. The loan is read again instead.
NO_LATE_REMINDER_PATCH = "journey-no-late-reminder"
# Before each impact follow-up is asked for, the journey reads whether the survivor has
# withdrawn consent to data processing (WithdrawConsent): if so it asks for none, and
# ends once nothing else is planned. It asked the case worker for follow-ups eligibility
# would refuse, for months.
CONSENT_BEFORE_FOLLOW_UPS_PATCH = "journey-consent-before-follow-ups"
# A journey given two assistance items of one type (each item's workflow id comes from its
# type) is refused at its start, before anything is read, requested or applied for: the
# second item's start failed ("Workflow execution already started"), the journey failed,
# and the first item ran on without it. Asked only when the input repeats a type.
REPEATED_ASSISTANCE_PATCH = "journey-refuses-repeated-assistance"
# A journey that fails writes the search attributes it holds back (stage, district...)
# before it fails: they stayed as last written (Stage INTAKE, no DistrictCode), so
# operators' filters by stage or district missed the failed journey. Asked only when
# something is held back at that moment.
FAILURE_WRITES_SEARCH_ATTRIBUTES_PATCH = "journey-failure-writes-search-attributes"
# The first days of the delinquency buckets after "1-30": 31-60, 61-90, over 90.
BUCKET_STARTS = (31, 61, 91)
FUND_READ_EVERY = timedelta(days=1)
# What a loan the committee approved may have become by the time the journey reads it.
APPROVED_OR_LATER = ("APPROVED", "ACTIVE", *CLOSED_LOAN_STATES)
WAITLISTED = "waitlisted"
WAITLIST_READ_EVERY = timedelta(days=1)
WAITLIST_READS_PER_RUN = 90
# What RescheduleLoan accepts (and the hardship validator lets through).
MAX_RESCHEDULE_GRACE_MONTHS = 24
MAX_RESCHEDULE_TERM_MONTHS = 120


def refused(error: ActivityError) -> ApplicationError:
    """An update's activity failed: fail the update with the service's own answer (its
    message, status code as the type, ErrorInfo reason as the first detail), not with
    "Activity task failed"."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return ApplicationError(cause.message, *cause.details, type=cause.type, non_retryable=True)
    return ApplicationError(str(cause or error), type="SERVICE_CALL_FAILED", non_retryable=True)


def _refused_because(error: ActivityError, *reasons: str) -> bool:
    """The service refused the activity's call with one of these ErrorInfo reasons."""
    cause = error.cause
    return isinstance(cause, ApplicationError) and cause.details[:1] in [(r,) for r in reasons]


def _field_refused_because(error: ActivityError, reason: str) -> bool:
    """The service refused a field of the activity's call with this reason."""
    cause = error.cause
    return isinstance(cause, ApplicationError) and reason in cause.details[1:]


def loan_closed(snap: LoanSnapshot) -> bool:
    return snap.status in CLOSED_LOAN_STATES


@dataclass(frozen=True)
class WorkflowDays:
    """Where a workflow's days begin and end: in Baku, as the services count them, for
    runs started from its patch on (`since`); in UTC, as before, on older histories."""

    zone: tzinfo = UTC
    # Baku days start for a workflow a few minutes after midnight: a service whose clock is
    # a little behind Temporal's must already count the day it is sent as today (a
    # disbursement dated "tomorrow" is refused). UTC midnight was 04:00 in Baku.
    starts: timedelta = timedelta(0)

    @staticmethod
    def since(patch_id: str) -> WorkflowDays:
        if workflow.patched(patch_id):
            return WorkflowDays(PROGRAMME_ZONE, timedelta(minutes=5))
        return WorkflowDays()

    def today(self) -> date:
        return workflow.now().astimezone(self.zone).date()

    def until(self, day: date, at: time = time()) -> timedelta:
        """Time from now to `at` o'clock on `day` (none if that has passed)."""
        start = datetime.combine(day, at, tzinfo=self.zone) + self.starts
        return max(timedelta(0), start - workflow.now())


def not_sooner(effective: date, next_due: str, grace: int, term: int) -> tuple[int, int]:
    """The grace and term for a hardship reschedule from `effective` whose first
    instalment falls no sooner than `next_due` (the next instalment of the schedule it
    replaces, ISO; empty when none is ahead). Lending counts the grace from the effective
    date: the first instalment falls `grace + 1` months after it. The grace grows until
    that reaches `next_due`, and the term by as much, so the instalments are as many as
    asked for and no larger. A product's moratorium months can only put the first
    instalment later still. ValueError, saying why, when that would take more grace or a
    longer term than a reschedule may have (24 and 120 months)."""
    if not next_due:
        return grace, term
    due = date.fromisoformat(next_due)
    needed = grace
    while add_months(effective, needed + 1) < due:
        needed += 1
    if needed > MAX_RESCHEDULE_GRACE_MONTHS:
        raise ValueError(
            f"the next instalment ({due}) is more than {MAX_RESCHEDULE_GRACE_MONTHS} months "
            "of grace away: a reschedule now would bring it forward; ask for a pause of "
            "delinquency, or reschedule nearer the time"
        )
    if term + needed - grace > MAX_RESCHEDULE_TERM_MONTHS:
        raise ValueError(
            f"keeping the next instalment ({due}) takes {needed - grace} more months of "
            f"grace, and {term} months of instalments with them pass the "
            f"{MAX_RESCHEDULE_TERM_MONTHS}-month limit: ask for at most "
            f"{MAX_RESCHEDULE_TERM_MONTHS - (needed - grace)} months"
        )
    return needed, term + needed - grace


@workflow.defn
class SurvivorJourneyWorkflow:
    def __init__(self) -> None:
        self._input: JourneyInput | None = None
        self._s = JourneyState()
        self._deciding = False
        self._decision: CommitteeDecision | None = None
        self._decision_attempts = False  # set by DECISION_ATTEMPTS_PATCH
        self._writing_off = False
        self._loan_changed = False
        # loan_changed signals heard, and how many had been when the ledger was last read:
        # a signal that comes while the journey does something else is not lost.
        self._loan_news = 0
        self._news_at_read = 0
        self._follow_up: FollowUp | None = None
        # The last read's day and days past due, to tell a pause (they stay) from arrears
        # that grow (ARREARS_FOLLOW_THE_LEDGER_PATCH); not carried across continue-as-new.
        self._dpd_seen: tuple[date, int] | None = None
        # Set by FEWER_TASKS_PATCH: local activities and batched search attributes.
        self._fewer_tasks = False
        self._sa_pending: dict[str, SearchAttributeUpdate] = {}  # type: ignore[type-arg]
        self._sa_current: dict[str, object] = {}
        self._days = WorkflowDays()
        # News that came before the journey knew its loan (COMMITTEE_HEARS_THE_LEDGER_PATCH).
        self._early_news = 0
        # A tranche lending refused for want of money, waiting for the fund (0: none).
        self._waiting_for_funds_minor = 0
        self._write_offs_with_lending = False  # WRITE_OFFS_WITH_LENDING_PATCH

    # --- the journey -------------------------------------------------------------------

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyStatus:
        try:
            status = await self._journey(journey)
        except FailureError:
            # The journey fails: what operators filter by shows where it failed (an upsert,
            # then the failure). Only the batched path holds attributes back.
            if self._sa_changes() and workflow.patched(FAILURE_WRITES_SEARCH_ATTRIBUTES_PATCH):
                self._flush()
            raise
        return await self._finish(status)

    async def _journey(self, journey: JourneyInput) -> JourneyStatus:
        self._input = journey
        self._days = WorkflowDays.since(PROGRAMME_DAYS_PATCH)
        self._write_offs_with_lending = workflow.patched(WRITE_OFFS_WITH_LENDING_PATCH)
        if workflow.patched(FEWER_TASKS_PATCH):
            self._fewer_tasks = True
            # What the starter (or the run continued from) already set.
            self._sa_current = {
                pair.key.name: pair.value for pair in workflow.info().typed_search_attributes
            }
        if journey.resume is not None:  # continued as new in the repayment cycle
            self._s = journey.resume
            return await self._after_disbursement()
        # Checked before anything is started (not in a run continued as new: its items
        # are running already, its loan being repaid).
        repeated = journey.repeated_assistance_types()
        if repeated and workflow.patched(REPEATED_ASSISTANCE_PATCH):
            raise ApplicationError(
                f"assistance {', '.join(repeated)} is asked for more than once: a journey "
                "has one item per assistance type",
                type="REPEATED_ASSISTANCE_TYPE",
                non_retryable=True,
            )
        problem = journey.loan.plan_problem() if journey.loan else ""
        if problem and workflow.patched(FUND_WAIT_PATCH):
            raise ApplicationError(problem, type="INVALID_TRANCHE_PLAN", non_retryable=True)
        if journey.loan and len(journey.loan.tranches) > 1:
            await self._check_tranches_allowed(journey.loan)

        assess = AssessInput(journey.survivor_id, self._days.today().isoformat())
        if self._fewer_tasks:  # independent reads: both at once, in the first task
            # Both settle before either's failure ends the run: a workflow's failure must
            # be its last command, after every local activity's marker.
            read_profile, read_assessment = await asyncio.gather(
                self._call(JourneyActivities.survivor_profile, journey.survivor_id),
                self._call(JourneyActivities.assess_eligibility, assess),
                return_exceptions=True,
            )
            for outcome in (read_profile, read_assessment):
                if isinstance(outcome, BaseException):
                    raise outcome
            assert isinstance(read_profile, SurvivorProfile)
            assert isinstance(read_assessment, AssessmentSummary)
            profile, assessment = read_profile, read_assessment
            self._s.profile = profile
            self._upsert(
                sa.DISTRICT_CODE.value_set(profile.district_code),
                sa.PROGRAMME_YEAR.value_set(journey.programme_year),
            )
        else:
            profile = await self._call(JourneyActivities.survivor_profile, journey.survivor_id)
            self._s.profile = profile
            self._upsert(
                sa.DISTRICT_CODE.value_set(profile.district_code),
                sa.PROGRAMME_YEAR.value_set(journey.programme_year),
            )
            self._set_stage(Stage.ELIGIBILITY)
            assessment = await self._call(JourneyActivities.assess_eligibility, assess)
        self._s.assessment = assessment

        self._set_stage(Stage.ASSISTANCE_PLAN)
        gated = 0
        for plan in journey.assistance:
            decided = assessment.outcomes.get(plan.type_id, "ELIGIBLE")
            if decided != "ELIGIBLE" and workflow.patched(ASSISTANCE_NEEDS_ELIGIBILITY_PATCH):
                state = "needs_review" if decided == "NEEDS_REVIEW" else "not_eligible"
                self._s.assistance[plan.type_id] = AssistanceState(
                    plan.type_id, "", "", state, True
                )
                gated += 1
                continue
            child_id = assistance_workflow_id(workflow.info().workflow_id, plan.type_id)
            await workflow.start_child_workflow(
                AssistanceWorkflow.run,
                AssistanceInput(
                    workflow.info().workflow_id,
                    journey.survivor_id,
                    journey.case_worker_id,
                    assessment.district_code,
                    assessment.sex,
                    assessment.age_band,
                    plan,
                ),
                id=child_id,
                # The child outlives a continue-as-new of its parent.
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
            self._s.assistance[plan.type_id] = AssistanceState(plan.type_id, "", "", "", False)

        loan = journey.loan
        if loan is None:
            if gated and gated == len(journey.assistance):  # nothing the survivor qualifies for
                self._set_stage(Stage.CLOSED_NOT_ELIGIBLE)
                return self.status()
            self._set_stage(Stage.ASSISTANCE_ONLY)
            await self._wait_condition(self._assistance_finished)
            return self._complete()
        if not any(p in assessment.eligible_programmes for p in LOAN_PROGRAMMES):
            return await self._after_assistance(
                Stage.CLOSED_NOT_ELIGIBLE, LOAN_REFUSED_KEEPS_ASSISTANCE_PATCH
            )

        self._set_stage(Stage.LOAN_APPLICATION)
        self._set_loan(
            await self._call(
                JourneyActivities.submit_loan_application,
                LoanApplicationInput(
                    journey.survivor_id,
                    loan.product_id,
                    loan.amount_minor,
                    loan.purpose,
                    journey.case_worker_id,
                    assessment.district_code,
                    assessment.sex,
                    assessment.age_band,
                    loan.fund_id,
                ),
            )
        )
        if not await self._committee():
            return await self._after_assistance(
                self._refusal(), LOAN_REFUSED_KEEPS_ASSISTANCE_PATCH
            )
        assert self._s.loan is not None
        if self._s.loan.status != "APPROVED" and self._s.snapshot is not None:
            # Read from the ledger, already disbursed outside the journey (in part, or all):
            # the journey's plan goes on from the tranches the ledger holds.
            self._s.tranches_disbursed = self._s.snapshot.tranches
        if self._s.loan.status in ("APPROVED", "ACTIVE"):
            await self._disburse()
        return await self._after_disbursement()

    def _refusal(self) -> Stage:
        """How a journey whose loan the committee did not approve closes."""
        assert self._s.loan is not None
        if self._s.loan.status == "WITHDRAWN" and workflow.patched(WITHDRAWN_STAGE_PATCH):
            return Stage.CLOSED_WITHDRAWN
        return Stage.CLOSED_REJECTED

    async def _after_assistance(self, outcome: Stage, patch_id: str) -> JourneyStatus:
        """No loan (not eligible, rejected, written off): the assistance items go on, and
        the journey follows them to their end (stage ASSISTANCE_ONLY) before closing with
        `outcome` (on histories from before `patch_id`, at once)."""
        if not self._assistance_finished() and workflow.patched(patch_id):
            self._set_stage(Stage.ASSISTANCE_ONLY)
            await self._wait_condition(self._assistance_finished)
        if self._s.stage != outcome:  # a write-off has set it already
            self._set_stage(outcome)
        return self.status()

    async def _committee(self) -> bool:
        """Wait for the committee's decision; remind after N days, escalate at the
        deadline, and keep waiting: a loan is never decided by a timer."""
        assert self._input is not None and self._s.loan is not None
        policy = self._input.policy
        self._set_stage(Stage.COMMITTEE_REVIEW)
        loan_id = self._s.loan.loan_id
        self._decision_attempts = workflow.patched(DECISION_ATTEMPTS_PATCH)
        # Remind until lending has accepted a decision; on the old path the first
        # decision sent stopped the reminders, even one the service then refused.
        awaited = self._loan_decided if self._decision_attempts else self._decision_sent
        waits = (
            (policy.committee_reminder_days, "committee_reminder"),
            (
                policy.committee_deadline_days - policy.committee_reminder_days,
                "committee_escalation",
            ),
        )
        hears_ledger = workflow.patched(COMMITTEE_HEARS_THE_LEDGER_PATCH)
        wait = self._decided_here_or_in_the_ledger if hears_ledger else self._wait_condition
        if hears_ledger:  # a decision recorded while the application was being submitted
            self._loan_news += self._early_news
        waited = 0
        for days, kind in waits:
            try:
                await wait(awaited, within=timedelta(days=days))
                break
            except TimeoutError:
                waited += days
                await self._notify(
                    kind, self._input.case_worker_id, {"loan_id": loan_id, "days": waited}
                )
        await wait(self._loan_decided)
        assert self._s.loan is not None
        if self._s.loan.status in (APPROVED_OR_LATER if hears_ledger else ("APPROVED",)):
            self._s.approved_on = self._days.today().isoformat()
            return True
        return False

    async def _decided_here_or_in_the_ledger(
        self, decided: Callable[[], bool], *, within: timedelta | None = None
    ) -> None:
        """Wait until `decided`, reading the loan whenever news of it comes: a decision
        recorded straight with lending decides it too. TimeoutError after `within`."""
        deadline = None if within is None else workflow.now() + within
        while not decided():
            left = None if deadline is None else deadline - workflow.now()
            if left is not None and left <= timedelta(0):
                raise TimeoutError
            await self._wait_condition(lambda: decided() or self._news_unread(), within=left)
            if not decided():
                await self._snapshot()

    async def _check_tranches_allowed(self, loan: LoanRequest) -> None:
        if not workflow.patched(TRANCHES_FIT_THE_LOAN_PATCH):
            return
        allowed = await self._call(JourneyActivities.loan_product_max_tranches, loan.product_id)
        if allowed and len(loan.tranches) > allowed:
            raise ApplicationError(
                f"the loan's plan has {len(loan.tranches)} tranches; product "
                f"{loan.product_id} allows {allowed}",
                type="INVALID_TRANCHE_PLAN",
                non_retryable=True,
            )

    def _last_tranche_day(self, snap: LoanSnapshot) -> date | None:
        """The last day a further tranche is paid out: the day the borrower is reminded of
        the first instalment, and at the latest the day before it falls due, when lending
        takes no more (None before the loan has a schedule)."""
        assert self._input is not None
        if not snap.first_due_date:
            return None
        before = max(1, self._input.policy.reminder_days_before_due)
        return date.fromisoformat(snap.first_due_date) - timedelta(days=before)

    async def _disburse(self) -> None:
        """Tranche by tranche, each on its planned day after approval."""
        assert self._input is not None and self._input.loan is not None
        assert self._s.loan is not None
        self._set_stage(Stage.DISBURSEMENT)
        approved = date.fromisoformat(self._s.approved_on)
        for sequence, tranche in enumerate(self._input.loan.tranche_plan(), start=1):
            if sequence <= self._s.tranches_disbursed:
                continue
            due = approved + timedelta(days=tranche.days_after_approval)
            if sequence > 1 and workflow.patched(FOLLOWS_THE_LEDGER_PATCH):
                last = None
                if workflow.patched(TRANCHES_FIT_THE_LOAN_PATCH):
                    snap = await self._snapshot()  # for the first due date
                    if loan_closed(snap):
                        return  # repaid already: the rest lapses
                    last = self._last_tranche_day(snap)
                if await self._watch_until(due if last is None else min(due, last), loan_closed):
                    return  # repaid already: the rest lapses
                if last is not None and due > last:  # planned after the borrower is told
                    await self._tranche_lapsed(sequence, tranche)
                    return
            elif due > self._days.today():
                await self._sleep(self._days.until(due))
            paid = await self._paid_out(sequence, tranche)
            if paid is None:  # repaid meanwhile, or repayments have begun: the rest lapses
                return
            self._set_loan(paid)
            self._s.tranches_disbursed = sequence

    async def _paid_out(self, sequence: int, tranche: TranchePlan) -> LoanSummary | None:
        """Disburse one tranche; a fund too small for it is waited for (FUND_WAIT_PATCH),
        trying again each day until the last day a further tranche is paid out. None if
        the loan closed meanwhile, or if the tranche lapsed (the case worker is told)."""
        assert self._input is not None and self._s.loan is not None
        told = False
        while True:
            try:
                return await self._call(
                    JourneyActivities.disburse_tranche,
                    DisburseInput(
                        self._s.loan.loan_id,
                        sequence,
                        tranche.amount_minor,
                        tranche.kind,
                        tranche.description,
                        self._days.today().isoformat(),
                        # The programme pays out once the committee has approved: in the
                        # worker's own name, not the case worker's (a role that may not
                        # disburse). An input's value is not part of what replays compare.
                        "",
                    ),
                )
            except ActivityError as error:
                # Paid out through lending's API meanwhile (all of the principal, or every
                # tranche the product allows), or a write-off proposed there: the ledger
                # holds the rest of the plan, and the loan goes on as it is; a tranche
                # held back by a proposal lapses, the case worker told
                # (TRANCHES_PAID_ELSEWHERE_PATCH).
                held_back = _refused_because(error, "WRITE_OFF_PROPOSED")
                if (
                    held_back
                    or _refused_because(error, "MAX_TRANCHES")
                    or _field_refused_because(error, "ABOVE_APPROVED_PRINCIPAL")
                ) and workflow.patched(TRANCHES_PAID_ELSEWHERE_PATCH):
                    workflow.logger.info("tranche not paid out", extra={"sequence": sequence})
                    await self._snapshot()
                    if held_back:
                        await self._tranche_lapsed(sequence, tranche)
                    return None
                if not _refused_because(
                    error, "INSUFFICIENT_FUNDS", "TRANCHE_AFTER_REPAYMENT_START"
                ) or not workflow.patched(FUND_WAIT_PATCH):
                    raise
                lapsed = _refused_because(error, "TRANCHE_AFTER_REPAYMENT_START")
            # (This loop first ships with TRANCHES_FIT_THE_LOAN_PATCH: no journey ever ran
            # an older form of it, so only FUND_WAIT_PATCH guards it.)
            # The last day for a further tranche, from the loan as last read (the journey
            # reads it before the tranche's day, and after each wait below).
            snap = self._s.snapshot
            last = self._last_tranche_day(snap) if sequence > 1 and snap else None
            if lapsed or (last is not None and self._days.today() >= last):
                await self._tranche_lapsed(sequence, tranche)  # the loan goes on as it is
                return None
            self._waiting_for_funds_minor = tranche.amount_minor
            if not told:
                await self._notify(
                    "disbursement_waiting_for_funds",
                    self._input.case_worker_id,
                    self._tranche_params(sequence, tranche),
                    key=f"waiting-for-funds/{sequence}",
                )
                told = True
            # Tomorrow (or on the last day), or sooner if money moves on the loan itself.
            wait = FUND_READ_EVERY if last is None else min(FUND_READ_EVERY, self._days.until(last))
            try:
                with contextlib.suppress(TimeoutError):
                    await self._wait_condition(self._news_unread, within=wait)
            finally:
                self._waiting_for_funds_minor = 0
            # Repaid or written off meanwhile, whether or not the journey heard.
            if loan_closed(await self._snapshot()):
                return None

    def _tranche_params(self, sequence: int, tranche: TranchePlan) -> dict[str, object]:
        assert self._s.loan is not None
        return {
            "loan_id": self._s.loan.loan_id,
            "sequence": sequence,
            "amount_minor": tranche.amount_minor,
        }

    async def _tranche_lapsed(self, sequence: int, tranche: TranchePlan) -> None:
        """Repayments begin before the tranche is paid out (the fund was short until then,
        or the plan set it later), or a write-off is proposed: the case worker is told;
        the rest of the plan lapses."""
        assert self._input is not None
        await self._notify(
            "tranche_lapsed",
            self._input.case_worker_id,
            self._tranche_params(sequence, tranche),
            key=f"tranche-lapsed/{sequence}",
        )

    async def _after_disbursement(self) -> JourneyStatus:
        while True:
            await self._repayment_cycle()
            if self._s.stage == Stage.WRITTEN_OFF:
                return await self._after_assistance(
                    Stage.WRITTEN_OFF, WRITTEN_OFF_KEEPS_ASSISTANCE_PATCH
                )
            if not await self._follow_ups() and not await self._reopened_while_items_run():
                break
            # A reversal reopened the loan: repaid again, its follow-ups count from then.
        await self._wait_condition(self._assistance_finished)
        return self._complete()

    async def _watch_until(self, day: date, stop: Callable[[LoanSnapshot], bool]) -> bool:
        """Wait until `day`, reading the loan after each change heard (since the last
        read, so one heard meanwhile counts) and on the day; True as soon as a read
        satisfies `stop`."""
        while True:
            if not self._news_unread() and day > self._days.today():
                with contextlib.suppress(TimeoutError):  # the day has come
                    await self._wait_condition(self._news_unread, within=self._days.until(day))
            if stop(await self._snapshot()):
                return True
            if day <= self._days.today():
                return False

    def _news_unread(self) -> bool:
        return self._loan_news != self._news_at_read

    async def _repayment_cycle(self) -> None:
        """One turn per instalment: remind before the due date, check the ledger after
        it (plus the tolerance), escalate arrears. A hardship update or a write-off ends
        the wait early and the cycle re-reads the loan."""
        assert self._input is not None and self._s.loan is not None and self._s.profile
        policy = self._input.policy
        while True:
            snap = await self._snapshot()
            if snap.status in CLOSED_LOAN_STATES:
                # The ledger's date: a loan repaid early is followed up from the day it
                # closed, not from the day the journey read it (older snapshots: today).
                self._s.closed_on = snap.closed_on or self._days.today().isoformat()
                self._s.write_off_proposal = None  # nothing left to write off
                self._set_stage(
                    Stage.REPAID if snap.status == "CLOSED_OBLIGATIONS_MET" else Stage.WRITTEN_OFF
                )
                return
            await self._escalate_arrears(snap)
            crossing = self._next_arrears_crossing(snap)  # as of this read
            if snap.next_due_date:
                due = date.fromisoformat(snap.next_due_date)
                if self._s.stage != Stage.ARREARS_REVIEW:
                    in_grace = self._days.today() < date.fromisoformat(snap.first_due_date)
                    self._set_stage(Stage.GRACE if in_grace else Stage.REPAYMENT)
                remind_on = due - timedelta(days=policy.reminder_days_before_due)
                if snap.next_due_date not in self._s.reminded_due_dates:
                    if (
                        crossing is not None
                        and crossing < remind_on
                        and workflow.patched(ARREARS_FOLLOW_THE_LEDGER_PATCH)
                    ):
                        await self._wait_or_interrupted(crossing)
                        continue  # read the arrears on their day; the reminder still waits
                    if remind_on > self._days.today() and await self._wait_or_interrupted(
                        remind_on
                    ):
                        continue
                    if due <= self._days.today() and workflow.patched(NO_LATE_REMINDER_PATCH):
                        continue  # woken after the due date: read the loan as it is now
                    # A borrower behind is told what is overdue too, not only what is next.
                    await self._notify(
                        "repayment_reminder_in_arrears"
                        if snap.overdue_minor
                        else "repayment_reminder",
                        self._input.survivor_id,
                        {"amount_minor": snap.next_due_minor, "due_date": snap.next_due_date}
                        | ({"overdue_minor": snap.overdue_minor} if snap.overdue_minor else {}),
                        key=f"reminder/{snap.next_due_date}",
                        language=self._s.profile.preferred_language,
                    )
                    self._s.reminded_due_dates.append(snap.next_due_date)
                wake = due + timedelta(days=policy.due_tolerance_days)
            else:  # every instalment has fallen due: watch the arrears until they close
                if self._s.stage in (Stage.REPAID, Stage.FOLLOW_UP):  # reopened by a reversal
                    self._set_stage(Stage.REPAYMENT)
                wake = self._days.today() + timedelta(days=policy.arrears_check_days)
            if (
                crossing is not None
                and crossing < wake
                and workflow.patched(ARREARS_FOLLOW_THE_LEDGER_PATCH)
            ):
                wake = crossing
            await self._wait_or_interrupted(wake)
            if workflow.info().is_continue_as_new_suggested():
                # Bounded history: carry the state into a fresh run, once no human
                # decision is half-way through its handler.
                await self._wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(replace(self._input, resume=self._s))

    async def _snapshot(self) -> LoanSnapshot:
        assert self._s.loan is not None
        self._news_at_read = self._loan_news
        snap = await self._call(
            JourneyActivities.loan_snapshot,
            SnapshotInput(self._s.loan.loan_id, self._days.today().isoformat()),
        )
        self._s.snapshot = snap
        held = self._s.write_off_proposal
        if self._write_offs_with_lending and (held is None or held.with_lending):
            # The ledger's proposal, whoever made or withdrew it (a proposal the journey
            # alone holds, from before the patch, stays the journey's).
            self._s.write_off_proposal = (
                WriteOffProposal(snap.write_off_reason, snap.write_off_proposed_by, True)
                if snap.write_off_proposed_by
                else None
            )
        if snap.status != self._s.loan.status:
            self._set_loan(LoanSummary(self._s.loan.loan_id, snap.status))
        self._upsert(sa.DAYS_PAST_DUE.value_set(snap.days_past_due))
        return snap

    def _next_arrears_crossing(self, snap: LoanSnapshot) -> date | None:
        """For a loan behind, the day its days past due reach the next escalation or
        delinquency bucket, if they go on growing (a pause stops them; the read then
        finds them where they were, and asks again)."""
        assert self._input is not None
        policy = self._input.policy
        marks = (
            *BUCKET_STARTS,
            policy.field_visit_days_past_due,
            policy.committee_review_days_past_due,
        )
        today, seen = self._days.today(), self._dpd_seen
        self._dpd_seen = (today, snap.days_past_due)
        if seen is not None and seen[0] < today and seen[1] == snap.days_past_due:
            return None  # not growing since the last read: paused
        ahead = [mark for mark in marks if mark > snap.days_past_due]
        if not snap.days_past_due or not ahead:
            return None
        return today + timedelta(days=min(ahead) - snap.days_past_due)

    async def _escalate_arrears(self, snap: LoanSnapshot) -> None:
        """A field visit at 30 days past due, committee review at 90: once per episode."""
        assert self._input is not None and self._s.loan is not None
        policy = self._input.policy
        thresholds = (
            (policy.field_visit_days_past_due, "field_visit"),
            (policy.committee_review_days_past_due, "arrears_committee_review"),
        )
        if snap.days_past_due == 0:
            self._s.escalations.clear()
            if self._s.stage == Stage.ARREARS_REVIEW:
                self._set_stage(Stage.REPAYMENT)
            return
        caught_up = [
            kind
            for threshold, kind in thresholds
            if kind in self._s.escalations and snap.days_past_due < threshold
        ]
        if caught_up and workflow.patched(ARREARS_FOLLOW_THE_LEDGER_PATCH):
            for kind in caught_up:  # below its threshold again: escalated again if need be
                self._s.escalations.remove(kind)
            if "arrears_committee_review" in caught_up and self._s.stage == Stage.ARREARS_REVIEW:
                self._set_stage(Stage.REPAYMENT)
        episode = (self._days.today() - timedelta(days=snap.days_past_due)).isoformat()
        for threshold, kind in thresholds:
            if snap.days_past_due >= threshold and kind not in self._s.escalations:
                self._s.escalations.append(kind)
                await self._notify(
                    kind,
                    self._input.case_worker_id,
                    {"loan_id": self._s.loan.loan_id, "days_past_due": snap.days_past_due},
                    key=f"{kind}/{episode}",
                )
                if kind == "arrears_committee_review":
                    self._set_stage(Stage.ARREARS_REVIEW)

    async def _follow_ups(self) -> bool:
        """Impact follow-ups at +6 and +12 months after final repayment; True, before
        them, if a reversal has reopened the loan (FOLLOWS_THE_LEDGER_PATCH)."""
        assert self._input is not None
        policy = self._input.policy
        closed = date.fromisoformat(self._s.closed_on)
        for months in policy.follow_up_months:
            if months in self._s.follow_ups_recorded:
                continue
            due = add_months(closed, months)
            watch = workflow.patched(FOLLOWS_THE_LEDGER_PATCH)
            if watch and await self._watch_until(due, lambda snap: not loan_closed(snap)):
                return self._reopened()
            if not watch and due > self._days.today():
                await self._sleep(self._days.until(due))
            if workflow.patched(CONSENT_BEFORE_FOLLOW_UPS_PATCH):
                profile = await self._call(
                    JourneyActivities.survivor_profile, self._input.survivor_id
                )
                if profile.consent_withdrawn:
                    workflow.logger.info("consent withdrawn: no follow-ups")
                    break
            self._set_stage(Stage.FOLLOW_UP)
            self._s.follow_up_due = months
            await self._notify(
                "follow_up_due",
                self._input.case_worker_id,
                {"survivor_id": self._input.survivor_id, "months": months},
                key=f"follow-up/{months}",
            )
            self._follow_up = None
            if watch:  # hear of a reversal while the answers are awaited, too
                if await self._reopened_while_awaiting_answers(policy.follow_up_window_days):
                    return self._reopened()
            else:
                with contextlib.suppress(TimeoutError):
                    await self._wait_condition(
                        lambda: self._follow_up is not None,
                        within=timedelta(days=policy.follow_up_window_days),
                    )
            if self._follow_up is None:
                workflow.logger.info("follow-up not recorded in time", extra={"months": months})
                self._s.follow_up_due = 0
                continue
            assert self._follow_up is not None
            loan_id = ""
            if self._s.loan is not None and workflow.patched(FOLLOW_UP_PER_LOAN_PATCH):
                loan_id = self._s.loan.loan_id
            try:
                await self._call(
                    JourneyActivities.record_follow_up,
                    FollowUpInput(
                        self._input.survivor_id,
                        months,
                        self._follow_up.household_income_minor,
                        self._follow_up.working,
                        self._follow_up.family_members_supported,
                        self._follow_up.recorded_by,
                        self._days.today().isoformat(),
                        loan_id,
                    ),
                )
            except ActivityError as error:
                # A reversal reopened the loan just before the answers came, the journey
                # not told yet: eligibility records no follow-up of an open loan (it
                # refused none before, so no history holds this branch).
                if watch and _refused_because(error, "LOAN_NOT_CLOSED"):
                    return self._reopened()
                # The survivor withdrew consent: nothing more is recorded or asked of them
                # (no history holds this refusal: it came with WithdrawConsent).
                if _refused_because(error, "CONSENT_WITHDRAWN"):
                    workflow.logger.info("consent withdrawn: no more follow-ups")
                    self._s.follow_up_due = 0
                    self._set_stage(Stage.REPAID)
                    break
                # Recorded with eligibility already, by staff or another client: the
                # journey counts it and goes on (FOLLOW_UP_RECORDED_ELSEWHERE_PATCH).
                if not _refused_because(error, "FOLLOW_UP_RECORDED") or not workflow.patched(
                    FOLLOW_UP_RECORDED_ELSEWHERE_PATCH
                ):
                    raise
                workflow.logger.info("follow-up recorded already", extra={"months": months})
            self._s.follow_ups_recorded.append(months)
            self._s.follow_up_due = 0
            self._set_stage(Stage.REPAID)
        return False

    async def _reopened_while_items_run(self) -> bool:
        """After the last follow-up, while assistance items run: True if news heard
        meanwhile turns out to have reopened the loan (REOPENED_AFTER_FOLLOW_UPS_PATCH)."""
        while not self._assistance_finished():
            await self._wait_condition(lambda: self._assistance_finished() or self._news_unread())
            if self._assistance_finished() or not workflow.patched(REOPENED_AFTER_FOLLOW_UPS_PATCH):
                return False
            if not loan_closed(await self._snapshot()):
                return self._reopened()
        return False

    async def _reopened_while_awaiting_answers(self, days: int) -> bool:
        """Wait up to `days` for the follow-up's answers; True if, meanwhile, a change
        heard turns out to have reopened the loan."""
        window_ends = self._days.today() + timedelta(days=days)
        while self._follow_up is None and self._days.today() < window_ends:
            try:
                await self._wait_condition(
                    lambda: self._follow_up is not None or self._news_unread(),
                    within=self._days.until(window_ends),
                )
            except TimeoutError:
                return False
            if self._follow_up is None and not loan_closed(await self._snapshot()):
                return True
        return False

    def _reopened(self) -> bool:
        """A reversal reopened the loan: no follow-up is due, nothing is closed."""
        self._s.follow_up_due = 0
        self._s.closed_on = ""
        return True

    def _complete(self) -> JourneyStatus:
        self._set_stage(Stage.COMPLETED)
        return self.status()

    async def _finish(self, status: JourneyStatus) -> JourneyStatus:
        """Let any decision being recorded finish before the journey closes."""
        await self._wait_condition(workflow.all_handlers_finished)
        self._flush()
        return status

    # --- human decisions ---------------------------------------------------------------

    @workflow.update
    async def record_committee_decision(self, decision: CommitteeDecision) -> JourneyStatus:
        assert self._s.loan is not None  # guaranteed by the validator
        self._deciding = True
        self._decision = decision
        attempt = 0
        if self._decision_attempts:
            self._s.committee_decisions += 1
            attempt = self._s.committee_decisions
        try:
            loan = await self._call(
                JourneyActivities.decide_loan,
                LoanDecisionInput(
                    self._s.loan.loan_id,
                    decision.approve,
                    decision.member_id,
                    decision.decision_ref,
                    decision.reason,
                    attempt,
                ),
            )
        except ActivityError as error:
            # Lending refused it (four eyes...): nothing was decided, so the loan awaits
            # another decision, and the caller hears why.
            self._deciding = False
            self._decision = None
            raise refused(error) from None
        if self._s.loan.status == "SUBMITTED":  # not since read from the ledger, and later
            self._set_loan(loan)
        self._flush()
        return self.status()

    @record_committee_decision.validator
    def validate_committee_decision(self, decision: CommitteeDecision) -> None:
        """Runs before anything is written to history: a refused update leaves no trace."""
        if (
            self._s.stage != Stage.COMMITTEE_REVIEW
            or self._s.loan is None
            or self._s.loan.status != "SUBMITTED"
        ):
            raise ValueError(f"no loan awaits a committee decision (stage is {self._s.stage})")
        if self._deciding:
            raise ValueError(
                "another committee decision is being recorded: see `mineaction journey status`"
            )
        if not decision.member_id.strip():
            raise ValueError("member_id is required")
        if not decision.decision_ref.strip():
            raise ValueError("decision_ref (the committee minute) is required")
        if not decision.approve and not decision.reason.strip():
            raise ValueError("a rejection needs a reason")

    @workflow.update
    async def request_hardship(self, hardship: Hardship) -> JourneyStatus:
        assert self._s.loan is not None
        start = self._days.today()
        sequence = 0
        if workflow.patched(HARDSHIP_SEQUENCE_PATCH):
            self._s.hardship_requests += 1
            sequence = self._s.hardship_requests
        term, grace = hardship.new_term_months, hardship.additional_grace_months
        try:
            if hardship.kind == "reschedule" and workflow.patched(RESCHEDULE_NOT_SOONER_PATCH):
                # The ledger's next instalment now, not the cycle's last read of it: a
                # payment at the cashier's desk may have moved it since.
                snap = await self._snapshot()
                try:
                    grace, term = not_sooner(start, snap.next_due_date, grace, term)
                except ValueError as error:  # nothing asked of lending: say why
                    raise ApplicationError(str(error), non_retryable=True) from None
            await self._call(
                JourneyActivities.apply_hardship,
                HardshipInput(
                    self._s.loan.loan_id,
                    hardship.kind,
                    hardship.reason,
                    hardship.requested_by,
                    start_date=start.isoformat(),
                    end_date=self._pause_ends(start, hardship.pause_days).isoformat(),
                    new_term_months=term,
                    additional_grace_months=grace,
                    effective_date=start.isoformat(),
                    sequence=sequence,
                ),
            )
        except ActivityError as error:  # nothing changed: say why, the journey goes on
            raise refused(error) from None
        self._loan_changed = True
        return self.status()

    @staticmethod
    def _pause_ends(start: date, days: int) -> date:
        """The last day of a pause of `days` days from `start` (lending counts it in the
        pause); before PAUSE_DAYS_COUNTED_PATCH the pause covered a day more."""
        if workflow.patched(PAUSE_DAYS_COUNTED_PATCH):
            return start + timedelta(days=days - 1)
        return start + timedelta(days=days)

    @request_hardship.validator
    def validate_hardship(self, hardship: Hardship) -> None:
        if self._s.stage not in (Stage.GRACE, Stage.REPAYMENT, Stage.ARREARS_REVIEW):
            raise ValueError(f"hardship applies to a loan being repaid (stage is {self._s.stage})")
        if not hardship.reason.strip() or not hardship.requested_by.strip():
            raise ValueError("hardship needs a reason and who asked for it")
        if self._s.write_off_proposal is not None:  # lending refuses it too
            raise ValueError(
                f"a write-off proposed by {self._s.write_off_proposal.proposed_by} awaits its "
                "confirmation: withdraw it before a pause or a reschedule"
            )
        if hardship.kind == "pause":
            if not 1 <= hardship.pause_days <= 365:  # lending: at most a year
                raise ValueError("a pause lasts from 1 to 365 days")
        elif hardship.kind == "reschedule":
            if (
                not 1 <= hardship.new_term_months <= 120
                or not 0 <= hardship.additional_grace_months <= 24
            ):
                raise ValueError("a reschedule needs 1-120 months of new term and 0-24 of grace")
            if hardship.additional_grace_months >= hardship.new_term_months:
                raise ValueError(
                    f"a reschedule's grace ({hardship.additional_grace_months} months) must be "
                    f"shorter than its new term ({hardship.new_term_months} months), which "
                    "includes it"
                )
        else:
            raise ValueError("kind must be pause or reschedule")

    @workflow.update
    async def record_write_off(self, decision: WriteOffDecision) -> JourneyStatus:
        assert self._s.loan is not None
        held = self._s.write_off_proposal  # (none in histories from before proposals)
        with_lending = held is not None and held.with_lending
        self._writing_off = True
        try:
            if with_lending:  # proposed with lending already: confirmed there
                loan = await self._call(
                    JourneyActivities.confirm_loan_write_off,
                    self._write_off_step(decision.confirmed_by, about=held),
                )
            else:
                loan = await self._call(
                    JourneyActivities.write_off_loan,
                    WriteOffInput(
                        self._s.loan.loan_id,
                        decision.reason,
                        decision.proposed_by,
                        decision.confirmed_by,
                        self._days.today().isoformat(),
                    ),
                )
        except ActivityError as error:  # refused: the loan is still being repaid
            if with_lending:
                self._reread_after(error)
            raise refused(error) from None
        finally:
            self._writing_off = False
        self._set_loan(loan)
        self._s.write_off_proposal = None  # confirmed
        self._loan_changed = True  # wakes the cycle, which sees the closed loan
        self._flush()
        return self.status()

    @record_write_off.validator
    def validate_write_off(self, decision: WriteOffDecision) -> None:
        self._check_loan_being_repaid()
        if not decision.reason.strip():
            raise ValueError("a write-off needs a reason")
        if not decision.proposed_by.strip() or same_person(
            decision.proposed_by, decision.confirmed_by
        ):
            raise ValueError("a write-off needs a proposer and a different confirming approver")
        held = self._s.write_off_proposal
        if held is None:
            raise ValueError(
                "no write-off is proposed: one person proposes it (propose_write_off), "
                "another confirms it"
            )
        if (held.reason, held.proposed_by) != (decision.reason, decision.proposed_by):
            raise ValueError(
                f"the write-off proposed by {held.proposed_by} ({held.reason}) is the one to "
                "confirm"
            )

    @workflow.update
    async def propose_write_off(self, proposal: WriteOffProposal) -> JourneyStatus:
        """One person proposes; a different person confirms it with record_write_off
        (its validator holds the decision to this proposal). Recorded with lending at once
        (WRITE_OFFS_WITH_LENDING_PATCH); before, held by the journey, a new proposal
        replacing it."""
        if not self._write_offs_with_lending:
            self._s.write_off_proposal = replace(proposal, with_lending=False)
            return self.status()
        try:
            await self._call(
                JourneyActivities.propose_loan_write_off,
                self._write_off_step(
                    proposal.proposed_by, proposal.reason, self._days.today().isoformat()
                ),
            )
        except ActivityError as error:  # refused (one is open already...): nothing changed
            raise refused(error) from None
        self._s.write_off_proposal = WriteOffProposal(proposal.reason, proposal.proposed_by, True)
        return self.status()

    def _write_off_step(
        self,
        person: str,
        reason: str = "",
        on: str = "",
        *,
        about: WriteOffProposal | None = None,
    ) -> WriteOffStepInput:
        """The next step on the loan's write-off with lending, a request of its own; a
        confirmation or withdrawal names the proposal it is `about`."""
        assert self._s.loan is not None
        self._s.write_off_steps += 1
        return WriteOffStepInput(
            self._s.loan.loan_id,
            self._s.write_off_steps,
            person,
            reason,
            on,
            about.proposed_by if about else "",
            about.reason if about else "",
        )

    def _reread_after(self, error: ActivityError) -> None:
        """Lending holds another proposal than the journey's copy, or none: the copy goes,
        and the journey reads the loan again (the proposal open now, if any)."""
        if _refused_because(error, "NO_WRITE_OFF_PROPOSAL", "PROPOSAL_CHANGED"):
            self._s.write_off_proposal = None
            self._heard_news()

    @propose_write_off.validator
    def validate_write_off_proposal(self, proposal: WriteOffProposal) -> None:
        self._check_loan_being_repaid()
        held = self._s.write_off_proposal
        if held is not None and held.with_lending:
            raise ValueError(
                f"a write-off is proposed already, by {held.proposed_by} ({held.reason}): "
                "confirm it, or withdraw it before proposing another"
            )
        if not proposal.reason.strip():
            raise ValueError("a write-off needs a reason")
        if not proposal.proposed_by.strip():
            raise ValueError("a write-off proposal needs its proposer")

    @workflow.update
    async def withdraw_write_off_proposal(self, withdrawal: WriteOffWithdrawal) -> JourneyStatus:
        """The proposal is withdrawn with lending, which keeps the withdrawal on record
        (WRITE_OFFS_WITH_LENDING_PATCH); a proposal the journey alone holds is dropped
        (lending had not been asked yet), the withdrawal in the journey's history."""
        held = self._s.write_off_proposal
        if held is not None and held.with_lending:
            try:
                await self._call(
                    JourneyActivities.withdraw_loan_write_off,
                    self._write_off_step(withdrawal.withdrawn_by, withdrawal.reason, about=held),
                )
            except ActivityError as error:
                self._reread_after(error)
                raise refused(error) from None
        self._s.write_off_proposal = None
        return self.status()

    @withdraw_write_off_proposal.validator
    def validate_write_off_withdrawal(self, withdrawal: WriteOffWithdrawal) -> None:
        if self._s.write_off_proposal is None:
            raise ValueError("no write-off is proposed")
        if self._writing_off:
            raise ValueError("the write-off is being confirmed: it can no longer be withdrawn")
        if not withdrawal.reason.strip() or not withdrawal.withdrawn_by.strip():
            raise ValueError("a withdrawal needs a reason and who withdraws it")

    def _check_loan_being_repaid(self) -> None:
        if (
            self._s.stage not in (Stage.REPAYMENT, Stage.ARREARS_REVIEW, Stage.GRACE)
            or self._writing_off
            or (self._s.loan is not None and self._s.loan.status in CLOSED_LOAN_STATES)
        ):
            raise ValueError(
                f"only a loan being repaid can be written off (stage is {self._s.stage})"
            )

    @workflow.update
    def record_follow_up(self, follow_up: FollowUp) -> JourneyStatus:
        self._follow_up = follow_up
        return self.status()

    @record_follow_up.validator
    def validate_follow_up(self, follow_up: FollowUp) -> None:
        if not self._s.follow_up_due:
            raise ValueError(f"no follow-up is due (stage is {self._s.stage})")
        if self._follow_up is not None:
            raise ValueError("another follow-up is being recorded: see `mineaction journey status`")
        # Refused here what eligibility would refuse when the journey records it later
        # (answers it refused failed the journey after the update had succeeded).
        problem = follow_up.problem()
        if problem is not None:
            raise ValueError(problem)

    @workflow.signal
    def loan_changed(self, change: LoanChanged) -> None:
        """Sent after money moved on the journey's loan outside it (the CLI's `repay`,
        payment collection): the repayment cycle re-reads the loan at once, so a loan
        repaid early is seen closed the same day, not at its next due date."""
        if self._s.loan is None:  # its application being submitted: kept for the committee
            self._early_news += 1
        elif change.loan_id == self._s.loan.loan_id:
            self._heard_news()

    def _heard_news(self) -> None:
        """The loan may have changed: the cycle's wait ends, and the next read counts it."""
        self._loan_changed = True
        self._loan_news += 1

    @workflow.signal
    def assistance_updated(self, state: AssistanceState) -> None:
        """Sent by the assistance child workflows as their items move."""
        self._s.assistance[state.type_id] = state

    @workflow.query
    def status(self) -> JourneyStatus:
        s = self._s
        snap = s.snapshot
        # A closed loan (repaid or written off) has nothing more falling due, even before
        # the cycle has read it again.
        closed = s.loan is not None and s.loan.status in CLOSED_LOAN_STATES
        return JourneyStatus(
            survivor_id=self._input.survivor_id if self._input else "",
            stage=s.stage,
            rule_set_version=s.assessment.rule_set_version if s.assessment else 0,
            assessment_id=s.assessment.assessment_id if s.assessment else "",
            eligible_programmes=list(s.assessment.eligible_programmes) if s.assessment else [],
            loan_id=s.loan.loan_id if s.loan else "",
            loan_status=s.loan.status if s.loan else "",
            next_due_date=snap.next_due_date if snap and not closed else "",
            next_due_minor=snap.next_due_minor if snap and not closed else 0,
            outstanding_minor=(
                snap.outstanding_minor if snap else s.loan.outstanding_minor if s.loan else 0
            ),
            days_past_due=snap.days_past_due if snap else 0,
            overdue_minor=snap.overdue_minor if snap and not closed else 0,
            assistance=list(s.assistance.values()),
            follow_ups_recorded=list(s.follow_ups_recorded),
            follow_up_due=s.follow_up_due,
            closed_on=s.closed_on,
            write_off_proposed_by=(
                s.write_off_proposal.proposed_by if s.write_off_proposal else ""
            ),
            write_off_reason=s.write_off_proposal.reason if s.write_off_proposal else "",
            waiting_for_funds_minor=self._waiting_for_funds_minor,
        )

    # --- helpers -----------------------------------------------------------------------

    def _decision_sent(self) -> bool:
        return self._decision is not None

    def _loan_decided(self) -> bool:
        return self._s.loan is not None and self._s.loan.status != "SUBMITTED"

    def _assistance_finished(self) -> bool:
        return all(a.terminal for a in self._s.assistance.values())

    async def _wait_or_interrupted(self, day: date) -> bool:
        """Sleep until `day`; True if the loan changed meanwhile (a hardship, a write-off,
        money moved outside the journey) and cut the wait short."""
        self._loan_changed = False
        if self._news_unread() and workflow.patched(CYCLE_KEEPS_NEWS_PATCH):
            return True  # news came after the last read began: read the loan again first
        try:
            await self._wait_condition(lambda: self._loan_changed, within=self._days.until(day))
        except TimeoutError:
            return False
        return True

    async def _notify(
        self,
        kind: str,
        recipient: str,
        params: dict[str, object],
        *,
        key: str = "",
        language: str = "az",
    ) -> None:
        await self._call(
            JourneyActivities.notify,
            Notification(
                f"{workflow.info().workflow_id}/{key or kind}",
                kind,
                recipient,
                language,
                dict(params),
            ),
        )

    def _set_stage(self, stage: Stage) -> None:
        self._s.stage = stage.value
        self._upsert(sa.STAGE.value_set(stage.value))

    def _set_loan(self, loan: LoanSummary) -> None:
        self._s.loan = loan
        self._upsert(sa.LOAN_STATUS.value_set(loan.status))

    def _upsert(self, *updates: SearchAttributeUpdate) -> None:  # type: ignore[type-arg]
        """Old path: one upsert per call. New path: held until the task's next await
        (_flush), so a task makes at most one upsert, and only of changed values."""
        if not self._fewer_tasks:
            workflow.upsert_search_attributes(list(updates))
            return
        for update in updates:
            self._sa_pending[update.key.name] = update

    def _sa_changes(self) -> list[SearchAttributeUpdate]:  # type: ignore[type-arg]
        """The held-back updates whose values differ from those written."""
        return [u for name, u in self._sa_pending.items() if self._sa_current.get(name) != u.value]

    def _flush(self) -> None:
        changed = self._sa_changes()
        self._sa_pending.clear()
        if changed:
            workflow.upsert_search_attributes(changed)
            self._sa_current.update((u.key.name, u.value) for u in changed)

    async def _call(
        self, activity: Callable[[JourneyActivities, Arg], Awaitable[Result]], arg: Arg
    ) -> Result:
        self._flush()
        if self._fewer_tasks and getattr(activity, "__name__", "") in LOCAL_ACTIVITIES:
            return await call_local(activity, arg)
        return await call_service(activity, arg)

    async def _wait_condition(
        self, condition: Callable[[], bool], *, within: timedelta | None = None
    ) -> None:
        self._flush()
        await workflow.wait_condition(condition, timeout=within)

    async def _sleep(self, duration: timedelta) -> None:
        self._flush()
        await workflow.sleep(duration)


@workflow.defn
class AssistanceWorkflow:
    """One assistance item: the need is recorded, the assistance requested from the
    provider, and each step of its lifecycle arrives as a validated update from the
    people delivering it. The parent journey hears of every change, including those made
    outside the item (read from the assistance service when a step is refused, on staff's
    `refresh`, and once a day while waitlisted)."""

    def __init__(self) -> None:
        self._input: AssistanceInput | None = None
        self._state: AssistanceState | None = None
        self._steps = 0
        self._busy = False
        self._published = 0  # states published so far: a read older than the last is dropped

    @workflow.run
    async def run(self, item: AssistanceInput) -> AssistanceState:
        self._input = item
        if item.resume is not None:  # continued as new while waitlisted
            self._state, self._steps = item.resume.state, item.resume.steps
        else:
            refusal = ""
            try:
                need_id = await call_service(
                    JourneyActivities.record_need,
                    NeedInput(
                        item.survivor_id,
                        item.plan.type_id,
                        item.case_worker_id,
                        item.district_code,
                        item.sex,
                        item.age_band,
                    ),
                )
            except ActivityError as error:
                # Refused (a type the assistance service does not have): the item ends
                # refused, and the journey goes on without it. The refusal failed the
                # item, and the journey waited for it for ever (ASSISTANCE_NEED_REFUSED_PATCH).
                if not workflow.patched(ASSISTANCE_NEED_REFUSED_PATCH):
                    raise
                workflow.logger.warning("need refused", extra={"cause": str(error.cause)})
                need_id, refusal = "", _refusal(error)
            if need_id:
                try:
                    requested = await call_service(
                        JourneyActivities.request_assistance,
                        RequestAssistanceInput(need_id, item.plan, item.case_worker_id),
                    )
                except ActivityError as error:
                    # Refused (bad plan data, no consent...): the need stays open for a
                    # new plan.
                    workflow.logger.warning(
                        "assistance request refused", extra={"cause": str(error.cause)}
                    )
                    requested = AssistanceState(
                        item.plan.type_id, need_id, "", "refused", True, refusal=_refusal(error)
                    )
            else:
                requested = AssistanceState(
                    item.plan.type_id, "", "", "refused", True, refusal=refusal
                )
            await self._publish(item, requested)
        if self._waitlisted() and workflow.patched(ASSISTANCE_WAITLIST_READS_PATCH):
            await self._read_while_waitlisted()
        await workflow.wait_condition(
            lambda: (
                self._state is not None
                and self._state.terminal
                and workflow.all_handlers_finished()
            )
        )
        assert self._state is not None
        return self._state

    @workflow.update
    async def advance(self, action: AssistanceAction) -> AssistanceState:
        assert self._state is not None
        self._busy = True
        self._steps += 1
        try:
            state = await call_service(
                JourneyActivities.advance_assistance,
                AdvanceInput(
                    self._state.assistance_id, action.action, action.actor, action.data, self._steps
                ),
            )
        except ActivityError as error:  # the service refused the step: tell the caller
            refusal = ApplicationError(str(error.cause or error))
            if workflow.patched(ASSISTANCE_CATCH_UP_PATCH):
                # Perhaps the item moved outside this workflow (finished through the
                # assistance API, promoted): catch up, so the journey hears and a
                # finished item ends. The caller still gets the refusal.
                await self._catch_up(quietly=True)
            raise refusal from None
        finally:
            self._busy = False
        assert self._input is not None
        await self._publish(self._input, state)
        return state

    @advance.validator
    def validate_advance(self, action: AssistanceAction) -> None:
        self._awaiting_a_step()
        if not action.action.strip() or not action.actor.strip():
            raise ValueError("action and actor are required")

    @workflow.update
    async def refresh(self, request: AssistanceRefresh) -> AssistanceState:
        """Read the item's record from the assistance service and publish it if it moved:
        staff make an item catch up with a change made outside it, without a step. No
        history from before this update can hold one, so it needs no patch."""
        workflow.logger.info("refresh asked", extra={"requested_by": request.requested_by})
        self._busy = True
        try:
            await self._catch_up(quietly=False)
        finally:
            self._busy = False
        assert self._state is not None
        return self._state

    @refresh.validator
    def validate_refresh(self, request: AssistanceRefresh) -> None:
        if not self._awaiting_a_step().assistance_id:
            raise ValueError("this assistance item was never requested from the service")
        if not request.requested_by.strip():
            raise ValueError("requested_by is required")

    @workflow.query
    def state(self) -> AssistanceState | None:
        return self._state

    def _awaiting_a_step(self) -> AssistanceState:
        """The item's state if it awaits a step; otherwise refuses, saying why and whether
        trying again later helps."""
        if self._state is None:
            raise ValueError(
                "this assistance item is still being requested from its provider; "
                "try again in a moment"
            )
        if self._state.terminal:
            raise ValueError(f"this assistance item has ended ({self._state.state})")
        if self._busy:
            raise ValueError(
                "another step on this assistance item is being recorded; try again in a moment"
            )
        return self._state

    def _waitlisted(self) -> bool:
        return (
            self._state is not None and self._state.state == WAITLISTED and not self._state.terminal
        )

    async def _catch_up(self, *, quietly: bool) -> None:
        """The item's record as the assistance service holds it now, published if it
        moved. A read that fails is logged (quietly) or fails the caller's update."""
        assert self._input is not None and self._state is not None
        if not self._state.assistance_id:
            return
        before = self._published
        try:
            now = await call_local(JourneyActivities.read_assistance, self._state.assistance_id)
        except ActivityError as error:
            if not quietly:
                raise refused(error) from None
            workflow.logger.warning(
                "assistance record not read", extra={"cause": str(error.cause or error)}
            )
            return
        if self._published == before and now != self._state:
            await self._publish(self._input, now)

    async def _read_while_waitlisted(self) -> None:
        """Once a day while the item waits, read its record: a place freed elsewhere
        promotes it at the service. Continue as new now and then, so the history of an
        item that waits for months stays small."""
        assert self._input is not None
        reads = 0
        while self._waitlisted():
            try:
                await workflow.wait_condition(
                    lambda: not self._waitlisted(), timeout=WAITLIST_READ_EVERY
                )
                return
            except TimeoutError:
                pass
            await self._catch_up(quietly=True)
            reads += 1
            if reads >= WAITLIST_READS_PER_RUN or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._waitlisted():
                    assert self._state is not None
                    workflow.continue_as_new(
                        replace(self._input, resume=AssistanceResume(self._state, self._steps))
                    )

    async def _publish(self, item: AssistanceInput, state: AssistanceState) -> None:
        self._state = state
        self._published += 1
        parent = workflow.get_external_workflow_handle(item.journey_id)
        try:
            await parent.signal(SurvivorJourneyWorkflow.assistance_updated, state)
        except ApplicationError:
            workflow.logger.info("the journey has closed; the item goes on alone")


def _refusal(error: ActivityError) -> str:
    """The reason code a service refused with (its ErrorInfo reason, else a field's), as
    the activity passes it on: what staff are shown of a refused item."""
    cause = error.cause
    if not isinstance(cause, ApplicationError):
        return ""
    # The ErrorInfo reason first, then the fields'; one that only repeats the status code
    # (an INVALID_ARGUMENT's own) says less than the field's.
    codes = [d for d in cause.details if isinstance(d, str) and d and d != cause.type]
    return codes[0] if codes else (cause.type or "")


def initial_search_attributes(
    programme_year: int, resume: JourneyState | None = None
) -> TypedSearchAttributes:
    """Attributes set when the journey starts, so it is filterable from its first second.
    A journey that picks up where `resume` says (following a loan already being repaid)
    is set as a run continued as new carries them: its stage, district and loan status,
    which it would otherwise set only when they next change."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.STAGE, resume.stage if resume else Stage.INTAKE.value),
        SearchAttributePair(sa.PROGRAMME_YEAR, programme_year),
    ]
    if resume is not None and resume.profile is not None:
        pairs.append(SearchAttributePair(sa.DISTRICT_CODE, resume.profile.district_code))
    if resume is not None and resume.loan is not None:
        pairs.append(SearchAttributePair(sa.LOAN_STATUS, resume.loan.status))
    return TypedSearchAttributes(pairs)
