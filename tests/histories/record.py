"""Record the committed journey histories that tests/replay replays.

    .venv/bin/python -m tests.histories.record

Starts the real cluster in-process (an embedded PostgreSQL from pgserver, the three
services on free ports, the time-skipping Temporal test server and the journey worker),
runs each representative journey to its end (and one journey of assistance only, whose
items' histories are written too), and writes every run's history as JSON next to this
file, with manifest.json naming each file's workflow id and event count. It
prints the event counts, among them the 36-month loan's (see docs/journeys.md).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.auth import ensure_dev_credentials
from services.common.channels import service_token
from services.common.config import load_settings
from services.common.logging import configure_logging
from services.common.programme_time import programme_date
from tests.conftest import Cluster, start_services, stop_services
from tests.factories import (
    follow_up_request,
    register_request,
    request_id,
    saatli_fish_farmer,
)
from tests.journey_helpers import deliver_wheelchair, own_pool, skip_until, someone_holds, status_of
from tests.lending_helpers import disburse, open_fund, repayment, reversal
from workers.journey import search_attributes
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    AssistanceAction,
    AssistancePlan,
    AssistanceRefresh,
    CommitteeDecision,
    FollowUp,
    Hardship,
    JourneyInput,
    JourneyPolicy,
    JourneyStatus,
    LoanChanged,
    LoanRequest,
    TranchePlan,
    WriteOffDecision,
    WriteOffProposal,
    assistance_workflow_id,
    journey_workflow_id,
)
from workers.journey.worker import build_worker, open_outbox
from workers.journey.workflows import AssistanceWorkflow, SurvivorJourneyWorkflow
from workers.simulation.workflows import Behaviour, BorrowerInput, BorrowerWorkflow

HERE = Path(__file__).parent
MANIFEST = HERE / "manifest.json"
BIN = Path(sys.executable).parent
TASK_QUEUE = "record-histories"
TERMINAL = ("COMPLETED", "WRITTEN_OFF")

Handle = WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus]
Step = Callable[[Handle, JourneyStatus], Awaitable[bool]]


def survivor_id(scenario: str) -> str:
    """Fixed, opaque ids: each recording runs on a fresh database."""
    return f"rec-{scenario.replace('_', '-')}"


@dataclass(frozen=True)
class Scenario:
    product_id: str
    amount_minor: int
    behaviour: Behaviour
    answer_follow_ups: bool = True
    reschedule: bool = False
    write_off: bool = False
    # No borrower: the whole loan is repaid at the cashier's desk in its grace period and
    # the journey is told (signal loan_changed), as `mineaction repay` does.
    repay_early: bool = False
    # With repay_early: the payment bounces (reversed), then the loan is repaid again.
    reverse_once: bool = False
    # The loan's tranches (one of the whole amount when empty); with repay_early, what the
    # first tranche lent is repaid before the second is due.
    tranches: tuple[TranchePlan, ...] = ()
    commit: bool = True  # False: measured and printed, but not written


SCENARIOS = {
    # Twelve monthly instalments paid on the day; both follow-ups answered.
    "on_time": Scenario("small_trade", 120_000, Behaviour()),
    # Instalments 2 and 3 paid 40 days late (a field visit), then on time; the
    # follow-ups go unanswered and time out.
    "late": Scenario(
        "small_trade",
        120_000,
        Behaviour(days_late=40, late_from=2, late_until=3),
        answer_follow_ups=False,
    ),
    # Carpet weaving, rescheduled for hardship at the first instalment.
    "rescheduled": Scenario("carpet_weaving", 150_000, Behaviour(), reschedule=True),
    # Two payments, then nothing: committee review at 90 days past due, written off.
    "written_off": Scenario("small_trade", 120_000, Behaviour(stop_after=2), write_off=True),
    # Repaid in full during the grace period; followed up from the day it closed.
    "repaid_early": Scenario("small_trade", 120_000, Behaviour(), repay_early=True),
    # Repaid in grace; the payment bounces and the journey goes back to its grace; repaid
    # again (patch journey-follows-the-ledger).
    "reopened": Scenario("small_trade", 120_000, Behaviour(), repay_early=True, reverse_once=True),
    # Fingerlings, then feed 30 days later; the fingerling money repaid before the feed is
    # due: the feed tranche lapses (patch journey-follows-the-ledger).
    "repaid_between_tranches": Scenario(
        "fish_farming",
        300_000,
        Behaviour(),
        repay_early=True,
        tranches=(
            TranchePlan(200_000, "1,000 fingerlings", "IN_KIND", 0),
            TranchePlan(100_000, "feed", "IN_KIND", 30),
        ),
    ),
    # The longest product: 36 months (2 of grace), repaid on time, both follow-ups.
    # Not committed (about 1,700 events between the two workflows): run to measure.
    "on_time_36_months": Scenario("business_expansion", 360_000, Behaviour(), commit=False),
}


@dataclass
class Recorded:
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    events_per_run: dict[str, dict[str, list[int]]] = field(default_factory=dict)


async def tell(env: WorkflowEnvironment, handle: Handle, loan_id: str, stage: str) -> None:
    """Signal loan_changed, as `mineaction repay` does; until the journey is in `stage`."""
    await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    await skip_until(
        env, handle, lambda s: s.stage == stage, step=timedelta(minutes=1),
        limit=timedelta(hours=1),
    )  # fmt: skip


async def pay_and_tell(
    env: WorkflowEnvironment,
    cluster: Cluster,
    handle: Handle,
    loan_id: str,
    amount_minor: int,
    stage: str,
) -> str:
    """A payment at the cashier's desk on the journey's today, the journey told; the
    payment's transaction id."""
    today = programme_date(await env.get_current_time())
    paid = await cluster.lending.RecordRepayment(repayment(loan_id, amount_minor, today))
    await tell(env, handle, loan_id, stage)
    return paid.repayment.transaction_id


