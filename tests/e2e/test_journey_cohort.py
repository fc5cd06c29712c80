"""The programme's first phase as a cohort: 40 survivors with 160 family members, each on
a journey with a start-up loan, driven concurrently under time skipping through the real
services. Most repay on time, three repay late and recover, one is rescheduled for
hardship, one stops paying and is written off. The final portfolio, fund and reach
figures match the cohort's plan exactly.

The services' database is shared with the rest of the test session, so every figure is
asserted as a change: the reports are read before the cohort starts and again at the end
(the portfolio "as of" the same dates both times)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TypeAlias

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.type.v1 import sex_pb2
from tests.conftest import Cluster
from tests.factories import pdate, register_request, saatli_fish_farmer
from tests.journey_helpers import status_of
from workers.journey import search_attributes as sa
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    CommitteeDecision,
    FollowUp,
    Hardship,
    JourneyInput,
    JourneyStatus,
    LoanRequest,
    WriteOffDecision,
    WriteOffProposal,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow
from workers.notifications.outbox import Outbox
from workers.simulation.workflows import Behaviour, BorrowerInput, BorrowerWorkflow

COHORT = 40
HOUSEHOLD_SIZE = 5  # the survivor and four family members: 40 + 160
DISTRICTS = ("saatli", "fuzuli", "tartar", "aghdam")
PRODUCTS = ("fish_farming", "livestock", "carpet_weaving", "small_trade")
LATE = frozenset({6, 19, 29})  # livestock, fish farming, small trade
RESCHEDULED = 10  # carpet weaving
WRITTEN_OFF = 14  # small trade
NO_12_MONTH_ANSWER = frozenset({0, 1})  # their +12-month follow-up times out
STEP = timedelta(days=15)
MAX_STEPS = 120
TERMINAL = ("COMPLETED", "WRITTEN_OFF")

Bucket: TypeAlias = lending_pb.DelinquencyBucket.ValueType
JourneyHandle: TypeAlias = WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus]


@dataclass
class Member:
    index: int
    survivor_id: str
    district: str
    sex: sex_pb2.Sex.ValueType
    product: str
    amount_minor: int
    behaviour: Behaviour
    handle: JourneyHandle | None = None
    loan_id: str = ""
    stage: str = ""
    follow_up_due: int = 0
    max_days_past_due: int = 0
    rescheduled_on: str = ""
    written_off_minor: int = 0
    answered: list[int] = field(default_factory=list)

    @property
    def role(self) -> str:
        if self.index in LATE:
            return "late"
        if self.index == RESCHEDULED:
            return "rescheduled"
        if self.index == WRITTEN_OFF:
            return "written_off"
        return "on_time"

    def follow_up(self, months: int) -> FollowUp | None:
        """The answers this survivor gives at +6 and +12 months (None: never answered)."""
        if self.role == "written_off" or (months == 12 and self.index in NO_12_MONTH_ANSWER):
            return None
        return FollowUp(
            household_income_minor=60_000 + 1_000 * self.index + 10_000 * months,
            working=self.index % 3 != 0 or months == 6,
            family_members_supported=3 if months == 12 and self.index % 7 == 0 else 4,
            recorded_by="cw-11",
        )


def plan_cohort() -> list[Member]:
    members = []
    for i in range(COHORT):
        behaviour = Behaviour()
        if i in LATE:
            behaviour = Behaviour(days_late=40, late_from=2, late_until=3)
        elif i == WRITTEN_OFF:
            behaviour = Behaviour(stop_after=2)
        members.append(
            Member(
                index=i,
                survivor_id=f"srv-{uuid.uuid4().hex[:12]}",
                district=DISTRICTS[i % 4],
                sex=sex_pb2.SEX_FEMALE if (i // 2) % 2 else sex_pb2.SEX_MALE,
                product=PRODUCTS[(i // 4) % 4],
                amount_minor=100_000 + 10_000 * (i % 5),
                behaviour=behaviour,
            )
        )
    return members


@dataclass(frozen=True)
class Figures:
    """The additive part of a portfolio report's totals."""

    active_loans: int
    outstanding_minor: int
    par30_minor: int
    buckets: dict[Bucket, tuple[int, int]]

    @classmethod
    def of(cls, report: lending_pb.PortfolioReport) -> Figures:
        t = report.total
        return cls(
            t.active_loans,
            t.outstanding_principal_minor,
            t.par30_outstanding_minor,
            {b.bucket: (b.loans, b.outstanding_principal_minor) for b in t.buckets},
        )

    def __sub__(self, before: Figures) -> Figures:
        keys = set(self.buckets) | set(before.buckets)
        buckets = {}
        for key in keys:
            loans, minor = self.buckets.get(key, (0, 0))
            loans0, minor0 = before.buckets.get(key, (0, 0))
            if (loans - loans0, minor - minor0) != (0, 0):
                buckets[key] = (loans - loans0, minor - minor0)
        return Figures(
            self.active_loans - before.active_loans,
            self.outstanding_minor - before.outstanding_minor,
            self.par30_minor - before.par30_minor,
            buckets,
        )


