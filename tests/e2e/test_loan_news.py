"""The loan news relay on the real Temporal dev server with the real services: money
moved on a journey's loan by a plain API call (no CLI, no signal sent by hand) reaches
the journey within seconds, through the lending service's change feed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.programme_time import programme_today
from tests.conftest import Cluster
from tests.factories import request_id
from tests.journey_helpers import approved_journey, start_journey, status_of, wait_for_stage
from tests.lending_helpers import disburse, feed_end, repayment, reversal
from workers.journey.activities import JourneyActivities
from workers.journey.loan_news import LoanNewsWorkflow
from workers.journey.model import JourneyStatus, LoanChanged, LoanRequest, TranchePlan
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow


async def own_relay(
    cluster: Cluster, client: Client, task_queue: str
) -> WorkflowHandle[LoanNewsWorkflow, None]:
    """A relay of the test's own, from the feed's present end."""
    return await client.start_workflow(
        LoanNewsWorkflow.run,
        await feed_end(cluster),
        id=f"loan-news-{task_queue}",
        task_queue=task_queue,
    )


@pytest.mark.timeout(120)
async def test_a_repayment_made_through_the_api_reaches_the_journey(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)
        relay = await own_relay(cluster, dev_client, task_queue)
        try:
            # In grace, months before the first instalment: without news the journey
            # would not read the loan before then.
            status = await status_of(handle)
            assert status.stage == "GRACE"
            loan = (await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))).loan
            today = programme_today()
            paid = await cluster.lending.RecordRepayment(
                repayment(loan_id, loan.outstanding_principal_minor, today)
            )
            status = await wait_for_stage(handle, "REPAID")
            assert status.loan_status == "CLOSED_OBLIGATIONS_MET"
            assert status.closed_on == today.isoformat()

            # A reversal reopens it: back to the repayment cycle, told the same way.
            await cluster.lending.ReverseRepayment(reversal(loan_id, paid.repayment.transaction_id))
            status = await wait_for_stage(handle, "GRACE", "REPAYMENT")
            assert status.loan_status == "ACTIVE"
            assert status.closed_on == ""
        finally:
            await relay.terminate("the test is over")
            await handle.terminate("the test is over")


@pytest.mark.timeout(120)
async def test_a_committee_decision_recorded_with_lending_reaches_the_journey(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """The committee's decision recorded straight with lending (ApproveLoan, RejectLoan
    through the API), or the application withdrawn (WithdrawLoan), not sent to the
    journey: the journey, told through the feed, goes on as the ledger says. It stayed in
    COMMITTEE_REVIEW for good."""
    async with build_worker(dev_client, activities, task_queue):
        relay = await own_relay(cluster, dev_client, task_queue)
        approved = await start_journey(cluster, dev_client, task_queue)
        rejected = await start_journey(cluster, dev_client, task_queue)
        withdrawn = await start_journey(cluster, dev_client, task_queue)
        journeys = (approved, rejected, withdrawn)
        try:
            for handle in journeys:
                await wait_for_stage(handle, "COMMITTEE_REVIEW")
            approve, reject, withdraw = [(await status_of(h)).loan_id for h in journeys]
            await cluster.lending.ApproveLoan(
                lending_pb.ApproveLoanRequest(
                    request_id=request_id(), loan_id=approve, approved_by="cm-02",
                    committee_decision_ref="CM-2026-140",
                )
            )  # fmt: skip
            await cluster.lending.RejectLoan(
                lending_pb.RejectLoanRequest(
                    request_id=request_id(), loan_id=reject, rejected_by="cm-02",
                    reason="the business plan does not cover the feed",
                )
            )  # fmt: skip
            await cluster.lending.WithdrawLoan(
                lending_pb.WithdrawLoanRequest(
                    request_id=request_id(), loan_id=withdraw, withdrawn_by="cw-01",
                    reason="the survivor found work in the district hospital",
                )
            )  # fmt: skip
            status = await wait_for_stage(approved, "GRACE")  # disbursed by the journey
            assert status.loan_status == "ACTIVE" and status.outstanding_minor == 500_000
            status = await wait_for_stage(rejected, "CLOSED_REJECTED")
            assert status.loan_status == "REJECTED"
            # Not counted with the committee's rejections.
            status = await wait_for_stage(withdrawn, "CLOSED_WITHDRAWN")
            assert status.loan_status == "WITHDRAWN"
        finally:
            await relay.terminate("the test is over")
            for handle in journeys:
                with contextlib.suppress(RPCError):
                    await handle.terminate("the test is over")


async def paid_out_behind_its_back(
    cluster: Cluster, journey: WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus], amount: int
) -> str:
    """The journey's loan approved and `amount` disbursed through the API, the journey only
    told afterwards (as `journey refresh` does): its loan id."""
    await wait_for_stage(journey, "COMMITTEE_REVIEW")
    loan_id = (await status_of(journey)).loan_id
    await cluster.lending.ApproveLoan(
        lending_pb.ApproveLoanRequest(
            request_id=request_id(), loan_id=loan_id, approved_by="cm-02",
            committee_decision_ref="CM-2026-170",
        )
    )  # fmt: skip
    await disburse(cluster.lending, loan_id, amount, programme_today())
    await journey.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    return loan_id


@pytest.mark.timeout(120)
async def test_a_loan_approved_and_disbursed_outside_the_journey_is_followed_not_refused(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """Approved and disbursed through the API before the journey reads the loan (no relay
    running): told, it reads ACTIVE and follows the repayments, without disbursing again
    (it took ACTIVE for a rejection)."""
    async with build_worker(dev_client, activities, task_queue):
        journey = await start_journey(cluster, dev_client, task_queue)
        try:
            loan_id = await paid_out_behind_its_back(cluster, journey, 500_000)
            status = await wait_for_stage(journey, "GRACE")
            assert status.loan_status == "ACTIVE" and status.outstanding_minor == 500_000
            read = await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))
            assert [t.amount_minor for t in read.loan.tranches] == [500_000]
        finally:
            await journey.terminate("the test is over")


@pytest.mark.timeout(120)
async def test_a_plan_part_disbursed_outside_the_journey_goes_on_from_the_ledger(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """The fish money paid out through the API before the journey read the approval:
    the journey does not pay it again, and waits for the feed tranche of its plan."""
    plan = LoanRequest(
        "fish_farming", 300_000, "fingerlings, then feed",
        tranches=[
            TranchePlan(200_000, "1,000 fingerlings", "IN_KIND", 0),
            TranchePlan(100_000, "feed", "IN_KIND", 30),
        ],
    )  # fmt: skip
    async with build_worker(dev_client, activities, task_queue):
        journey = await start_journey(cluster, dev_client, task_queue, plan)
        try:
            loan_id = await paid_out_behind_its_back(cluster, journey, 200_000)
            status = await wait_for_stage(journey, "DISBURSEMENT")  # the feed, in 30 days
            assert status.loan_status == "ACTIVE"
            await asyncio.sleep(2)  # a second payment of the fish money would fail it by now
            assert (await journey.describe()).status == WorkflowExecutionStatus.RUNNING
            read = await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))
            assert [t.amount_minor for t in read.loan.tranches] == [200_000]
        finally:
            await journey.terminate("the test is over")


async def test_a_retried_relay_turn_goes_on_from_its_last_heartbeat(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities
) -> None:
    """A turn retried after its worker died starts from the cursor its last heartbeat
    carried, not from the one it was first given (the feed's start): nothing is read
    twice, and the turn hands on the cursor it reached."""
    end = await feed_end(cluster)
    env = ActivityEnvironment(client=dev_client)
    env.info = dataclasses.replace(env.info, heartbeat_details=[end])
    beats: list[str] = []
    env.on_heartbeat = lambda *details: beats.append(str(details[0]))
    saved = activities.news_turn_seconds, activities.news_wait_seconds
    activities.news_turn_seconds, activities.news_wait_seconds = 0.5, 0
    try:
        reached = await env.run(activities.relay_loan_news, "")
    finally:
        activities.news_turn_seconds, activities.news_wait_seconds = saved
    assert reached == end
    assert beats and set(beats) == {end}