async def write_runs(
    client: Client,
    workflow_id: str,
    first_run_id: str | None,
    stem: str,
    out: Recorded,
    *,
    commit: bool,
) -> list[int]:
    """Write each run of a workflow (more than one if it continued as new), compactly."""
    counts: list[int] = []
    run_id = first_run_id
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        name = f"{stem}.json" if not counts else f"{stem}.run{len(counts) + 1}.json"
        counts.append(len(history.events))
        if commit:
            compact = json.dumps(json.loads(history.to_json()), separators=(",", ":"))
            (HERE / name).write_text(compact + "\n")
            out.files[name] = {"workflow_id": workflow_id, "events": len(history.events)}
        last = history.events[-1]
        if not last.HasField("workflow_execution_continued_as_new_event_attributes"):
            return counts
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id


async def in_committee_review(
    env: WorkflowEnvironment, cluster: Cluster, name: str, loan: LoanRequest
) -> Handle:
    """The journey of scenario `name`'s survivor, registered for it, asking for `loan`:
    once it awaits the committee."""
    sid = survivor_id(name)
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(sid)))
    handle: Handle = await env.client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(survivor_id=sid, case_worker_id="cw-07", loan=loan),
        id=journey_workflow_id(sid),
        task_queue=TASK_QUEUE,
    )
    await skip_until(env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=timedelta(hours=1))
    return handle


