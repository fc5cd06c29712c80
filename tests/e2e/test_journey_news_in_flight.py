"""Loan news that reaches a journey while its repayment cycle is in an activity (reading
the loan, sending a reminder) is kept: the cycle reads the loan again before it waits.
Journeys started before `journey-fewer-tasks` run those steps as ordinary activities, so
the relay's signal (`loan_changed`) can come between the read and its result; the cycle
used to clear it and sleep to the next reminder with the read from before the payment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.conftest import Cluster
from tests.e2e.pre_fewer_tasks import PreFewerTasksJourneyWorkflow
from tests.e2e.test_journey_ledger import SOON, STEP, approved_journey, pay
from tests.journey_helpers import skip_until, status_of
from workers.journey.activities import JourneyActivities
from workers.journey.model import LoanChanged, LoanRequest, LoanSnapshot, SnapshotInput
from workers.journey.worker import workflow_runner
from workers.journey.workflows import AssistanceWorkflow, SurvivorJourneyWorkflow


class HeldRead:
    """Holds the next `loan_snapshot` after it has read the ledger, until released."""

    def __init__(self) -> None:
        self.armed = False
        self.read = asyncio.Event()
        self.release = asyncio.Event()


def held_snapshot(
    acts: JourneyActivities, held: HeldRead
) -> Callable[[SnapshotInput], Awaitable[LoanSnapshot]]:
    @activity.defn(name="loan_snapshot")
    async def loan_snapshot(params: SnapshotInput) -> LoanSnapshot:
        snap = await acts.loan_snapshot(params)
        if held.armed:
            held.armed = False
            held.read.set()
            await held.release.wait()
        return snap

    return loan_snapshot


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "journey_workflow",
    [SurvivorJourneyWorkflow, PreFewerTasksJourneyWorkflow],
    ids=["current", "started_before_fewer_tasks"],
)
async def test_news_heard_while_the_cycle_reads_the_loan_is_not_lost(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    journey_workflow: type,
) -> None:
    """A kiosk loan in grace: news of a part payment makes the cycle read the loan; the
    rest is paid at the cashier's desk just after that read, and the relay tells the
    journey before the read's result is in. The journey must be REPAID within minutes,
    not GRACE until its first reminder (which would ask a survivor who owes nothing to
    pay an instalment)."""
    env = time_skipping_env
    held = HeldRead()
    acts = [a for a in activities.all() if getattr(a, "__name__", "") != "loan_snapshot"]
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[journey_workflow, AssistanceWorkflow],
        activities=[*acts, held_snapshot(activities, held)],
        workflow_runner=workflow_runner(),
    ):
        handle = await approved_journey(
            cluster, env, task_queue, LoanRequest("small_trade", 120_000, "a kiosk"), "GRACE"
        )
        loan_id = (await status_of(handle)).loan_id

        await pay(cluster, env, loan_id, 20_000)
        held.armed = True
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        await asyncio.wait_for(held.read.wait(), 30)  # the cycle has read 1,000 AZN owed
        await pay(cluster, env, loan_id, 100_000)  # the rest, just after that read
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        held.release.set()

        repaid = await skip_until(env, handle, lambda s: s.stage == "REPAID", step=STEP, limit=SOON)
        assert (repaid.loan_status, repaid.outstanding_minor) == ("CLOSED_OBLIGATIONS_MET", 0)
        await handle.terminate("the test is over")
