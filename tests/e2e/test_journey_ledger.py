"""A journey follows money moved outside it, end to end under time skipping with the real
services: told by the signal `loan_changed` (as `mineaction repay` and `journey refresh`
send it), it reads the ledger at once, whatever it is waiting for: a loan repaid before
its last tranche lapses the rest of the plan, a repaid loan reopened by a reversal takes
the journey back to its repayment cycle, and a write-off proposal it holds is withdrawn,
or dropped when the loan closes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.programme_time import programme_date
from services.common.protoconv import from_proto_date, proto_date
from tests.conftest import Cluster
from tests.factories import (
    follow_up_request,
    register_request,
    saatli_fish_farmer,
)
from tests.journey_helpers import skip_until, status_of
from tests.lending_helpers import disburse, open_fund, propose_write_off, repayment, reversal
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    CommitteeDecision,
    FollowUp,
    JourneyInput,
    JourneyStatus,
    LoanChanged,
    LoanRequest,
    TranchePlan,
    WriteOffProposal,
    WriteOffWithdrawal,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes

Journey = WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus]
SOON = timedelta(minutes=30)  # time-skipped: far sooner than any due date
STEP = timedelta(minutes=5)


async def started_journey(
    cluster: Cluster, env: WorkflowEnvironment, task_queue: str, loan: LoanRequest
) -> Journey:
    """A journey asking for `loan`, for a survivor registered for it."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    return await env.client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(survivor_id=survivor_id, case_worker_id="cw-51", loan=loan),
        id=journey_workflow_id(survivor_id),
        task_queue=task_queue,
        search_attributes=initial_search_attributes(programme_year=1),
    )


async def approved_journey(
    cluster: Cluster, env: WorkflowEnvironment, task_queue: str, loan: LoanRequest, stage: str
) -> Journey:
    """A journey whose loan the committee approved, once it reaches `stage`."""
    handle = await started_journey(cluster, env, task_queue, loan)
    await skip_until(env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=timedelta(hours=1))
    await handle.execute_update(
        SurvivorJourneyWorkflow.record_committee_decision,
        CommitteeDecision(approve=True, member_id="cm-05", decision_ref="CM-2026-151"),
    )
    await skip_until(env, handle, lambda s: s.stage == stage, step=timedelta(minutes=10))
    return handle


async def pay(cluster: Cluster, env: WorkflowEnvironment, loan_id: str, amount: int) -> str:
    """A payment at the cashier's desk on the journey's today; its transaction id."""
    today = programme_date(await env.get_current_time())
    paid = await cluster.lending.RecordRepayment(repayment(loan_id, amount, today))
    return paid.repayment.transaction_id


async def awaiting_first_follow_up(
    cluster: Cluster, env: WorkflowEnvironment, task_queue: str, loan: LoanRequest
) -> tuple[Journey, str, str]:
    """A journey whose loan was repaid in full in its grace, the journey told, once it
    awaits the answers of its +6-month follow-up: the journey, the loan, the payment."""
    handle = await approved_journey(cluster, env, task_queue, loan, "GRACE")
    loan_id = (await status_of(handle)).loan_id
    paid = await pay(cluster, env, loan_id, loan.amount_minor)
    await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    await skip_until(env, handle, lambda s: s.follow_up_due == 6, step=timedelta(days=10))
    return handle, loan_id, paid


def fish_then_feed(feed_after_days: int, fund_id: str = "") -> LoanRequest:
    """3,000 AZN: the fish (2,000 AZN) at the approval, the feed `feed_after_days` later."""
    return LoanRequest(
        "fish_farming",
        300_000,
        "fingerlings, then feed",
        tranches=[
            TranchePlan(200_000, "1,000 fingerlings", "IN_KIND", 0),
            TranchePlan(100_000, "feed", "IN_KIND", feed_after_days),
        ],
        fund_id=fund_id,
    )


async def fish_paid_out(
    cluster: Cluster, env: WorkflowEnvironment, task_queue: str, loan: LoanRequest
) -> tuple[Journey, JourneyStatus]:
    """An approved journey once its first tranche, the fish, is paid out."""
    handle = await approved_journey(cluster, env, task_queue, loan, "DISBURSEMENT")
    status = await skip_until(
        env, handle, lambda s: s.outstanding_minor == 200_000, step=timedelta(minutes=10)
    )
    return handle, status