async def run_scenario(
    env: WorkflowEnvironment, cluster: Cluster, name: str, scenario: Scenario, out: Recorded
) -> None:
    client = env.client
    loan = LoanRequest(
        scenario.product_id, scenario.amount_minor, f"{name} journey", list(scenario.tranches)
    )
    handle = await in_committee_review(env, cluster, name, loan)
    # The case worker who submitted it cannot approve it: lending refuses (four eyes), the
    # update fails with that reason, and the committee's own decision follows.
    try:
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(True, "cw-07", f"CM-REC-{name}"),
        )
    except WorkflowUpdateFailedError:
        pass
    else:
        raise AssertionError("lending approved a loan its own submitter decided")
    approved = await handle.execute_update(
        SurvivorJourneyWorkflow.record_committee_decision,
        CommitteeDecision(True, "cm-03", f"CM-REC-{name}"),
    )
    # The borrower starts paying once the loan is disbursed (before that, the lending
    # service has no schedule for it and the borrower's first read is refused).
    for _ in range(200):
        if (await status_of(handle)).stage not in ("COMMITTEE_REVIEW", "DISBURSEMENT"):
            break
        await asyncio.sleep(0.05)
    borrower = (
        None
        if scenario.repay_early
        else await client.start_workflow(
            BorrowerWorkflow.run,
            BorrowerInput(approved.loan_id, scenario.behaviour),
            id=f"borrower-{approved.loan_id}",
            task_queue=TASK_QUEUE,
        )
    )
    rescheduled = repaid = False
    answered: set[int] = set()
    for _ in range(400):
        status = await status_of(handle)
        if status.stage in TERMINAL:
            break
        if scenario.reschedule and not rescheduled and status.stage == "REPAYMENT":
            # A pause, then the reschedule the same day: two requests of their own.
            await handle.execute_update(
                SurvivorJourneyWorkflow.request_hardship,
                Hardship("pause", "The workshop flooded", "lo-02", pause_days=30),
            )
            await handle.execute_update(
                SurvivorJourneyWorkflow.request_hardship,
                Hardship(
                    "reschedule",
                    "The workshop flooded",
                    "lo-02",
                    new_term_months=18,
                    additional_grace_months=3,
                ),
            )
            rescheduled = True
        first = scenario.tranches[0].amount_minor if scenario.tranches else 0
        paid_before = status.stage == "DISBURSEMENT" and status.outstanding_minor == first
        if scenario.repay_early and (status.stage == "GRACE" or paid_before) and not repaid:
            repaid = True
            amount = first or scenario.amount_minor
            paid = await pay_and_tell(env, cluster, handle, approved.loan_id, amount, "REPAID")
            if scenario.reverse_once:
                await cluster.lending.ReverseRepayment(reversal(approved.loan_id, paid))
                await tell(env, handle, approved.loan_id, "GRACE")
                await pay_and_tell(env, cluster, handle, approved.loan_id, amount, "REPAID")
        if scenario.write_off and status.stage == "ARREARS_REVIEW":
            # Four eyes: the loan officer proposes, the programme manager confirms.
            await handle.execute_update(
                SurvivorJourneyWorkflow.propose_write_off,
                WriteOffProposal("No payment for over 90 days", "lo-02"),
            )
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_write_off,
                WriteOffDecision("No payment for over 90 days", "lo-02", "pm-01"),
            )
        due = status.follow_up_due
        if scenario.answer_follow_ups and due and due not in answered:
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_follow_up,
                FollowUp(100_000, True, 4, "cw-07"),
            )
            answered.add(due)
        await env.sleep(timedelta(days=10))
    else:
        raise AssertionError(f"{name} did not finish: {status}")
    # Results one at a time (the time-skipping server's lock pitfall).
    result = await handle.result()
    payments = await borrower.result() if borrower else 1
    journey_runs = await write_runs(
        client, handle.id, handle.first_execution_run_id, name, out, commit=scenario.commit
    )
    borrower_runs = (
        await write_runs(
            client,
            borrower.id,
            borrower.first_execution_run_id,
            f"{name}.borrower",
            out,
            commit=scenario.commit,
        )
        if borrower
        else []
    )
    out.events_per_run[name] = {"journey": journey_runs, "borrower": borrower_runs}
    print(
        f"{name:>18}: {result.stage} ({result.loan_status}), {payments} payments; "
        f"journey events per run {journey_runs}, borrower events {borrower_runs}"
    )
    assert (await status_of(handle)).stage in TERMINAL


