"""The walking skeleton on the real Temporal dev server: a survivor is registered and
assessed, a journey starts and reaches all three services through activities, an
operator finds it by its search attributes and records the committee's decision."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from tests.conftest import Cluster
from tests.factories import register_request, saatli_fish_farmer
from tests.journey_helpers import wait_for_stage
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    AssistancePlan,
    CommitteeDecision,
    JourneyInput,
    LoanRequest,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes


async def visible(client: Client, query: str) -> list[str]:
    """Workflow ids matching a visibility query, waiting out eventual consistency."""
    for _ in range(100):
        ids = [w.id async for w in client.list_workflows(query)]
        if ids:
            return ids
        await asyncio.sleep(0.1)
    return []


@pytest.mark.timeout(120)
async def test_survivor_journey_through_every_part(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))

    async with build_worker(dev_client, activities, task_queue):
        handle = await dev_client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=survivor_id,
                case_worker_id="cw-01",
                loan=LoanRequest("fish_farming", 500_000, "1,000 fingerlings and feed"),
                assistance=[
                    AssistancePlan(
                        "wheelchair",
                        provider_id="baku-mobility-aids",
                        capacity_pool_id="stock-wheelchairs-baku",
                        data={"seat_width_cm": 44},
                    )
                ],
            ),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
            search_attributes=initial_search_attributes(programme_year=1),
        )
        status = await wait_for_stage(handle, "COMMITTEE_REVIEW")
        assert status.rule_set_version >= 1
        assert "startup_loan" in status.eligible_programmes
        assert status.loan_status == "SUBMITTED"

        # The operator's view: filterable by stage and district, no personal data.
        found = await visible(
            dev_client,
            f'WorkflowId = "{handle.id}" AND Stage = "COMMITTEE_REVIEW" '
            'AND DistrictCode = "saatli" AND LoanStatus = "SUBMITTED"',
        )
        assert found == [handle.id]

        # A decision without a committee minute is refused before it touches history.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_committee_decision,
                CommitteeDecision(approve=True, member_id="cm-02", decision_ref=""),
            )
        decided = await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-02", decision_ref="CM-2026-014"),
        )
        assert decided.loan_status == "APPROVED"
        status = await wait_for_stage(handle, "GRACE")
        assert status.loan_status == "ACTIVE"
        assert status.next_due_date
        await handle.terminate("the walking skeleton ends at the first disbursement")

    loan = (await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))).loan
    assert loan.state == lending_pb.LOAN_STATE_ACTIVE
    assert loan.survivor_id == survivor_id
    assert loan.district_code == "saatli"
    assert loan.approved_by == "cm-02"
    assert loan.submitted_by == "cw-01"
    assert loan.disbursed_minor == 500_000
