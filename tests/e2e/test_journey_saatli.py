"""The programme's own case, end to end under time skipping: a fish farmer in Saatli gets
a start-up loan for 1,000 fingerlings and then feed, with 8 months of grace until the
harvest, repays monthly to the last qəpik, gets a wheelchair and an English course along
the way, and is followed up at +6 and +12 months. The farmer had been followed up after an
earlier loan too: the journey's follow-ups are recorded as this loan's."""

from __future__ import annotations

import time
import uuid
from datetime import date, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.auth import SERVICE_SUBJECT
from services.common.programme_time import programme_date
from tests.conftest import Cluster
from tests.factories import pdate, register_request, request_id, saatli_fish_farmer
from tests.journey_helpers import follow_up_due, own_pool, requested, skip_until, status_of
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    AssistanceAction,
    AssistancePlan,
    CommitteeDecision,
    FollowUp,
    JourneyInput,
    LoanRequest,
    TranchePlan,
    assistance_workflow_id,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import AssistanceWorkflow, SurvivorJourneyWorkflow
from workers.notifications.outbox import Outbox
from workers.simulation.workflows import Behaviour, BorrowerInput, BorrowerWorkflow


@pytest.mark.timeout(240)
async def test_saatli_fish_farmer_from_intake_to_follow_ups(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    outbox: Outbox,
    task_queue: str,
) -> None:
    env, client = time_skipping_env, time_skipping_env.client
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    # An earlier loan's follow-ups, recorded before follow-ups named their loan.
    for months, on in ((6, date(2024, 6, 1)), (12, date(2024, 12, 1))):
        await cluster.eligibility.RecordFollowUp(
            eligibility_pb.RecordFollowUpRequest(
                request_id=request_id(),
                follow_up=eligibility_pb.FollowUp(
                    survivor_id=survivor_id,
                    months_after=months,
                    household_income_minor=60_000,
                    working=True,
                    family_members_supported=3,
                    recorded_by="cw-07",
                    recorded_on=pdate(on),
                ),
            )
        )
    wheelchairs = await own_pool(cluster, "baku-mobility-aids", "wheelchair", capacity=1)
    english = await own_pool(cluster, "barda-vocational-centre", "english_course", 5, sessions=2)
    fund_before = (await cluster.lending.GetFund(lending_pb.GetFundRequest(fund_id="main"))).fund
    started = time.monotonic()

    async with build_worker(client, activities, task_queue):
        handle = await client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=survivor_id,
                case_worker_id="cw-07",
                loan=LoanRequest(
                    "fish_farming",
                    500_000,
                    "A restored lake: 1,000 young fish, then feed",
                    [
                        TranchePlan(300_000, "1,000 fingerlings", "IN_KIND", 0),
                        TranchePlan(200_000, "Fish feed for the season", "IN_KIND", 30),
                    ],
                ),
                assistance=[
                    AssistancePlan(
                        "wheelchair", "baku-mobility-aids", wheelchairs, 1, {"seat_width_cm": 44}
                    ),
                    AssistancePlan(
                        "english_course",
                        "barda-vocational-centre",
                        english,
                        1,
                        {"level": "a1"},
                    ),
                ],
            ),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
        )
        status = await skip_until(
            env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=timedelta(hours=1)
        )
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-03", decision_ref="CM-2026-031"),
        )
        # Between the tranches the journey shows what the ledger holds: the first one.
        status = await skip_until(
            env,
            handle,
            lambda s: s.stage == "DISBURSEMENT" and s.outstanding_minor > 0,
            step=timedelta(hours=1),
        )
        assert status.outstanding_minor == 300_000

        # The wheelchair and the course move in parallel with the loan.
        chair = client.get_workflow_handle(assistance_workflow_id(handle.id, "wheelchair"))
        course = client.get_workflow_handle(assistance_workflow_id(handle.id, "english_course"))
        for item in (chair, course):
            await requested(item)
        for item, action, data in (
            (chair, "allocate_from_stock", {}),
            (chair, "deliver", {"serial_number": "WC-2026-0042", "fitted_by": "pt-01"}),
            (chair, "follow_up", {"notes": "fits well"}),
            (course, "attend", {"sessions": 2}),
            (course, "complete", {"certificate_number": "EN-A1-0193"}),
            (course, "follow_up", {}),
        ):
            state = await item.execute_update(
                AssistanceWorkflow.advance, AssistanceAction(action, "provider-01", data)
            )
        assert state.state == "followed_up" and state.terminal

        status = await status_of(handle)
        loan_id = status.loan_id
        await client.start_workflow(
            BorrowerWorkflow.run,
            BorrowerInput(loan_id, Behaviour()),
            id=f"borrower-{loan_id}",
            task_queue=task_queue,
        )

        for months, answer in (
            (
                6,
                FollowUp(
                    household_income_minor=90_000,
                    working=True,
                    family_members_supported=4,
                    recorded_by="cw-07",
                ),
            ),
            (
                12,
                FollowUp(
                    household_income_minor=120_000,
                    working=True,
                    family_members_supported=4,
                    recorded_by="cw-07",
                ),
            ),
        ):
            await skip_until(env, handle, follow_up_due(months))
            await handle.execute_update(SurvivorJourneyWorkflow.record_follow_up, answer)
        result = await handle.result()

    assert time.monotonic() - started < 60, "the whole journey should take seconds"
    assert result.stage == "COMPLETED"
    assert result.loan_status == "CLOSED_OBLIGATIONS_MET"
    assert result.follow_ups_recorded == [6, 12]
    assert {a.type_id: a.state for a in result.assistance} == {
        "wheelchair": "followed_up",
        "english_course": "followed_up",
    }

    # The journey ran years ahead in skipped time: read the ledger as of then.
    # The session's time-skipping clock is shared: earlier tests may have run it years
    # ahead of the real date already, so "then" is the test server's own now.
    later = pdate(programme_date(await env.get_current_time()) + timedelta(days=1))
    loan = (
        await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id, as_of=later))
    ).loan
    assert loan.state == lending_pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert (
        loan.disbursed_minor,
        loan.repaid_principal_minor,
        loan.outstanding_principal_minor,
    ) == (
        500_000,
        500_000,
        0,
    )
    schedule = (
        await cluster.lending.GetRepaymentSchedule(
            lending_pb.GetRepaymentScheduleRequest(loan_id=loan_id)
        )
    ).schedule
    # 24 months, of which 8 are grace until the harvest: 16 instalments, summing exactly.
    paying = [i for i in schedule.instalments if i.principal_due_minor > 0]
    assert len(paying) == 16
    assert sum(i.principal_due_minor for i in paying) == 500_000

    fund_after = (await cluster.lending.GetFund(lending_pb.GetFundRequest(fund_id="main"))).fund
    assert fund_after.available_minor == fund_before.available_minor

    # One reminder per instalment, in Azerbaijani with the amount in manat, never twice.
    async with outbox.db.pool.acquire() as conn:
        reminders = await conn.fetch(
            """SELECT dedupe_key, language, text FROM outbox
               WHERE dedupe_key LIKE $1 ORDER BY dedupe_key""",
            f"{handle.id}/reminder/%",
        )
    assert len(reminders) == 16
    assert all(
        r["language"] == "az" and "₼" in r["text"] and "ödənişin vaxtı" in r["text"]
        for r in reminders
    )

    reach = (
        await cluster.eligibility.GetReachReport(eligibility_pb.GetReachReportRequest())
    ).report
    assert reach.followed_up_12 >= 1 and reach.working_at_12 >= 1
    db = cluster.hosts["eligibility"].db
    assert db is not None
    follow_ups = await db.pool.fetch(
        """SELECT loan_id, months_after FROM follow_ups WHERE survivor_id = $1
           ORDER BY created_at""",
        survivor_id,
    )
    assert [tuple(r) for r in follow_ups] == [("", 6), ("", 12), (loan_id, 6), (loan_id, 12)]
    # The programme paid both tranches out once the committee approved, in the worker's
    # own name: the case worker, a role that may not disburse, was named (and audited).
    lending_db = cluster.hosts["lending"].db
    assert lending_db is not None
    paid_by = await lending_db.pool.fetch(
        "SELECT DISTINCT disbursed_by FROM tranches WHERE loan_id = $1", loan_id
    )
    assert [r["disbursed_by"] for r in paid_by] == [SERVICE_SUBJECT]