async def write_journey_and_items(
    client: Client,
    handle: Handle,
    items: tuple[WorkflowHandle[Any, Any], ...],
    name: str,
    out: Recorded,
) -> JourneyStatus:
    """Once the journey has ended: its history and its assistance items', as `name` and
    `name.<type>`."""
    result = await handle.result()
    counts = {
        "journey": await write_runs(
            client, handle.id, handle.first_execution_run_id, name, out, commit=True
        )
    }
    for item in items:
        kind = item.id.rsplit("-assistance-", 1)[1]
        counts[kind] = await write_runs(client, item.id, None, f"{name}.{kind}", out, commit=True)
    out.events_per_run[name] = counts
    print(f"{name:>18}: {result.stage}; events per run {counts}")
    return result


async def run_assisted(env: WorkflowEnvironment, cluster: Cluster, out: Recorded) -> None:
    """A journey of assistance only: an English course whose provider first sends a step
    the course cannot take yet (refused by the service; the record has not moved), which
    staff refresh, which is attended, and whose survivor is dropped out straight through
    the assistance API (the provider's next step is refused and the course ends); and a
    wheelchair waitlisted behind another survivor's, promoted when that one is cancelled
    through the assistance API (the item reads it the next day), then delivered and
    followed up.

    (The pre_assistance_catch_up.assisted.* histories, recorded before the item read its
    record, attended and completed the course through the journey instead.)"""
    client, name = env.client, "assisted"
    sid = survivor_id(name)
    # Young enough for the courses when the loan journeys before have moved the server's
    # clock years ahead.
    intake = saatli_fish_farmer(sid)
    intake.date_of_birth.year = 2000
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    course_pool = await own_pool(cluster, "barda-vocational-centre", "english_course", 5, 2)
    chair_pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    holder = await someone_holds(
        cluster, chair_pool, survivor_id=survivor_id("assisted_holder"), case_worker="cw-07"
    )
    handle: Handle = await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=sid,
            case_worker_id="cw-07",
            assistance=[
                AssistancePlan(
                    "english_course", "barda-vocational-centre", course_pool, 1, {"level": "a1"}
                ),
                AssistancePlan(
                    "wheelchair", "baku-mobility-aids", chair_pool, 1, {"seat_width_cm": 44}
                ),
            ],
        ),
        id=journey_workflow_id(sid),
        task_queue=TASK_QUEUE,
    )
    for _ in range(200):  # until both items are requested
        status = await status_of(handle)
        if len(status.assistance) == 2 and all(a.assistance_id for a in status.assistance):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"{name}: the items were never requested: {status}")
    course = client.get_workflow_handle(assistance_workflow_id(handle.id, "english_course"))
    chair = client.get_workflow_handle(assistance_workflow_id(handle.id, "wheelchair"))
    try:
        await course.execute_update(
            AssistanceWorkflow.advance,
            AssistanceAction("complete", "provider-01", {"certificate_number": "EN-REC-1"}),
        )
    except WorkflowUpdateFailedError:
        pass
    else:
        raise AssertionError("the service completed a course nobody attended")
    # Staff ask the course to read its record again: nothing has moved.
    await course.execute_update(AssistanceWorkflow.refresh, AssistanceRefresh("cw-07"))
    attending = await course.execute_update(
        AssistanceWorkflow.advance, AssistanceAction("attend", "provider-01", {"sessions": 1})
    )
    # The survivor drops out, sent straight to the assistance service; the provider's next
    # step is refused, and the course reads its record and ends.
    await cluster.assistance.AdvanceAssistance(
        assistance_pb.AdvanceAssistanceRequest(
            request_id=request_id(),
            assistance_id=attending.assistance_id,
            action="drop_out",
            actor="cw-07",
        )
    )
    try:
        await course.execute_update(
            AssistanceWorkflow.advance, AssistanceAction("attend", "provider-01", {"sessions": 1})
        )
    except WorkflowUpdateFailedError:
        pass
    else:
        raise AssertionError("the service let a survivor who dropped out attend")
    await cluster.assistance.AdvanceAssistance(
        assistance_pb.AdvanceAssistanceRequest(
            request_id=request_id(),
            assistance_id=holder,
            action="cancel",
            actor="cw-07",
        )
    )
    await env.sleep(timedelta(days=2))
    promoted = await chair.query(AssistanceWorkflow.state)
    if promoted is None or promoted.state == "waitlisted":
        raise AssertionError(f"the wheelchair never read its promotion: {promoted}")
    await deliver_wheelchair(chair, "WC-REC-1")
    result = await write_journey_and_items(client, handle, (course, chair), name, out)
    assert result.stage == "COMPLETED", result


