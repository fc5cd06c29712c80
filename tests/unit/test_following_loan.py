"""A journey started to follow a loan picks up at the stage the loan is at: in grace
until its first instalment falls due, then in repayment."""

from __future__ import annotations

from datetime import date

from mineaction.lending.v1 import lending_service_pb2 as pb
from services.common.protoconv import proto_date
from workers.journey.activities import following_loan
from workers.journey.model import SurvivorProfile


def test_a_followed_loan_starts_in_grace_until_its_first_instalment_falls_due() -> None:
    answer = pb.GetLoanResponse(
        loan=pb.Loan(
            loan_id="loan-0001",
            state=pb.LOAN_STATE_ACTIVE,
            disbursed_minor=120_000,
            outstanding_principal_minor=120_000,
            tranches=[pb.Tranche(sequence=1, amount_minor=120_000)],
        ),
        schedule=pb.RepaymentSchedule(
            instalments=[
                pb.Instalment(number=1, due_date=proto_date(date(2026, 12, 10)),
                              principal_due_minor=60_000),
                pb.Instalment(number=2, due_date=proto_date(date(2027, 1, 10)),
                              principal_due_minor=60_000),
            ]
        ),
    )  # fmt: skip
    profile = SurvivorProfile("saatli", "az")
    for today, stage in (
        (date(2026, 12, 9), "GRACE"),
        (date(2026, 12, 10), "REPAYMENT"),
        (date(2027, 2, 1), "REPAYMENT"),
    ):
        resumed = following_loan(answer, profile, today)
        assert resumed.stage == stage, today
        assert resumed.loan is not None and resumed.loan.loan_id == "loan-0001"
        assert (resumed.tranches_disbursed, resumed.profile) == (1, profile)