@pytest.mark.timeout(180)
async def test_a_loan_repaid_before_its_last_tranche_lapses_the_rest(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """The fish, then the feed 30 days later; the borrower repays the fish money first:
    the feed tranche lapses and the journey is REPAID (the tranche was refused by lending
    and the journey failed)."""
    env = time_skipping_env
    async with build_worker(env.client, activities, task_queue):
        handle, status = await fish_paid_out(cluster, env, task_queue, fish_then_feed(30))
        await pay(cluster, env, status.loan_id, 200_000)
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(status.loan_id))
        repaid = await skip_until(env, handle, lambda s: s.stage == "REPAID", step=STEP, limit=SOON)
        assert repaid.loan_status == "CLOSED_OBLIGATIONS_MET"
        # Past the feed tranche's day: nothing more was disbursed, and the journey goes on.
        await env.sleep(timedelta(days=31))
        assert (await status_of(handle)).stage == "REPAID"
        ledger = (
            await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))
        ).loan
        assert [t.amount_minor for t in ledger.tranches] == [200_000]
        await handle.terminate("the test is over")


@pytest.mark.timeout(180)
async def test_a_tranche_paid_out_through_lending_meanwhile_ends_the_plan(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """The feed bought early and paid out at lending's desk: on the feed's day lending
    refused the journey's own tranche (nothing left of the principal), and the journey
    failed."""
    env = time_skipping_env
    async with build_worker(env.client, activities, task_queue):
        handle, status = await fish_paid_out(cluster, env, task_queue, fish_then_feed(30))
        today = programme_date(await env.get_current_time())
        await disburse(
            cluster.lending, status.loan_id, 100_000, today, "feed, bought early",
            kind=lending_pb.DISBURSEMENT_KIND_IN_KIND,
        )  # fmt: skip
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(status.loan_id))
        await env.sleep(timedelta(days=31))  # past the feed's day
        after = await status_of(handle)
        assert after.stage in ("GRACE", "REPAYMENT"), after
        assert (after.loan_status, after.outstanding_minor) == ("ACTIVE", 300_000), after
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        ledger = (
            await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))
        ).loan
        assert [t.description for t in ledger.tranches] == [
            "1,000 fingerlings",
            "feed, bought early",
        ]
        await handle.terminate("the test is over")


