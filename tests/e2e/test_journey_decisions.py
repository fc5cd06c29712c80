"""People's decisions that the lending service refuses, or that come twice the same day,
on the real Temporal dev server with the real services: a refused decision leaves the
journey ready for a correct one and says why; a second hardship request the same day is
a request of its own; a write-off's four eyes ignore case as lending does, and its
proposal is the one lending holds; a closed loan has no next instalment."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.programme_time import programme_today
from tests.conftest import Cluster
from tests.factories import pdate, request_id
from tests.journey_helpers import (
    CASE_WORKER,
    approved_journey,
    start_journey,
    status_of,
    wait_for_stage,
    wait_until,
)
from tests.lending_helpers import active_loan, lending_db, open_fund, propose_write_off
from workers.journey.activities import JourneyActivities, step_request_id
from workers.journey.model import (
    CommitteeDecision,
    Hardship,
    LoanChanged,
    SnapshotInput,
    WriteOffDecision,
    WriteOffInput,
    WriteOffProposal,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow


def refusal(error: WorkflowUpdateFailedError) -> ApplicationError:
    """The update's own failure: the service's answer, not "Activity task failed"."""
    assert isinstance(error.cause, ApplicationError), repr(error.cause)
    return error.cause


@pytest.mark.timeout(120)
async def test_a_decision_lending_refuses_leaves_the_journey_ready_for_a_correct_one(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    async with build_worker(dev_client, activities, task_queue):
        handle = await start_journey(cluster, dev_client, task_queue)
        await wait_for_stage(handle, "COMMITTEE_REVIEW")

        # The case worker who submitted the application cannot approve it (four eyes,
        # enforced by lending, case-insensitively): the update fails with lending's reason.
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_committee_decision,
                CommitteeDecision(approve=True, member_id="CW-31", decision_ref="CM-2026-101"),
            )
        failure = refusal(raised.value)
        assert failure.type == "PERMISSION_DENIED"
        assert failure.details == ("FOUR_EYES",)
        assert "four eyes" in failure.message

        status = await status_of(handle)
        assert (status.stage, status.loan_status) == ("COMMITTEE_REVIEW", "SUBMITTED")

        # A correct decision follows: another member, another payload, its own request.
        decided = await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-02", decision_ref="CM-2026-101"),
        )
        assert decided.loan_status == "APPROVED"
        # Once decided, no second decision.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_committee_decision,
                CommitteeDecision(approve=False, member_id="cm-03", decision_ref="x", reason="y"),
            )
        status = await wait_for_stage(handle, "GRACE")
        assert status.loan_status == "ACTIVE"
        await handle.terminate("the test ends at the first disbursement")

    loan = (await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))).loan
    assert loan.approved_by == "cm-02"
    assert loan.submitted_by == CASE_WORKER


@pytest.mark.timeout(120)
async def test_two_hardship_requests_the_same_day_are_two_requests(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)

        # Two pauses and two reschedules the same day, each with its own figures: four
        # requests, none mistaken for a reuse of another's request id.
        for hardship in (
            Hardship("pause", "flooded pond", "lo-01", pause_days=30),
            Hardship("pause", "flooded pond, longer", "lo-01", pause_days=60),
            Hardship("reschedule", "harvest lost", "lo-01", new_term_months=18),
            Hardship(
                "reschedule", "harvest lost", "lo-01", new_term_months=24, additional_grace_months=3
            ),
        ):
            await handle.execute_update(SurvivorJourneyWorkflow.request_hardship, hardship)
        schedule = (
            await cluster.lending.GetRepaymentSchedule(
                lending_pb.GetRepaymentScheduleRequest(loan_id=loan_id)
            )
        ).schedule
        assert schedule.revision == 3  # the first schedule and both reschedules

        # A refused hardship request says why, and the journey goes on; one that cannot be
        # right is refused before it is accepted (it was asked of lending, and the history
        # kept the failed request).
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.request_hardship,
                Hardship("reschedule", "harvest lost", "lo-01", 6, 12, 12),
            )
        assert "grace (12 months) must be shorter than its new term (12 months)" in (
            refusal(raised.value).message
        )
        history = await handle.fetch_history()
        accepted = [
            e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
            for e in history.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        assert accepted.count("request_hardship") == 4  # the four above, not this one

        status = await status_of(handle)
        assert status.stage == "GRACE"
        await handle.terminate("the test ends after the hardship requests")


@pytest.mark.timeout(120)
async def test_a_write_off_needs_two_people_whatever_the_case_and_closes_the_schedule(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)

        # Nothing proposed: no write-off, whatever names the decision carries.
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_write_off,
                WriteOffDecision("the business has closed", "lo-01", "pm-01"),
            )
        assert "no write-off is proposed" in refusal(raised.value).message
        await handle.execute_update(
            SurvivorJourneyWorkflow.propose_write_off,
            WriteOffProposal("the business has closed", "lo-01"),
        )
        # The same person spelled in another case is still one person: the journey refuses
        # it before anything reaches lending, as lending would.
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_write_off,
                WriteOffDecision("the business has closed", "lo-01", " LO-01"),
            )
        assert "different confirming approver" in refusal(raised.value).message

        written_off = await handle.execute_update(
            SurvivorJourneyWorkflow.record_write_off,
            WriteOffDecision("the business has closed", "lo-01", "pm-01"),
        )
        assert written_off.loan_status == "CLOSED_WRITTEN_OFF"
        assert (written_off.next_due_date, written_off.next_due_minor) == ("", 0)
        final = await handle.result()
        assert final.stage == "WRITTEN_OFF"
        assert (final.next_due_date, final.next_due_minor) == ("", 0)

    # The ledger read itself shows nothing falling due on a closed loan.
    snapshot = await ActivityEnvironment().run(
        activities.loan_snapshot,
        SnapshotInput(loan_id, programme_today().isoformat()),
    )
    assert snapshot.status == "CLOSED_WRITTEN_OFF"
    assert (snapshot.next_due_date, snapshot.next_due_minor, snapshot.overdue_minor) == ("", 0, 0)


def decision_environment(
    loan_id: str, scheduled: datetime, retried_after: timedelta | None = None
) -> ActivityEnvironment:
    """The write-off activity of one decision (first scheduled at `scheduled`) in the
    journey of `loan_id`: its first attempt, or a second one `retried_after` later."""
    env = ActivityEnvironment()
    env.info = replace(
        env.info,
        workflow_id=f"journey-{loan_id}",
        scheduled_time=scheduled,
        current_attempt_scheduled_time=scheduled + (retried_after or timedelta()),
        attempt=1 if retried_after is None else 2,
    )
    return env


def write_off_decision(
    loan_id: str, confirmed_by: str, reason: str = "the business has closed"
) -> WriteOffInput:
    today = programme_today().isoformat()
    return WriteOffInput(loan_id, reason, "lo-01", confirmed_by, today)


async def withdraw(cluster: Cluster, loan_id: str) -> lending_pb.LoanWriteOffProposal:
    response = await cluster.lending.WithdrawLoanWriteOff(
        lending_pb.WithdrawLoanWriteOffRequest(
            request_id=request_id(),
            loan_id=loan_id,
            reason="proposed while the borrower was in hospital",
            withdrawn_by="pm-02",
        )
    )
    return response.withdrawn


async def written_off_transactions(cluster: Cluster, loan_id: str) -> int:
    async with lending_db(cluster).pool.acquire() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE loan_id = $1 AND kind = 'WRITE_OFF'",
            loan_id,
        )
    return int(count)


async def test_a_write_off_decided_again_after_a_refused_confirmation(
    cluster: Cluster, activities: JourneyActivities
) -> None:
    """The journey's write-off activity, on the real lending service: after a refused
    confirmation, the next decision confirms the same open proposal; if that proposal was
    withdrawn through lending's API meanwhile, it proposes afresh, with the same reason or
    another, once, whatever the retries."""
    fund_id = await open_fund(cluster, 3_000_000)
    now = datetime.now(UTC)
    later = now + timedelta(minutes=5)  # the people's next decision
    other_reason = "the borrower has left the district"
    for withdrawn, reason in ((False, None), (True, None), (True, other_reason)):
        loan = await active_loan(cluster, fund_id=fund_id)
        # Lending accepts the proposal and refuses the confirmation (four eyes).
        with pytest.raises(ApplicationError) as refused:
            await decision_environment(loan.loan_id, now).run(
                activities.write_off_loan, write_off_decision(loan.loan_id, "LO-01")
            )
        assert refused.value.details[:1] == ("FOUR_EYES",)
        if withdrawn:
            await withdraw(cluster, loan.loan_id)
        else:
            # Another reason while the first proposal is open: lending says it is open.
            with pytest.raises(ApplicationError) as still_open:
                await decision_environment(loan.loan_id, later).run(
                    activities.write_off_loan,
                    write_off_decision(loan.loan_id, "pm-01", other_reason),
                )
            assert still_open.value.details[:1] == ("WRITE_OFF_ALREADY_PROPOSED",)
        decision = write_off_decision(loan.loan_id, "pm-01", reason or "the business has closed")
        summary = await decision_environment(loan.loan_id, later).run(
            activities.write_off_loan, decision
        )
        assert summary.status == "CLOSED_WRITTEN_OFF", (withdrawn, reason)
        # A retry of that decision (a worker lost mid-way) answers the same, once.
        retried = await decision_environment(loan.loan_id, later, timedelta(minutes=2)).run(
            activities.write_off_loan, decision
        )
        assert retried == summary
        assert await written_off_transactions(cluster, loan.loan_id) == 1


async def test_a_withdrawal_of_the_decisions_own_proposal_stands(
    cluster: Cluster, activities: JourneyActivities
) -> None:
    """A proposal withdrawn while the decision that made it is being retried is not made
    again behind the withdrawer's back; a chain of earlier decisions' proposals, each
    withdrawn, is followed to a fresh one."""
    fund_id = await open_fund(cluster, 2_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    began = datetime.now(UTC) - timedelta(seconds=1)
    first_attempt = decision_environment(loan.loan_id, began)
    # The first attempt proposed and was lost before confirming; the proposal is withdrawn.
    await cluster.lending.ProposeLoanWriteOff(
        lending_pb.ProposeLoanWriteOffRequest(
            request_id=first_attempt.run(step_request_id, "write-off/propose"),
            loan_id=loan.loan_id,
            reason="the business has closed",
            proposed_by="lo-01",
            write_off_date=pdate(programme_today()),
        )
    )
    withdrawn = await withdraw(cluster, loan.loan_id)
    with pytest.raises(ApplicationError) as refused:
        await decision_environment(loan.loan_id, began, timedelta(minutes=2)).run(
            activities.write_off_loan, write_off_decision(loan.loan_id, "pm-01")
        )
    assert refused.value.details[:1] == ("NO_WRITE_OFF_PROPOSAL",)
    assert await written_off_transactions(cluster, loan.loan_id) == 0

    # Later decisions: the one above (its proposal withdrawn), then one whose fresh
    # proposal was left unconfirmed and withdrawn too; the next decision proposes a third.
    second_step = f"write-off/after/{withdrawn.propose_time.ToJsonString()}/propose"
    await cluster.lending.ProposeLoanWriteOff(
        lending_pb.ProposeLoanWriteOffRequest(
            request_id=first_attempt.run(step_request_id, second_step),
            loan_id=loan.loan_id,
            reason="the business has closed",
            proposed_by="lo-01",
            write_off_date=pdate(programme_today()),
        )
    )
    await withdraw(cluster, loan.loan_id)
    summary = await decision_environment(loan.loan_id, began + timedelta(minutes=5)).run(
        activities.write_off_loan, write_off_decision(loan.loan_id, "pm-01")
    )
    assert summary.status == "CLOSED_WRITTEN_OFF"
    assert await written_off_transactions(cluster, loan.loan_id) == 1


@pytest.mark.timeout(120)
async def test_a_write_off_proposal_is_one_the_journey_and_lending_both_see(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """A proposal made through the journey is recorded with lending at once (GetLoan
    shows it; lending's own withdrawal withdraws it and the journey, told, lets it go); one
    made through lending's API is the journey's to confirm once it has read the loan. The
    journey held its own, which lending never saw, and saw none made with lending."""
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)

        async def lendings_proposal() -> lending_pb.LoanWriteOffProposal | None:
            got = await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))
            return got.write_off_proposal if got.HasField("write_off_proposal") else None

        await handle.execute_update(
            SurvivorJourneyWorkflow.propose_write_off,
            WriteOffProposal("the business has closed", "lo-01"),
        )
        proposal = await lendings_proposal()
        assert proposal is not None and proposal.proposed_by == "lo-01"
        # A second proposal while one is open: refused, saying which one is open.
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.propose_write_off,
                WriteOffProposal("the borrower moved away", "lo-02"),
            )
        assert "proposed already, by lo-01 (the business has closed)" in str(refusal(raised.value))
        # No hardship while it waits: a loan rescheduled then was written off moments later.
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.request_hardship,
                Hardship("reschedule", "a flood", "lo-02", new_term_months=18),
            )
        assert "a write-off proposed by lo-01 awaits its confirmation: withdraw it before" in (
            str(refusal(raised.value))
        )
        await withdraw(cluster, loan_id)  # withdrawn through lending's API
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        status = await wait_until(
            handle, lambda s: not s.write_off_proposed_by, "read the withdrawal", within=10
        )
        assert status.loan_status == "ACTIVE"

        # Proposed through lending's API: the journey, told, holds it and confirms it.
        await propose_write_off(
            cluster.lending, loan_id, programme_today(), reason="the pond flooded"
        )
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        status = await wait_until(
            handle, lambda s: s.write_off_proposed_by == "lo-07", "read the proposal", within=10
        )
        assert status.write_off_reason == "the pond flooded"
        written_off = await handle.execute_update(
            SurvivorJourneyWorkflow.record_write_off,
            WriteOffDecision("the pond flooded", "lo-07", "pm-01"),
        )
        assert written_off.loan_status == "CLOSED_WRITTEN_OFF"
        assert (await handle.result()).stage == "WRITTEN_OFF"
    assert await lendings_proposal() is None
    assert await written_off_transactions(cluster, loan_id) == 1


@pytest.mark.timeout(120)
async def test_a_confirmation_of_a_proposal_since_replaced_is_refused_and_the_journey_rereads(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """The journey's copy is lo-01's proposal; through the API it was withdrawn and lo-07's
    made, and the journey not told yet: confirming "lo-01's" is refused (it wrote off
    lo-07's, which the confirmer never saw), and the journey reads the loan again."""
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)
        await handle.execute_update(
            SurvivorJourneyWorkflow.propose_write_off,
            WriteOffProposal("the business has closed", "lo-01"),
        )
        await withdraw(cluster, loan_id)
        await propose_write_off(
            cluster.lending, loan_id, programme_today(), reason="the pond flooded"
        )  # by lo-07
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_write_off,
                WriteOffDecision("the business has closed", "lo-01", "pm-01"),
            )
        assert refusal(raised.value).details[:1] == ("PROPOSAL_CHANGED",)
        status = await wait_until(
            handle, lambda s: s.write_off_proposed_by == "lo-07", "read the loan", within=10
        )
        assert status.loan_status == "ACTIVE" and status.write_off_reason == "the pond flooded"
        await handle.terminate("the test is over")
    assert await written_off_transactions(cluster, loan_id) == 0
