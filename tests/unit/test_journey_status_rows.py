"""What `journey status` and the borrower's reminder say of a loan in arrears: what is
overdue, not only the next instalment (a loan officer read "next instalment 250.00 AZN"
as all the borrower owed, eleven instalments behind)."""

from __future__ import annotations

from datetime import date

from rich.console import Console

from cli.render import assistance_item, journey_table
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from tests.factories import pdate
from workers.journey.activities import loan_snapshot_of
from workers.journey.model import AssistanceState, JourneyStatus
from workers.notifications.messages import render


def shown(status: JourneyStatus, lang: str) -> str:
    console = Console(width=200, record=True)
    console.print(journey_table(status, "journey-srv-1", "RUNNING", lang))
    return console.export_text()


def in_arrears(overdue_minor: int) -> JourneyStatus:
    return JourneyStatus(
        survivor_id="srv-1",
        stage="ARREARS_REVIEW",
        rule_set_version=1,
        assessment_id="asm-1",
        eligible_programmes=["startup_loan"],
        loan_id="loan-1",
        loan_status="ACTIVE",
        next_due_date="2026-12-15",
        next_due_minor=25_000,
        outstanding_minor=400_000,
        days_past_due=378,
        assistance=[],
        follow_ups_recorded=[],
        follow_up_due=0,
        overdue_minor=overdue_minor,
    )


def test_the_status_shows_what_is_overdue_in_both_languages() -> None:
    assert "Overdue" in (english := shown(in_arrears(275_000), "en"))
    assert "2,750.00 AZN" in english and "250.00 AZN" in english
    assert "Vaxtı keçmiş borc" in shown(in_arrears(275_000), "az")
    assert "Overdue" not in shown(in_arrears(0), "en")  # nothing overdue: no row


def test_the_reminder_of_a_borrower_in_arrears_says_what_is_overdue() -> None:
    params = {"amount_minor": 25_000, "due_date": "2026-12-15", "overdue_minor": 275_000}
    english = render("repayment_reminder_in_arrears", "en", params)
    assert "2,750.00" in english and "overdue" in english and "250.00" in english
    azerbaijani = render("repayment_reminder_in_arrears", "az", params)
    assert "vaxtı keçib" in azerbaijani and "15 dekabr 2026" in azerbaijani


def ledger_answer(days_past_due: int) -> lending_pb.GetLoanResponse:
    """A 3,000 AZN loan of three 1,000 AZN instalments due 10 Oct, 10 Nov and 10 Dec
    2026, nothing repaid."""
    answer = lending_pb.GetLoanResponse()
    loan = answer.loan
    loan.loan_id, loan.state = "loan-1", lending_pb.LOAN_STATE_ACTIVE
    loan.disbursed_minor = loan.outstanding_principal_minor = 300_000
    loan.days_past_due = days_past_due
    for month in (10, 11, 12):
        answer.schedule.instalments.add(
            due_date=pdate(date(2026, month, 10)), principal_due_minor=100_000
        )
    return answer


def test_overdue_is_what_fell_due_unpaid_once_the_loan_is_late() -> None:
    late = loan_snapshot_of(ledger_answer(days_past_due=41), date(2026, 11, 20))
    assert (late.overdue_minor, late.next_due_date) == (200_000, "2026-12-10")
    # On an instalment's own due date, nothing late before it: nothing overdue yet.
    due_today = loan_snapshot_of(ledger_answer(days_past_due=0), date(2026, 10, 10))
    assert (due_today.overdue_minor, due_today.next_due_date) == (0, "2026-11-10")


def test_a_refused_item_says_why_in_either_language() -> None:
    """The reason was only in the worker's log: the case worker read "refused"."""
    item = AssistanceState(
        "wheelchair", "need-1", "", "refused", True, refusal="QUANTITY_OVER_CAPACITY"
    )
    assert assistance_item(item, "en", None) == (
        "wheelchair: refused by the assistance service: QUANTITY_OVER_CAPACITY (finished)"
    )
    assert ": QUANTITY_OVER_CAPACITY" in assistance_item(item, "az", None)
