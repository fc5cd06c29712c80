"""A repaid loan reopened by a reversal after the journey's last follow-up, while the
journey still follows an assistance item: the journey, told, goes back to its repayment
cycle, as it does when the reversal comes before or during a follow-up. It used to stay
REPAID (and complete as such once the item ended) while the ledger said ACTIVE."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Cluster
from tests.e2e.test_journey_ledger import SOON, STEP, pay
from tests.factories import register_request, saatli_fish_farmer
from tests.journey_helpers import follow_up_due, own_pool, skip_until
from tests.lending_helpers import reversal
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    AssistancePlan,
    CommitteeDecision,
    FollowUp,
    JourneyInput,
    LoanChanged,
    LoanRequest,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes


@pytest.mark.timeout(240)
async def test_a_reversal_after_the_last_follow_up_reopens_a_journey_still_running(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    env = time_skipping_env
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    wheelchair = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    async with build_worker(env.client, activities, task_queue):
        handle = await env.client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=survivor_id,
                case_worker_id="cw-51",
                loan=LoanRequest("small_trade", 120_000, "a kiosk"),
                assistance=[wheelchair],  # requested, never delivered: the journey runs on
            ),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
            search_attributes=initial_search_attributes(programme_year=1),
        )
        await skip_until(env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=STEP)
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-05", decision_ref="CM-2026-152"),
        )
        status = await skip_until(env, handle, lambda s: s.stage == "GRACE", step=STEP)
        loan_id = status.loan_id
        paid = await pay(cluster, env, loan_id, 120_000)
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        for months in (6, 12):
            await skip_until(env, handle, follow_up_due(months), step=timedelta(days=10))
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_follow_up, FollowUp(90_000, True, 3, "cw-51")
            )
        done = await skip_until(
            env, handle, lambda s: s.follow_ups_recorded == [6, 12], step=STEP, limit=SOON
        )
        assert done.stage == "REPAID", done
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

        # The closing payment is reversed, over a year later; the relay tells the journey.
        await cluster.lending.ReverseRepayment(reversal(loan_id, paid))
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        reopened = await skip_until(
            env, handle, lambda s: s.stage != "REPAID", step=STEP, limit=timedelta(days=2)
        )
        assert reopened.stage in ("REPAYMENT", "ARREARS_REVIEW"), reopened
        assert (reopened.loan_status, reopened.closed_on) == ("ACTIVE", "")
        await handle.terminate("the test is over")
