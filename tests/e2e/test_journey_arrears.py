"""A journey follows its loan's arrears as the ledger has them, under time skipping with
the real services: its days past due (the operators' DaysPastDue) never lag the ledger
past a delinquency bucket or an escalation, a borrower who catches up below the
committee's threshold leaves ARREARS_REVIEW, and falling behind again is escalated
again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

import pytest
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.programme_time import programme_date
from tests.conftest import Cluster
from tests.e2e.test_journey_ledger import approved_journey, pay
from tests.factories import pdate
from tests.journey_helpers import approved_journey as approved_journey_in_grace
from tests.journey_helpers import skip_until, status_of, wait_until
from workers.journey import search_attributes as sa
from workers.journey import workflows as journey_workflows
from workers.journey.activities import JourneyActivities
from workers.journey.model import JourneyStatus, LoanChanged, LoanRequest
from workers.journey.worker import WORKFLOWS, build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow

DAY = timedelta(days=1)


@pytest.mark.timeout(300)
async def test_arrears_are_followed_bucket_by_bucket_and_escalated_again_after_a_catch_up(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    env = time_skipping_env
    async with build_worker(env.client, activities, task_queue):
        handle = await approved_journey(
            cluster, env, task_queue, LoanRequest("small_trade", 120_000, "a kiosk"), "GRACE"
        )
        loan_id = (await status_of(handle)).loan_id

        async def ledger_days_past_due() -> int:
            today = programme_date(await env.get_current_time())
            loan = await cluster.lending.GetLoan(
                lending_pb.GetLoanRequest(loan_id=loan_id, as_of=pdate(today))
            )
            return loan.loan.days_past_due

        def read(owed: int) -> Callable[[JourneyStatus], bool]:
            return lambda s: s.days_past_due == owed

        # Nothing paid: every day the ledger's figure crosses into a bucket (31, 61, 91)
        # or reaches an escalation (30, 90), the journey has it, in its status and its
        # search attribute. It used to read the loan a month apart (3, 33, 63...).
        crossed: set[int] = set()
        while len(crossed) < 5:
            await env.sleep(DAY)
            owed = await ledger_days_past_due()
            if owed in (30, 31, 61, 90, 91):
                crossed.add(owed)
                # The day's read is done within moments of the day's start (real time).
                status = await wait_until(handle, read(owed), f"read {owed}", within=5)
                attributes = (await handle.describe()).typed_search_attributes
                assert attributes.get(sa.DAYS_PAST_DUE) == owed
        assert status.stage == "ARREARS_REVIEW"

        # Caught up but for the latest instalment: below both thresholds, out of review.
        schedule = await cluster.lending.GetRepaymentSchedule(
            lending_pb.GetRepaymentScheduleRequest(
                loan_id=loan_id, as_of=pdate(programme_date(await env.get_current_time()))
            )
        )
        overdue = [
            i.principal_due_minor - i.principal_paid_minor
            for i in schedule.schedule.instalments
            if i.state == lending_pb.INSTALMENT_STATE_OVERDUE
        ]
        await pay(cluster, env, loan_id, sum(overdue[:-1]))
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        status = await skip_until(
            env, handle, lambda s: s.stage != "ARREARS_REVIEW", step=timedelta(hours=1),
            limit=DAY,
        )  # fmt: skip
        assert status.stage == "REPAYMENT" and 0 < status.days_past_due < 30, status

        # Behind again past 30 days: a second field visit, for this new episode.
        await skip_until(
            env, handle, lambda s: s.days_past_due >= 30, step=DAY, limit=timedelta(days=40)
        )
        visits = await activities.outbox.db.pool.fetch(
            "SELECT dedupe_key FROM outbox WHERE kind = 'field_visit' AND dedupe_key LIKE $1",
            f"{handle.id}/%",
        )
        assert len(visits) == 2, visits
        await handle.terminate("the test is over")


class _LateClock:
    """The workflow module as the journey sees it, its clock `late` behind the server's
    timers: a worker that was down, its timers firing when it comes back."""

    late = timedelta(0)

    def __getattr__(self, name: str) -> object:
        return getattr(workflow, name)

    def now(self) -> datetime:
        return workflow.now() + self.late


@pytest.mark.timeout(120)
async def test_a_reminder_whose_day_passed_while_the_worker_was_down_is_not_sent(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reminder's timer fires 15 days late, after the instalment fell due: the
    borrower was told "your next repayment is due on <a date already past>"."""
    env, clock = time_skipping_env, _LateClock()
    monkeypatch.setattr(journey_workflows, "workflow", clock)
    worker = Worker(
        env.client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=activities.all(),
        workflow_runner=UnsandboxedWorkflowRunner(),  # so that the late clock is the one read
    )
    async with worker:
        handle, _ = await approved_journey_in_grace(cluster, env.client, task_queue)
        due = date.fromisoformat((await status_of(handle)).next_due_date)
        today = programme_date(await env.get_current_time())
        await env.sleep(timedelta(days=(due - today).days - 5))
        clock.late = timedelta(days=15)  # down from here until after the due date
        await env.sleep(timedelta(days=3))  # the reminder's timer fires, late
        status = await wait_until(
            handle, lambda s: s.days_past_due > 0, "read the loan after the due date", within=5
        )
        assert status.next_due_date > due.isoformat(), status
        reminders = await activities.outbox.db.pool.fetch(
            "SELECT dedupe_key FROM outbox WHERE kind LIKE 'repayment_reminder%' "
            "AND dedupe_key LIKE $1",
            f"{handle.id}/%",
        )
        assert f"{handle.id}/reminder/{due.isoformat()}" not in {
            r["dedupe_key"] for r in reminders
        }, reminders
        await handle.terminate("the test is over")
