"""The programme's own case, end to end over gRPC: a fish farmer in Saatli restores a lake,
gets 1,000 fingerlings and then their feed as two in-kind tranches, has eight months of
grace until the harvest (450 fish sold), repays, and the fund gets its money back."""

from __future__ import annotations

from datetime import date

from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.type.v1 import sex_pb2
from tests.conftest import Cluster
from tests.factories import pdate
from tests.lending_helpers import approved_loan, disburse, open_fund, repayment

CAPITAL = 2_000_000  # 20,000 AZN


async def test_saatli_fish_farm_loan_from_application_to_closure(cluster: Cluster) -> None:
    lending = cluster.lending
    fund_id = await open_fund(cluster, CAPITAL)
    loan = await approved_loan(
        lending,
        fund_id=fund_id,
        product_id="fish_farming",
        amount_minor=500_000,
        district_code="saatli",
        sex=sex_pb2.SEX_MALE,
    )
    assert loan.state == pb.LOAN_STATE_APPROVED

    fish = await disburse(
        lending,
        loan.loan_id,
        300_000,
        date(2026, 3, 2),
        "1,000 young fish (fingerlings) for the restored lake",
        pb.DISBURSEMENT_KIND_IN_KIND,
    )
    assert fish.loan.state == pb.LOAN_STATE_ACTIVE
    assert fish.tranche.sequence == 1
    feed = await disburse(
        lending,
        loan.loan_id,
        200_000,
        date(2026, 4, 15),
        "fish feed for the growing season",
        pb.DISBURSEMENT_KIND_IN_KIND,
    )
    assert feed.tranche.sequence == 2
    assert feed.loan.disbursed_minor == 500_000
    assert [t.description for t in feed.loan.tranches] == [
        "1,000 young fish (fingerlings) for the restored lake",
        "fish feed for the growing season",
    ]
    fund = (await lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.available_minor == CAPITAL - 500_000
    assert fund.outstanding_principal_minor == 500_000

    # Eight months of grace from the first tranche: nothing falls due until December.
    schedule = (
        await lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 11, 30)))
        )
    ).schedule
    assert schedule.revision == 2  # the feed tranche re-spread the schedule
    dues = [date(i.due_date.year, i.due_date.month, i.due_date.day) for i in schedule.instalments]
    assert dues[0] == date(2026, 12, 2) and dues[-1] == date(2028, 3, 2)
    assert len(dues) == 16
    assert sum(i.principal_due_minor for i in schedule.instalments) == 500_000
    assert {i.state for i in schedule.instalments} == {pb.INSTALMENT_STATE_UPCOMING}

    # The harvest: 450 fish sold; the first instalment and a prepayment.
    first = await lending.RecordRepayment(repayment(loan.loan_id, 31_250, date(2026, 12, 2)))
    assert [(a.instalment_number, a.principal_minor) for a in first.repayment.allocations] == [
        (1, 31_250)
    ]
    prepaid = await lending.RecordRepayment(repayment(loan.loan_id, 200_000, date(2027, 1, 2)))
    # Oldest due first, then the following instalments in date order.
    allocated = [(a.instalment_number, a.principal_minor) for a in prepaid.repayment.allocations]
    assert allocated[0] == (2, 31_250)
    assert sum(a for _, a in allocated) == 200_000
    assert prepaid.loan.days_past_due == 0

    # A late instalment shows arrears, then the rest is repaid.
    late = await lending.GetLoan(
        pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(date(2027, 8, 20)))
    )
    assert late.loan.days_past_due > 0
    rest = late.loan.outstanding_principal_minor
    assert rest == 500_000 - 231_250
    closing = await lending.RecordRepayment(repayment(loan.loan_id, rest, date(2027, 8, 20)))
    assert closing.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert closing.loan.outstanding_principal_minor == 0
    assert closing.loan.repaid_principal_minor == 500_000

    fund = (await lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.available_minor == CAPITAL
    assert fund.disbursed_minor == 500_000
    assert fund.repaid_principal_minor == 500_000
    assert fund.outstanding_principal_minor == 0
    final = (
        await lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, as_of=pdate(date(2027, 8, 20)))
        )
    ).schedule
    assert {i.state for i in final.instalments} == {pb.INSTALMENT_STATE_PAID}