async def portfolio(cluster: Cluster, as_of: date) -> Figures:
    response = await cluster.lending.GetPortfolioReport(
        lending_pb.GetPortfolioReportRequest(as_of=pdate(as_of), fund_id="main")
    )
    return Figures.of(response.report)


async def fund(cluster: Cluster) -> lending_pb.Fund:
    return (await cluster.lending.GetFund(lending_pb.GetFundRequest(fund_id="main"))).fund


async def reach(cluster: Cluster) -> eligibility_pb.ReachReport:
    response = await cluster.eligibility.GetReachReport(eligibility_pb.GetReachReportRequest())
    return response.report


async def env_now(env: WorkflowEnvironment) -> datetime:
    return (await env.get_current_time()).astimezone(UTC)


async def start_cohort(client: Client, members: list[Member], task_queue: str) -> None:
    for m in members:
        m.handle = await client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=m.survivor_id,
                case_worker_id="cw-11",
                loan=LoanRequest(m.product, m.amount_minor, f"Start-up: {m.product}"),
            ),
            id=journey_workflow_id(m.survivor_id),
            task_queue=task_queue,
        )


async def refresh(members: list[Member]) -> None:
    """Read every running journey's stage and days past due from its search attributes.

    The time-skipping server has no sticky task queues, so a query replays the whole
    history; describing the workflow does not, and shows what an operator filters on."""
    running = [m for m in members if m.stage not in TERMINAL and m.handle is not None]
    described = await asyncio.gather(*(m.handle.describe() for m in running if m.handle))
    for m, d in zip(running, described, strict=True):
        m.stage = d.typed_search_attributes.get(sa.STAGE) or ""
        days = d.typed_search_attributes.get(sa.DAYS_PAST_DUE) or 0
        m.max_days_past_due = max(m.max_days_past_due, days)
        if m.stage == "FOLLOW_UP" and m.handle is not None:
            m.follow_up_due = (await status_of(m.handle)).follow_up_due