@pytest.mark.timeout(180)
async def test_a_write_off_proposed_through_lending_holds_back_the_next_tranche(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """Lending pays out no tranche while a write-off is proposed; a journey whose next
    tranche is refused so lets it lapse (the case worker told) and goes on."""
    env = time_skipping_env
    async with build_worker(env.client, activities, task_queue):
        handle, status = await fish_paid_out(cluster, env, task_queue, fish_then_feed(30))
        today = programme_date(await env.get_current_time())
        await propose_write_off(cluster.lending, status.loan_id, today)
        await env.sleep(timedelta(days=31))  # past the feed's day
        after = await status_of(handle)
        assert after.stage in ("GRACE", "REPAYMENT"), after
        assert (after.outstanding_minor, after.write_off_proposed_by) == (200_000, "lo-07")
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await handle.terminate("the test is over")


@pytest.mark.timeout(180)
async def test_a_reversal_takes_a_repaid_journey_back_to_its_repayment_cycle(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """Repaid early, then the payment bounces: the journey, told, leaves REPAID for its
    repayment cycle (it stayed REPAID and completed while the ledger said ACTIVE). A
    write-off proposal it held is withdrawn with a reason, and one held when the loan
    closes is dropped."""
    env = time_skipping_env
    async with build_worker(env.client, activities, task_queue):
        handle = await approved_journey(
            cluster, env, task_queue, LoanRequest("small_trade", 120_000, "a kiosk"), "GRACE"
        )
        status = await status_of(handle)
        loan_id = status.loan_id

        proposal = WriteOffProposal("proposed on the wrong loan", "lo-05")
        await handle.execute_update(SurvivorJourneyWorkflow.propose_write_off, proposal)
        withdrawn = await handle.execute_update(
            SurvivorJourneyWorkflow.withdraw_write_off_proposal,
            WriteOffWithdrawal("the proposal was for another survivor", "lo-05"),
        )
        assert withdrawn.write_off_proposed_by == ""
        await handle.execute_update(SurvivorJourneyWorkflow.propose_write_off, proposal)

        paid = await pay(cluster, env, loan_id, 120_000)
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        repaid = await skip_until(env, handle, lambda s: s.stage == "REPAID", step=STEP, limit=SOON)
        assert repaid.write_off_proposed_by == ""  # nothing left to write off

        await cluster.lending.ReverseRepayment(reversal(loan_id, paid))
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        reopened = await skip_until(
            env, handle, lambda s: s.stage in ("GRACE", "REPAYMENT"), step=STEP, limit=SOON
        )
        assert (reopened.loan_status, reopened.outstanding_minor) == ("ACTIVE", 120_000)
        assert reopened.closed_on == ""

        # Repaid again: REPAID again, and its follow-ups count from then.
        await pay(cluster, env, loan_id, 120_000)
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        again = await skip_until(env, handle, lambda s: s.stage == "REPAID", step=STEP, limit=SOON)
        assert again.closed_on == programme_date(await env.get_current_time()).isoformat()
        await handle.terminate("the test is over")


@pytest.mark.timeout(180)
async def test_a_reversal_after_the_last_due_date_or_during_a_follow_up_reopens_the_journey(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """Two reopenings the journey used to miss: a loan repaid after every instalment had
    fallen due, whose payment bounces, stayed REPAID (nothing falls due any more); one
    whose payment bounces while its +6 month follow-up awaits its answers was seen only at
    the +12 month date."""
    env = time_skipping_env
    kiosk = LoanRequest("small_trade", 120_000, "a kiosk")
    async with build_worker(env.client, activities, task_queue):
        late = await approved_journey(cluster, env, task_queue, kiosk, "GRACE")
        loan_id = (await status_of(late)).loan_id
        await env.sleep(timedelta(days=400))  # past the last instalment, nothing paid
        paid = await pay(cluster, env, loan_id, 120_000)
        await late.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        await skip_until(env, late, lambda s: s.stage == "REPAID", step=STEP, limit=SOON)
        await cluster.lending.ReverseRepayment(reversal(loan_id, paid))
        await late.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        reopened = await skip_until(env, late, lambda s: s.stage != "REPAID", step=STEP, limit=SOON)
        assert reopened.stage in ("REPAYMENT", "ARREARS_REVIEW"), reopened
        assert (reopened.loan_status, reopened.days_past_due > 90) == ("ACTIVE", True)
        await late.terminate("the test is over")

        asked, loan_id, paid = await awaiting_first_follow_up(cluster, env, task_queue, kiosk)
        await cluster.lending.ReverseRepayment(reversal(loan_id, paid))
        await asked.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
        reopened = await skip_until(
            env, asked, lambda s: s.stage in ("REPAYMENT", "ARREARS_REVIEW"), step=STEP,
            limit=SOON,
        )  # fmt: skip
        assert (reopened.follow_up_due, reopened.loan_status) == (0, "ACTIVE")
        await asked.terminate("the test is over")

        # The same, the journey not told before the answers come: eligibility records no
        # follow-up of an open loan, and the journey goes back to the repayments.
        unheard, loan_id, paid = await awaiting_first_follow_up(cluster, env, task_queue, kiosk)
        await cluster.lending.ReverseRepayment(reversal(loan_id, paid))
        await unheard.execute_update(
            SurvivorJourneyWorkflow.record_follow_up, FollowUp(90_000, True, 3, "cw-51")
        )
        reopened = await skip_until(
            env, unheard, lambda s: s.stage in ("REPAYMENT", "ARREARS_REVIEW"), step=STEP,
            limit=SOON,
        )  # fmt: skip
        assert (reopened.follow_up_due, reopened.loan_status) == (0, "ACTIVE"), reopened
        assert reopened.follow_ups_recorded == []
        await unheard.terminate("the test is over")


@pytest.mark.timeout(180)
async def test_follow_up_answers_eligibility_would_refuse_or_has_already_do_not_fail_the_journey(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """The update stored answers eligibility then refused (a 65-character recorded_by),
    and a +6 follow-up recorded with eligibility directly was refused as recorded: both
    failed the journey after the update had said all was well."""
    env = time_skipping_env
    kiosk = LoanRequest("small_trade", 120_000, "a kiosk")
    async with build_worker(env.client, activities, task_queue):
        handle, loan_id, _ = await awaiting_first_follow_up(cluster, env, task_queue, kiosk)
        for bad in (
            FollowUp(90_000, True, 3, "x" * 65),
            FollowUp(90_000, True, 3, "cw-51\u200b"),
            FollowUp(10_000_000_001, True, 3, "cw-51"),
        ):
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(SurvivorJourneyWorkflow.record_follow_up, bad)
            assert "recorded_by" in str(refused.value.cause) or "income" in str(
                refused.value.cause
            ), refused.value.cause
        status = await status_of(handle)
        assert (status.stage, status.follow_up_due) == ("FOLLOW_UP", 6)

        # Staff record the +6 follow-up at eligibility's desk; the journey's own answers
        # then find it recorded, count it, and go on to the +12.
        today = programme_date(await env.get_current_time())
        await cluster.eligibility.RecordFollowUp(
            follow_up_request(status.survivor_id, loan_id, 6, today, recorded_by="cw-51")
        )
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_follow_up, FollowUp(90_000, True, 3, "cw-51")
        )
        went_on = await skip_until(
            env, handle, lambda s: s.follow_ups_recorded == [6], step=STEP, limit=SOON
        )
        assert (went_on.stage, went_on.follow_up_due) == ("REPAID", 0), went_on
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        await handle.terminate("the test is over")


async def withdraw_consent(cluster: Cluster, env: WorkflowEnvironment, survivor_id: str) -> None:
    await cluster.eligibility.WithdrawConsent(
        eligibility_pb.WithdrawConsentRequest(
            request_id=str(uuid.uuid4()),
            survivor_id=survivor_id,
            withdrawn_on=proto_date(programme_date(await env.get_current_time())),
        )
    )


async def follow_ups_asked(activities: JourneyActivities, handle: Journey) -> list[str]:
    rows = await activities.outbox.db.pool.fetch(
        "SELECT dedupe_key FROM outbox WHERE dedupe_key LIKE $1 AND kind = 'follow_up_due' "
        "ORDER BY queued_at",
        f"{handle.id}/%",
    )
    return [r["dedupe_key"].rsplit("/", 1)[-1] for r in rows]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("answered", ["answers sent anyway", "no answers"])
async def test_a_survivor_who_withdrew_consent_is_asked_for_no_more_follow_ups(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    answered: str,
) -> None:
    """The survivor withdrew consent while their +6 follow-up was due. Answers sent anyway
    (the API; the CLI refuses them) are refused by eligibility (CONSENT_WITHDRAWN), which
    failed the journey; with none sent (the CLI's case), the journey asked for the +12 a
    year later all the same. Now it records nothing, asks for nothing more, and ends."""
    env = time_skipping_env
    kiosk = LoanRequest("small_trade", 120_000, "a kiosk")
    async with build_worker(env.client, activities, task_queue):
        handle, _, _ = await awaiting_first_follow_up(cluster, env, task_queue, kiosk)
        await withdraw_consent(cluster, env, (await status_of(handle)).survivor_id)
        if answered == "answers sent anyway":
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_follow_up, FollowUp(90_000, True, 3, "cw-51")
            )
        # Its loan repaid and nothing else planned, the journey ends, a success.
        ended = await handle.result()
        assert (ended.stage, ended.follow_up_due, ended.follow_ups_recorded) == (
            "COMPLETED",
            0,
            [],
        )
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert await follow_ups_asked(activities, handle) == ["6"]


@pytest.mark.timeout(120)
async def test_a_journey_asks_no_follow_up_of_a_survivor_who_withdrew_consent_before_it(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    env = time_skipping_env
    kiosk = LoanRequest("small_trade", 120_000, "a kiosk")
    async with build_worker(env.client, activities, task_queue):
        handle = await approved_journey(cluster, env, task_queue, kiosk, "GRACE")
        status = await status_of(handle)
        await withdraw_consent(cluster, env, status.survivor_id)
        await pay(cluster, env, status.loan_id, kiosk.amount_minor)
        await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(status.loan_id))
        ended = await handle.result()
        assert (ended.stage, ended.follow_ups_recorded) == ("COMPLETED", [])
        assert await follow_ups_asked(activities, handle) == []


@pytest.mark.timeout(180)
async def test_a_journey_counts_its_days_in_baku(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """From 20:00 UTC it is already tomorrow in Baku, where the services count days. A
    loan the journey disburses in the UTC evening is disbursed on Baku's day, and its
    first instalment falls due a month after that day (before, on UTC's day: one day
    behind what the cashier's desk and every report call today)."""
    env = time_skipping_env
    now = await env.get_current_time()
    evening = datetime.combine(now.astimezone(UTC).date(), time(20, 15), UTC)
    if evening <= now:
        evening += timedelta(days=1)
    await env.sleep(evening - now)
    kiosk = LoanRequest("small_trade", 120_000, "a kiosk")
    async with build_worker(env.client, activities, task_queue):
        handle = await approved_journey(cluster, env, task_queue, kiosk, "GRACE")
        after = (await env.get_current_time()).astimezone(UTC)
        assert after.date() == evening.date(), "disbursed after the UTC evening"
        baku_day = programme_date(after)
        assert baku_day == evening.date() + timedelta(days=1)
        loan = (
            await cluster.lending.GetLoan(
                lending_pb.GetLoanRequest(loan_id=(await status_of(handle)).loan_id)
            )
        ).loan
        assert [from_proto_date(t.disbursement_date) for t in loan.tranches] == [baku_day]
        await handle.terminate("the test is over")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("repaid", ["in part", "in full", "in full, unheard", "not at all"])
async def test_a_tranche_the_fund_cannot_cover_waits_for_the_fund(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    repaid: str,
) -> None:
    """The fund has too little left for the feed tranche: the journey waits, says so, and
    pays it out the day repayments have brought the money back; a loan repaid in full
    meanwhile lapses the tranche, whether or not the journey heard of the payment (its
    next try was refused and the journey failed), and so does the day the borrower is
    reminded of the first instalment coming (the reminder was never sent). Lending's
    refusal failed the journey for good, its loan left ACTIVE with nothing following it."""
    env = time_skipping_env
    fund_id = await open_fund(cluster, 250_000)
    loan = fish_then_feed(30, fund_id)
    async with build_worker(env.client, activities, task_queue):
        handle = await approved_journey(cluster, env, task_queue, loan, "DISBURSEMENT")
        status = await skip_until(
            env, handle, lambda s: s.waiting_for_funds_minor > 0, step=timedelta(days=1),
            limit=timedelta(days=35),
        )  # fmt: skip
        assert status.stage == "DISBURSEMENT" and status.loan_status == "ACTIVE"
        assert status.waiting_for_funds_minor == 100_000
        fund = (await cluster.lending.GetFund(lending_pb.GetFundRequest(fund_id=fund_id))).fund
        assert fund.available_minor == 50_000
        notified = ["disbursement_waiting_for_funds"]  # once, not each day
        if repaid.startswith("in full"):  # the fish money repaid
            await pay(cluster, env, status.loan_id, 200_000)
            if repaid == "in full":  # the journey told at once; else found at its next try
                await handle.signal(
                    SurvivorJourneyWorkflow.loan_changed, LoanChanged(status.loan_id)
                )
            status = await skip_until(
                env, handle, lambda s: s.stage == "REPAID", step=timedelta(hours=6),
                limit=timedelta(days=2),
            )  # fmt: skip
            tranches = [200_000]
        elif repaid == "in part":  # 600 AZN: the fund has 1,100 AZN again, the next try pays
            await pay(cluster, env, status.loan_id, 60_000)
            status = await skip_until(
                env, handle, lambda s: s.stage == "GRACE", step=timedelta(hours=2),
                limit=timedelta(days=2),
            )  # fmt: skip
            assert status.outstanding_minor == 240_000
            tranches = [200_000, 100_000]
        else:  # the reminder of the first instalment comes: the feed lapses, the loan goes on
            status = await skip_until(
                env, handle, lambda s: s.stage != "DISBURSEMENT", step=timedelta(days=1),
                limit=timedelta(days=400),
            )  # fmt: skip
            assert status.stage == "GRACE", status  # before the first due date
            assert status.outstanding_minor == 200_000
            await env.sleep(timedelta(hours=1))  # the reminder's notification is queued
            tranches = [200_000]
            notified += ["tranche_lapsed", "repayment_reminder"]
        assert status.waiting_for_funds_minor == 0
        ledger = (
            await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))
        ).loan
        assert [t.amount_minor for t in ledger.tranches] == tranches
        sent = await activities.outbox.db.pool.fetch(
            """SELECT kind, recipient FROM outbox WHERE dedupe_key LIKE $1
               AND kind IN ('disbursement_waiting_for_funds', 'tranche_lapsed',
                            'repayment_reminder')
               ORDER BY queued_at""",
            f"{handle.id}/%",
        )
        borrower = {"repayment_reminder": (await status_of(handle)).survivor_id}
        assert [(r["kind"], r["recipient"]) for r in sent] == [
            (k, borrower.get(k, "cw-51")) for k in notified
        ]
        await handle.terminate("the test is over")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("tranches", "problem"),
    [
        pytest.param(
            [TranchePlan(300_000, "fish", "IN_KIND", 0), TranchePlan(300_000, "feed")],
            "add up to 6,000.00 AZN, not the 5,000.00 AZN asked for",
            id="not-adding-up",
        ),
        pytest.param(
            [TranchePlan(200_000, "fish", "IN_KIND", 0), *[TranchePlan(150_000, "feed")] * 2],
            "the loan's plan has 3 tranches; product fish_farming allows 2",
            id="more-than-the-product-allows",
        ),
        pytest.param(
            [TranchePlan(300_000, "fish", "IN_KIND", 0), TranchePlan(200_000, "\u200b")],
            "tranche 2 of the loan's plan has no description",
            id="invisible-description",
        ),
        pytest.param(
            [TranchePlan(300_000, "fish", "IN_KIND", 0), TranchePlan(200_000, "feed " * 101)],
            "tranche 2 of the loan's plan has a description longer than 500 characters",
            id="description-too-long",
        ),
        pytest.param(
            [TranchePlan(600_000, "fish", "IN_KIND", 0), TranchePlan(-100_000, "refund")],
            "tranche 2 of the loan's plan is -1,000.00 AZN: a tranche pays out more than nothing",
            id="negative-tranche",
        ),
    ],
)
async def test_a_tranche_plan_that_cannot_be_paid_out_fails_the_journey_at_its_start(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    tranches: list[TranchePlan],
    problem: str,
) -> None:
    """Tranches adding up to more than the loan, more of them than the product allows, or
    one lending would refuse to pay out: refused before anything is asked of lending
    (lending refused the tranche after the approval, the loan left open with nothing
    following it)."""
    env = time_skipping_env
    loan = LoanRequest("fish_farming", 500_000, "fingerlings, then feed", tranches=tranches)
    async with build_worker(env.client, activities, task_queue):
        handle = await started_journey(cluster, env, task_queue, loan)
        survivor_id = (await status_of(handle)).survivor_id
        # The journey fails at once: no time to skip (it skipped ten years, and the
        # tests after it ran with survivors past every programme's age limit).
        with env.auto_time_skipping_disabled(), pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "INVALID_TRANCHE_PLAN"
    assert problem in cause.message
    loans = await cluster.lending.ListLoans(lending_pb.ListLoansRequest(survivor_id=survivor_id))
    assert not loans.loans  # nothing was applied for