async def run_loan_refused(env: WorkflowEnvironment, cluster: Cluster, out: Recorded) -> None:
    """Household income above the credit ceiling; a fish-farming loan, a wheelchair and
    carpet-weaving support asked for. The assessment finds the survivor eligible for the
    wheelchair only: carpet weaving is not requested, the loan is refused, and the journey
    follows the wheelchair to its follow-up before it closes as not eligible."""
    client, name = env.client, "loan_refused"
    intake = saatli_fish_farmer(survivor_id(name))
    intake.monthly_household_income_minor = 5 * 30_001  # per person, above the ceiling
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    chair_pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    looms = await own_pool(cluster, "aghjabadi-carpet-workshop", "carpet_weaving", 1)
    handle: Handle = await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=intake.survivor_id,
            case_worker_id="cw-07",
            loan=LoanRequest("fish_farming", 200_000, "fingerlings and feed"),
            assistance=[
                AssistancePlan(
                    "wheelchair", "baku-mobility-aids", chair_pool, 1, {"seat_width_cm": 44}
                ),
                AssistancePlan("carpet_weaving", "aghjabadi-carpet-workshop", looms, 1, {}),
            ],
        ),
        id=journey_workflow_id(intake.survivor_id),
        task_queue=TASK_QUEUE,
    )
    chair = client.get_workflow_handle(assistance_workflow_id(handle.id, "wheelchair"))
    for _ in range(200):  # until the wheelchair is requested
        status = await status_of(handle)
        if any(a.assistance_id for a in status.assistance):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"{name}: the wheelchair was never requested: {status}")
    await deliver_wheelchair(chair, "WC-REC-2")
    result = await write_journey_and_items(client, handle, (chair,), name, out)
    assert result.stage == "CLOSED_NOT_ELIGIBLE", result
    assert {a.type_id: a.state for a in result.assistance} == {
        "wheelchair": "followed_up",
        "carpet_weaving": "not_eligible",
    }, result


async def run_withdrawn(env: WorkflowEnvironment, cluster: Cluster, out: Recorded) -> None:
    """The application withdrawn through lending's API while the committee has it; the
    journey, told as the loan news relay tells it, closes as withdrawn."""
    client, name = env.client, "withdrawn"
    loan = LoanRequest("fish_farming", 200_000, "fingerlings and feed")
    handle = await in_committee_review(env, cluster, name, loan)
    loan_id = (await status_of(handle)).loan_id
    await cluster.lending.WithdrawLoan(
        lending_pb.WithdrawLoanRequest(
            request_id=request_id(), loan_id=loan_id, withdrawn_by="cw-07",
            reason="the survivor found work",
        )
    )  # fmt: skip
    await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    result = await write_journey_and_items(client, handle, (), name, out)
    assert result.stage == "CLOSED_WITHDRAWN", result


