"""BorrowerWorkflow: a borrower who repays a loan according to a stated behaviour, through
the same payment-collection call the real collection service makes. It lets a demo, a
test or a programme simulation run months of repayments under time skipping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workers.journey.activities import JourneyActivities
    from workers.journey.model import CLOSED_LOAN_STATES, RepaymentInput, SnapshotInput
    from workers.journey.workflows import WorkflowDays, call_local, call_service


@dataclass(frozen=True)
class Behaviour:
    """How a borrower pays: `days_late` after each due date; `late_from`/`late_until`
    bound a late spell (instalment numbers, 1-based); payments stop after `stop_after`
    instalments (0: never stop)."""

    days_late: int = 0
    late_from: int = 0
    late_until: int = 0
    stop_after: int = 0


@dataclass(frozen=True)
class BorrowerInput:
    loan_id: str
    behaviour: Behaviour


@workflow.defn
class BorrowerWorkflow:
    @workflow.run
    async def run(self, borrower: BorrowerInput) -> int:
        """Returns how many payments were made."""
        paid = 0
        behaviour = borrower.behaviour
        # From this change on, the borrower's reads of the loan are local activities: each
        # runs inside the workflow task that needs it instead of costing a task of its own.
        read = call_local if workflow.patched("borrower-local-snapshots") else call_service
        # From this change on, the borrower counts days in Baku, as the journey and the
        # services do: the day before a loan's disbursement in Baku read it unpaid.
        days = WorkflowDays.since("borrower-programme-days")
        while True:
            today = days.today()
            snap = await read(
                JourneyActivities.loan_snapshot, SnapshotInput(borrower.loan_id, today.isoformat())
            )
            if snap.status in CLOSED_LOAN_STATES:
                return paid
            if snap.status == "APPROVED" and workflow.patched("borrower-waits-for-disbursement"):
                await workflow.sleep(timedelta(days=1))  # nothing to repay before the money
                continue
            if behaviour.stop_after and paid >= behaviour.stop_after:
                return paid
            if snap.overdue_minor > 0:
                due_amount, pay_on = snap.overdue_minor, today
            elif snap.next_due_date:
                number = paid + 1
                late = (
                    behaviour.days_late
                    if behaviour.late_from <= number <= (behaviour.late_until or 10**6)
                    and behaviour.days_late
                    else 0
                )
                due_amount = snap.next_due_minor
                pay_on = date.fromisoformat(snap.next_due_date) + timedelta(days=late)
            else:
                return paid
            wait = days.until(pay_on, time(hour=9))
            if wait:
                await workflow.sleep(wait)
            # Pay what is owed on the day, by then: arrears first, then the instalment.
            snap = await read(
                JourneyActivities.loan_snapshot,
                SnapshotInput(borrower.loan_id, days.today().isoformat()),
            )
            if snap.status in CLOSED_LOAN_STATES:
                return paid
            amount = snap.overdue_minor or due_amount
            await call_service(
                JourneyActivities.record_repayment,
                RepaymentInput(borrower.loan_id, amount, days.today().isoformat(), f"{paid + 1}"),
            )
            paid += 1