@pytest.mark.timeout(300)
async def test_cohort_of_40_survivors_and_160_family_members(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    outbox: Outbox,
    task_queue: str,
) -> None:
    env, client = time_skipping_env, time_skipping_env.client
    started = time.monotonic()
    members = plan_cohort()
    lent = sum(m.amount_minor for m in members)
    fund_before, reach_before = await fund(cluster), await reach(cluster)
    assert fund_before.available_minor >= lent, "the main fund cannot lend the whole cohort"

    # Observation dates: noon on a fixed 15-day grid from tomorrow. The portfolio as of
    # each is read now, before any cohort loan exists, so a later reading as of the same
    # date minus this one is the cohort's own portfolio on that date.
    t0 = await env_now(env)
    first = datetime.combine(t0.date() + timedelta(days=1), datetime.min.time(), UTC)
    first += timedelta(hours=12)
    grid = [first + k * STEP for k in range(MAX_STEPS + 1)]
    late_date = grid[-1].date() + timedelta(days=365)
    baseline = dict(
        zip(
            [g.date() for g in grid] + [late_date],
            await asyncio.gather(
                *(portfolio(cluster, d) for d in [g.date() for g in grid] + [late_date])
            ),
            strict=True,
        )
    )

    await asyncio.gather(
        *(
            cluster.eligibility.RegisterSurvivor(
                register_request(
                    _intake(m.survivor_id, m.district, m.sex),
                )
            )
            for m in members
        )
    )
    reach_registered = await reach(cluster)
    assert reach_registered.survivors - reach_before.survivors == COHORT
    assert reach_registered.family_members - reach_before.family_members == 160

    cohort: dict[date, Figures] = {}  # the cohort's own portfolio on each grid date
    async with build_worker(client, activities, task_queue):
        await start_cohort(client, members, task_queue)

        # The committee approves every application.
        while True:
            await refresh(members)
            if all(m.stage == "COMMITTEE_REVIEW" for m in members):
                break
            assert await env_now(env) < first - timedelta(hours=6), [m.stage for m in members]
            await env.sleep(timedelta(minutes=30))
        for m in members:
            assert m.handle is not None
            approved = await m.handle.execute_update(
                SurvivorJourneyWorkflow.record_committee_decision,
                CommitteeDecision(True, "cm-03", f"CM-2026-{m.index:03d}"),
            )
            assert approved.loan_status in ("APPROVED", "ACTIVE")
            m.loan_id = approved.loan_id
        # Borrowers start paying once their loans are disbursed (before that, the lending
        # service has no schedule and a borrower's first read is refused).
        while any(m.stage in ("COMMITTEE_REVIEW", "DISBURSEMENT") for m in members):
            await asyncio.sleep(0.05)
            await refresh(members)
        for m in members:
            await client.start_workflow(
                BorrowerWorkflow.run,
                BorrowerInput(m.loan_id, m.behaviour),
                id=f"borrower-{m.loan_id}",
                task_queue=task_queue,
            )

        # Step through the months; act when a journey needs a person.
        await env.sleep(first - await env_now(env))
        for step in range(MAX_STEPS + 1):
            now = await env_now(env)  # real seconds pass too while nothing is skipped
            assert abs(now - grid[step]) < timedelta(hours=1), (now, grid[step])
            today = now.date()
            await refresh(members)
            cohort[today] = await portfolio(cluster, today) - baseline[today]
            for m in members:
                await act(cluster, m, today, cohort[today])
            if all(m.stage in TERMINAL for m in members):
                break
            await env.sleep(grid[step + 1] - await env_now(env))
        else:
            raise AssertionError([(m.index, m.stage) for m in members if m.stage not in TERMINAL])

        # Every journey has finished; collect the results one at a time.
        results = {}
        for m in members:
            assert m.handle is not None
            results[m.index] = await m.handle.result()
        paid = {}
        for m in members:
            handle = client.get_workflow_handle_for(BorrowerWorkflow.run, f"borrower-{m.loan_id}")
            paid[m.index] = await handle.result()
    elapsed = time.monotonic() - started
    print(
        f"cohort of {COHORT} journeys: {elapsed:.1f} s wall time, {step} steps of {STEP.days} days"
    )

    written_off = members[WRITTEN_OFF]
    for m in members:
        result = results[m.index]
        if m.role == "written_off":
            assert (result.stage, result.loan_status) == ("WRITTEN_OFF", "CLOSED_WRITTEN_OFF")
            assert result.follow_ups_recorded == [] and paid[m.index] == 2
            continue
        assert (result.stage, result.loan_status) == ("COMPLETED", "CLOSED_OBLIGATIONS_MET")
        expected_follow_ups = [6] if m.index in NO_12_MONTH_ANSWER else [6, 12]
        assert result.follow_ups_recorded == expected_follow_ups
        assert result.outstanding_minor == 0
        if m.role == "late":  # fell more than 30 days behind, then caught up
            assert m.max_days_past_due > 30, (m.index, m.max_days_past_due)
        else:
            assert m.max_days_past_due == 0, (m.index, m.max_days_past_due)

    # The rescheduled loan runs on its second schedule revision, from the hardship date.
    schedule = (
        await cluster.lending.GetRepaymentSchedule(
            lending_pb.GetRepaymentScheduleRequest(loan_id=members[RESCHEDULED].loan_id)
        )
    ).schedule
    assert schedule.revision == 2
    assert (
        date(
            schedule.effective_date.year, schedule.effective_date.month, schedule.effective_date.day
        ).isoformat()
        == members[RESCHEDULED].rescheduled_on
    )

    # Arrears appeared and cleared: the late borrowers were over 30 days past due on some
    # grid date, the written-off loan over 90 until its write-off, and at the end nothing.
    in_31_60 = [f for f in cohort.values() if f.buckets.get(lending_pb.DELINQUENCY_BUCKET_31_60)]
    assert in_31_60, "no late borrower was ever 31-60 days past due"
    over_90 = [f for f in cohort.values() if lending_pb.DELINQUENCY_BUCKET_OVER_90 in f.buckets]
    assert all(f.buckets[lending_pb.DELINQUENCY_BUCKET_OVER_90][0] == 1 for f in over_90)
    if over_90:
        assert over_90[-1].buckets[lending_pb.DELINQUENCY_BUCKET_OVER_90] == (
            1,
            written_off.written_off_minor,
        )
    else:  # written off on the grid day it reached 90 days past due (see act)
        assert written_off.max_days_past_due == 90
    first_day = min(cohort)
    assert cohort[first_day].active_loans == COHORT
    assert cohort[first_day].outstanding_minor == lent

    # The final portfolio: no cohort loan is active, outstanding or at risk.
    final = await portfolio(cluster, late_date) - baseline[late_date]
    assert final == Figures(0, 0, 0, {})

    # The revolving fund: everything came back but the written-off loan's outstanding.
    expected_write_off = written_off.amount_minor - sum(
        i.principal_due_minor
        for i in [
            i
            for i in (
                await cluster.lending.GetRepaymentSchedule(
                    lending_pb.GetRepaymentScheduleRequest(loan_id=written_off.loan_id)
                )
            ).schedule.instalments
            if i.principal_due_minor > 0
        ][:2]
    )
    assert written_off.written_off_minor == expected_write_off > 0
    fund_after = await fund(cluster)
    assert fund_after.disbursed_minor - fund_before.disbursed_minor == lent
    assert (
        fund_after.repaid_principal_minor - fund_before.repaid_principal_minor
        == lent - expected_write_off
    )
    assert fund_after.written_off_minor - fund_before.written_off_minor == expected_write_off
    assert fund_after.recovered_minor == fund_before.recovered_minor
    assert fund_after.outstanding_principal_minor == fund_before.outstanding_principal_minor
    assert fund_after.available_minor - fund_before.available_minor == -expected_write_off

    # The reach report: 40 survivors, 160 family members, and the follow-ups they gave.
    answers = {
        (m.index, months): a
        for m in members
        for months in (6, 12)
        if (a := m.follow_up(months)) is not None
    }
    latest = {i: a for (i, _), a in sorted(answers.items())}
    reach_after = await reach(cluster)
    assert (
        reach_after.survivors - reach_before.survivors,
        reach_after.family_members - reach_before.family_members,
        reach_after.followed_up_6 - reach_before.followed_up_6,
        reach_after.followed_up_12 - reach_before.followed_up_12,
        reach_after.working_at_12 - reach_before.working_at_12,
        reach_after.family_members_supported - reach_before.family_members_supported,
    ) == (
        40,
        160,
        39,
        37,
        sum(1 for (_, months), a in answers.items() if months == 12 and a.working),
        sum(a.family_members_supported for a in latest.values()),
    )

    # Field visits went to exactly the borrowers who fell 30 days behind; one committee
    # review, for the loan that was written off.
    async with outbox.db.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT dedupe_key, kind FROM outbox
               WHERE kind IN ('field_visit', 'arrears_committee_review')
                 AND dedupe_key LIKE ANY($1::text[])""",
            [f"{journey_workflow_id(m.survivor_id)}/%" for m in members],
        )
    by_kind: dict[str, set[int]] = {"field_visit": set(), "arrears_committee_review": set()}
    for row in rows:
        for m in members:
            if row["dedupe_key"].startswith(journey_workflow_id(m.survivor_id) + "/"):
                by_kind[row["kind"]].add(m.index)
    assert by_kind == {
        "field_visit": set(LATE) | {WRITTEN_OFF},
        "arrears_committee_review": {WRITTEN_OFF},
    }

    assert elapsed < 180, f"the cohort took {elapsed:.0f} s"


async def act(cluster: Cluster, m: Member, today: date, cohort_today: Figures) -> None:
    """What a person does for this journey today, if anything."""
    handle = m.handle
    assert handle is not None
    if m.role == "rescheduled" and m.stage == "REPAYMENT" and not m.rescheduled_on:
        status = await handle.execute_update(
            SurvivorJourneyWorkflow.request_hardship,
            Hardship(
                kind="reschedule",
                reason="The workshop flooded; looms out of use for a season",
                requested_by="lo-02",
                new_term_months=18,
                additional_grace_months=3,
            ),
        )
        assert status.stage == "REPAYMENT"
        m.rescheduled_on = today.isoformat()
    elif m.role == "written_off" and m.stage == "ARREARS_REVIEW":
        loan = (
            await cluster.lending.GetLoan(
                lending_pb.GetLoanRequest(loan_id=m.loan_id, as_of=pdate(today))
            )
        ).loan
        assert loan.days_past_due >= 90
        # The cohort's only loan over 90 days past due today is this one. On the day its
        # days past due reach 90 (review starts at 90, the bucket at 91: the grid lands on
        # that day for a cohort started on some days), it is still in the 61-90 bucket.
        over_90 = cohort_today.buckets.get(lending_pb.DELINQUENCY_BUCKET_OVER_90)
        if loan.days_past_due > 90:
            assert over_90 == (1, loan.outstanding_principal_minor)
        else:
            assert over_90 is None
            assert loan.bucket == lending_pb.DELINQUENCY_BUCKET_61_90
            count, outstanding = cohort_today.buckets[lending_pb.DELINQUENCY_BUCKET_61_90]
            assert count >= 1 and outstanding >= loan.outstanding_principal_minor
        reason = "No payment for over 90 days; the business has closed"
        await handle.execute_update(
            SurvivorJourneyWorkflow.propose_write_off, WriteOffProposal(reason, "lo-02")
        )
        status = await handle.execute_update(
            SurvivorJourneyWorkflow.record_write_off, WriteOffDecision(reason, "lo-02", "pm-01")
        )
        assert status.loan_status == "CLOSED_WRITTEN_OFF"
        m.written_off_minor = loan.outstanding_principal_minor
    elif m.stage == "FOLLOW_UP":
        months = m.follow_up_due
        answer = m.follow_up(months) if months else None
        if answer is not None and months not in m.answered:
            await handle.execute_update(SurvivorJourneyWorkflow.record_follow_up, answer)
            m.answered.append(months)


def _intake(
    survivor_id: str, district: str, sex: sex_pb2.Sex.ValueType
) -> eligibility_pb.SurvivorIntake:
    intake = saatli_fish_farmer(survivor_id)
    intake.district_code = district
    intake.sex = sex
    intake.household_size = HOUSEHOLD_SIZE
    return intake