async def approved_fish_journey(
    env: WorkflowEnvironment,
    cluster: Cluster,
    name: str,
    policy: JourneyPolicy,
    fund_id: str = "",
) -> Handle:
    """Fingerlings at the approval, feed 30 days later (3,000 AZN), for a survivor
    registered for it; the committee's approval recorded."""
    sid = survivor_id(name)
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(sid)))
    plan = [
        TranchePlan(200_000, "1,000 fingerlings", "IN_KIND", 0),
        TranchePlan(100_000, "feed", "IN_KIND", 30),
    ]
    handle: Handle = await env.client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=sid,
            case_worker_id="cw-07",
            loan=LoanRequest("fish_farming", 300_000, f"{name} journey", plan, fund_id=fund_id),
            policy=policy,
        ),
        id=journey_workflow_id(sid),
        task_queue=TASK_QUEUE,
    )
    await skip_until(env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=timedelta(hours=1))
    await handle.execute_update(
        SurvivorJourneyWorkflow.record_committee_decision,
        CommitteeDecision(True, "cm-03", f"CM-REC-{name}"),
    )
    return handle


async def run_waited_for_the_fund(
    env: WorkflowEnvironment, cluster: Cluster, out: Recorded
) -> None:
    """Fingerlings, then feed 30 days later, from a fund with too little left for the
    feed: the feed waits (the case worker told, a try each day) until a repayment at the
    cashier's desk brings the money back; then the loan is repaid in full. No follow-ups
    (the journey's policy asks for none), so it completes (patches journey-waits-for-the-
    fund and journey-tranches-fit-the-loan)."""
    client, name = env.client, "waited_for_the_fund"
    fund_id = await open_fund(cluster, 250_000)
    handle = await approved_fish_journey(
        env, cluster, name, JourneyPolicy(follow_up_months=()), fund_id
    )
    status = await skip_until(
        env, handle, lambda s: s.waiting_for_funds_minor > 0, step=timedelta(days=1),
        limit=timedelta(days=40),
    )  # fmt: skip
    await env.sleep(timedelta(days=3))  # three more tries, refused
    loan_id = status.loan_id
    today = programme_date(await env.get_current_time())
    await cluster.lending.RecordRepayment(repayment(loan_id, 60_000, today))
    await skip_until(
        env, handle, lambda s: s.stage == "GRACE", step=timedelta(hours=6),
        limit=timedelta(days=2),
    )  # fmt: skip
    today = programme_date(await env.get_current_time())
    await cluster.lending.RecordRepayment(repayment(loan_id, 240_000, today))
    await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    result = await write_journey_and_items(client, handle, (), name, out)
    assert result.stage == "COMPLETED", result


async def run_taken_elsewhere(env: WorkflowEnvironment, cluster: Cluster, out: Recorded) -> None:
    """Steps taken outside the journey, at the services' own desks: the feed tranche paid
    out at lending before its day (the journey ends its plan, patch journey-tranches-paid-
    elsewhere), and the +6 month follow-up recorded at eligibility before the journey's
    own answers (counted, patch journey-follow-up-recorded-elsewhere). It completes."""
    client, name = env.client, "taken_elsewhere"
    handle = await approved_fish_journey(env, cluster, name, JourneyPolicy(follow_up_months=(6,)))
    status = await skip_until(
        env, handle, lambda s: s.outstanding_minor == 200_000, step=timedelta(minutes=10)
    )
    loan_id = status.loan_id
    today = programme_date(await env.get_current_time())
    await disburse(
        cluster.lending, loan_id, 100_000, today, "feed, bought early",
        kind=lending_pb.DISBURSEMENT_KIND_IN_KIND,
    )  # fmt: skip
    await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    await env.sleep(timedelta(days=31))  # past the feed's day
    today = programme_date(await env.get_current_time())
    await cluster.lending.RecordRepayment(repayment(loan_id, 300_000, today))
    await handle.signal(SurvivorJourneyWorkflow.loan_changed, LoanChanged(loan_id))
    await skip_until(
        env, handle, lambda s: s.follow_up_due == 6, step=timedelta(days=10),
        limit=timedelta(days=400),
    )  # fmt: skip
    today = programme_date(await env.get_current_time())
    await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor_id(name), loan_id, 6, today, recorded_by="cw-07")
    )
    await handle.execute_update(
        SurvivorJourneyWorkflow.record_follow_up, FollowUp(90_000, True, 3, "cw-07")
    )
    result = await write_journey_and_items(client, handle, (), name, out)
    assert (result.stage, result.follow_ups_recorded) == ("COMPLETED", [6]), result


