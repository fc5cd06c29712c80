"""A hardship reschedule during the loan's first grace, end to end under time skipping
with the real services: the fish farmer has 8 months of grace until the first harvest,
is hospitalised three months in, and the loan officer reschedules with 3 months of grace.
The first instalment must not come sooner than the original schedule had it."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, timedelta

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.protoconv import from_proto_date
from tests.conftest import Cluster
from tests.factories import register_request, saatli_fish_farmer
from tests.journey_helpers import skip_until, status_of
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    CommitteeDecision,
    Hardship,
    JourneyInput,
    JourneyStatus,
    LoanRequest,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes


async def first_due(cluster: Cluster, loan_id: str) -> tuple[int, date, int]:
    """The ledger's latest schedule: its revision, first instalment's due date, and how
    many instalments it has."""
    schedule = (
        await cluster.lending.GetRepaymentSchedule(
            lending_pb.GetRepaymentScheduleRequest(loan_id=loan_id)
        )
    ).schedule
    due = [i for i in schedule.instalments if i.principal_due_minor > 0]
    return schedule.revision, from_proto_date(due[0].due_date), len(due)


@pytest.mark.timeout(180)
async def test_a_hardship_reschedule_in_the_first_grace_never_brings_the_first_instalment_forward(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    env, client = time_skipping_env, time_skipping_env.client
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    async with build_worker(client, activities, task_queue):
        handle = await client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=survivor_id,
                case_worker_id="cw-41",
                loan=LoanRequest("fish_farming", 500_000, "1,000 fingerlings and feed"),
            ),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
            search_attributes=initial_search_attributes(programme_year=1),
        )
        await skip_until(
            env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=timedelta(hours=1)
        )
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-04", decision_ref="CM-2026-141"),
        )
        status = await skip_until(
            env, handle, lambda s: s.stage == "GRACE", step=timedelta(minutes=10)
        )
        loan_id = status.loan_id
        revision, before, _ = await first_due(cluster, loan_id)
        assert revision == 1
        assert status.next_due_date == before.isoformat()  # 9 months after disbursement

        # Three months into the grace, the survivor is hospitalised: 18 months from today,
        # the first 3 without instalments, as the loan officer asks for it.
        await env.sleep(timedelta(days=92))
        assert (await status_of(handle)).stage == "GRACE"
        await handle.execute_update(
            SurvivorJourneyWorkflow.request_hardship,
            Hardship(
                "reschedule",
                "hospitalised; the pond is tended by a neighbour",
                "lo-04",
                new_term_months=18,
                additional_grace_months=3,
            ),
        )

        # The ledger's new schedule: its first instalment is not before the old one, and
        # the borrower still has the 15 instalments the officer asked for.
        revision, after, instalments = await first_due(cluster, loan_id)
        assert revision == 2
        assert after >= before, f"the reschedule brought the first instalment forward: {after}"
        assert instalments == 15

        # What the journey shows once it has read the ledger again: still in grace, the
        # first instalment no sooner than before.
        status = await shows_next_due(handle, after.isoformat())
        assert status.stage == "GRACE"
        assert date.fromisoformat(status.next_due_date) >= before
        await handle.terminate("the test ends after the reschedule")


async def shows_next_due(
    handle: WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus], due: str, within: float = 15.0
) -> JourneyStatus:
    """Poll the status query (real time) until the journey shows `due` as its next
    instalment: it re-reads the ledger right after the reschedule."""
    deadline = time.monotonic() + within
    status: JourneyStatus | None = None
    while time.monotonic() < deadline:
        status = await status_of(handle)
        if status.next_due_date == due:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"the journey never showed {due} as its next instalment: {status}")