@pytest.mark.timeout(180)
async def test_a_tranche_planned_after_the_first_reminder_lapses_on_the_reminder_day(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """The feed planned a year after the approval, past the eight months' grace: on the
    day the borrower is reminded of the first instalment the feed lapses, the case worker
    told, and the reminder goes out (the journey waited in DISBURSEMENT for the planned
    day, and the borrower heard of no instalment until the field visit for arrears)."""
    env = time_skipping_env
    async with build_worker(env.client, activities, task_queue):
        handle, status = await fish_paid_out(cluster, env, task_queue, fish_then_feed(365))
        # To the eve of the reminder's day in one go, then on through that day.
        schedule = (
            await cluster.lending.GetRepaymentSchedule(
                lending_pb.GetRepaymentScheduleRequest(loan_id=status.loan_id)
            )
        ).schedule
        first_due = from_proto_date(schedule.instalments[0].due_date)
        today = programme_date(await env.get_current_time())
        await env.sleep(first_due - timedelta(days=4) - today)
        assert (await status_of(handle)).stage == "DISBURSEMENT"  # the feed not lapsed yet
        status = await skip_until(
            env, handle, lambda s: s.stage != "DISBURSEMENT", step=timedelta(hours=6),
            limit=timedelta(days=2),
        )  # fmt: skip
        assert status.stage == "GRACE" and status.outstanding_minor == 200_000, status
        await env.sleep(timedelta(hours=1))  # the reminder's notification is queued
        assert status.next_due_date == first_due.isoformat()
        today = programme_date(await env.get_current_time())
        assert today == first_due - timedelta(days=3)  # the reminder's day
        sent = await activities.outbox.db.pool.fetch(
            """SELECT kind, dedupe_key FROM outbox WHERE dedupe_key LIKE $1
               AND kind IN ('tranche_lapsed', 'repayment_reminder') ORDER BY queued_at""",
            f"{handle.id}/%",
        )
        assert [(r["kind"], r["dedupe_key"]) for r in sent] == [
            ("tranche_lapsed", f"{handle.id}/tranche-lapsed/2"),
            ("repayment_reminder", f"{handle.id}/reminder/{first_due.isoformat()}"),
        ]
        ledger = (
            await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))
        ).loan
        assert [t.amount_minor for t in ledger.tranches] == [200_000]
        await handle.terminate("the test is over")