async def run_need_refused(env: WorkflowEnvironment, cluster: Cluster, out: Recorded) -> None:
    """A plan of a type the assistance service does not have, started without the CLI's
    check: the need is refused, the item ends refused and the journey completes without
    it (patch assistance-need-refused)."""
    client, name = env.client, "need_refused"
    sid = survivor_id(name)
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(sid)))
    handle: Handle = await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=sid, case_worker_id="cw-07", assistance=[AssistancePlan("wheelchiar")]
        ),
        id=journey_workflow_id(sid),
        task_queue=TASK_QUEUE,
    )
    item = client.get_workflow_handle(assistance_workflow_id(handle.id, "wheelchiar"))
    result = await write_journey_and_items(client, handle, (item,), name, out)
    assert {a.type_id: a.state for a in result.assistance} == {"wheelchiar": "refused"}, result


async def main() -> None:
    import pgserver

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
        try:
            settings = load_settings(
                DATABASE_URL=str(server.get_uri()),
                MINEACTION_STATE_DIR=str(Path(tmp) / "state"),
                LOG_FORMAT="json",
                LOG_LEVEL="warning",
                SHUTDOWN_GRACE_SECONDS=1,
                METRICS_PORT=0,  # an in-process host; a running cluster may hold 9101-9104
                # The journeys repay, disburse and reschedule months ahead of the wall
                # clock under time skipping.
                LENDING_ACCEPT_FUTURE_DATES=True,
                ELIGIBILITY_ACCEPT_FUTURE_DATES=True,
            )
            configure_logging(settings, process="recorder")
            ensure_dev_credentials(settings)
            cluster = await start_services(settings)
            box = await open_outbox(settings)
            activities = JourneyActivities(
                cluster.address("eligibility"),
                cluster.address("lending"),
                cluster.address("assistance"),
                box,
                token=service_token(settings),
            )
            env = await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=str(BIN / "temporal-test-server")
            )
            await search_attributes.register(env.client, env.client.namespace)
            out = Recorded()
            # Histories recorded before a patched change (renamed "pre_<change>.<name>.json")
            # stay, so the replay test proves today's code still replays them.
            kept = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
            for old in HERE.glob("*.json"):
                if old.name != MANIFEST.name and not old.name.startswith("pre_"):
                    old.unlink()
            async with build_worker(env.client, activities, TASK_QUEUE):
                for name, scenario in SCENARIOS.items():
                    await run_scenario(env, cluster, name, scenario, out)
                await run_withdrawn(env, cluster, out)
                await run_waited_for_the_fund(env, cluster, out)
                await run_taken_elsewhere(env, cluster, out)
                # Last: once an item ends after its journey, the test server stops
                # skipping time.
                await run_assisted(env, cluster, out)
                await run_loan_refused(env, cluster, out)
                await run_need_refused(env, cluster, out)
            files = {
                name: entry
                for name, entry in kept.get("files", {}).items()
                if name.startswith("pre_") and (HERE / name).exists()
            }
            manifest = {"files": {**files, **out.files}, "events_per_run": out.events_per_run}
            MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            await env.shutdown()
            await activities.close()
            await box.db.close()
            await stop_services(cluster)
        finally:
            server.cleanup()
    print(f"recorded {len(out.files)} histories in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
