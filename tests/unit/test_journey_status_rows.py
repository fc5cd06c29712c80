"""What `journey status` and the borrower's reminder say of a loan in arrears: what is
overdue, not only the next instalment (a loan officer read "next instalment 250.00 AZN"
as all the borrower owed, eleven instalments behind)."""

from __future__ import annotations

from rich.console import Console

from cli.render import journey_table
from workers.journey.model import JourneyStatus
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
