"""A loan's statement (ListLoanTransactions) over gRPC against real PostgreSQL: every
ledger transaction on the loan by value date, with its postings, the principal
outstanding after it, and its reversal's link both ways."""

from __future__ import annotations

from datetime import date

import grpc
import pytest

from mineaction.lending.v1 import lending_service_pb2 as pb
from services.common.errors import reason_of, violations_in
from tests.conftest import Cluster
from tests.factories import pdate
from tests.lending_helpers import (
    approved_loan,
    disburse,
    field_violations,
    ledger_invariants,
    lending_db,
    open_fund,
    repayment,
    reversal,
    statement,
    write_off,
)

K = pb.LoanTransactionKind
A = pb.LedgerAccount


async def test_a_statement_shows_every_transaction_with_the_balance_after_it(
    cluster: Cluster,
) -> None:
    """The programme's fish farm: fish, then feed in kind; two payments, one bounced and
    reversed; the rest written off, then a recovery, itself reversed."""
    lending = cluster.lending
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        lending, fund_id=fund_id, product_id="fish_farming", amount_minor=500_000
    )
    lid = loan.loan_id
    await disburse(lending, lid, 300_000, date(2026, 1, 15), "1,000 fingerlings")
    await disburse(
        lending, lid, 200_000, date(2026, 3, 2), "feed", kind=pb.DISBURSEMENT_KIND_IN_KIND
    )
    # Recorded first, dated later: the statement goes by value date.
    later = await lending.RecordRepayment(repayment(lid, 40_000, date(2026, 9, 20)))
    bounced = await lending.RecordRepayment(repayment(lid, 60_000, date(2026, 9, 15)))
    undone = await lending.ReverseRepayment(reversal(lid, bounced.repayment.transaction_id))
    await write_off(lending, lid, date(2026, 10, 1), reason="the pond flooded")
    recovery = await lending.RecordRepayment(repayment(lid, 25_000, date(2026, 10, 20)))
    assert recovery.repayment.recovery
    await lending.ReverseRepayment(
        reversal(lid, recovery.repayment.transaction_id, "counted twice")
    )

    lines = await statement(lending, lid)
    assert [
        (t.kind, t.amount_minor, t.principal_change_minor, t.outstanding_after_minor) for t in lines
    ] == [
        (K.LOAN_TRANSACTION_KIND_DISBURSEMENT, 300_000, 300_000, 300_000),
        (K.LOAN_TRANSACTION_KIND_DISBURSEMENT, 200_000, 200_000, 500_000),
        # A bounced payment and its reversal cancel out: nothing was ever paid. The
        # reversal keeps the payment's value date and comes right after it.
        (K.LOAN_TRANSACTION_KIND_REPAYMENT, 60_000, -60_000, 500_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT_REVERSAL, 60_000, 60_000, 500_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT, 40_000, -40_000, 460_000),
        (K.LOAN_TRANSACTION_KIND_WRITE_OFF, 460_000, -460_000, 0),
        (K.LOAN_TRANSACTION_KIND_RECOVERY, 25_000, 0, 0),
        (K.LOAN_TRANSACTION_KIND_RECOVERY_REVERSAL, 25_000, 0, 0),
    ]
    assert [t.value_date for t in lines] == [
        pdate(d)
        for d in (
            date(2026, 1, 15),
            date(2026, 3, 2),
            date(2026, 9, 15),
            date(2026, 9, 15),
            date(2026, 9, 20),
            date(2026, 10, 1),
            date(2026, 10, 20),
            date(2026, 10, 20),
        )
    ]
    fish, feed, paid, reversed_, kept, wrote_off, recovered, unrecovered = lines
    # Double entry: each transaction's postings, debit positive, summing to zero.
    assert [(p.account, p.amount_minor) for p in fish.postings] == [
        (A.LEDGER_ACCOUNT_FUND_CASH, -300_000),
        (A.LEDGER_ACCOUNT_LOANS_RECEIVABLE, 300_000),
    ] or [(p.account, p.amount_minor) for p in fish.postings] == [
        (A.LEDGER_ACCOUNT_LOANS_RECEIVABLE, 300_000),
        (A.LEDGER_ACCOUNT_FUND_CASH, -300_000),
    ]
    assert {(p.account, p.amount_minor) for p in wrote_off.postings} == {
        (A.LEDGER_ACCOUNT_WRITE_OFF_EXPENSE, 460_000),
        (A.LEDGER_ACCOUNT_LOANS_RECEIVABLE, -460_000),
    }
    assert {(p.account, p.amount_minor) for p in recovered.postings} == {
        (A.LEDGER_ACCOUNT_FUND_CASH, 25_000),
        (A.LEDGER_ACCOUNT_RECOVERY_INCOME, -25_000),
    }
    assert all(sum(p.amount_minor for p in t.postings) == 0 for t in lines)
    # What each says, and who recorded it.
    assert (fish.memo, feed.memo) == ("tranche 1: 1,000 fingerlings", "tranche 2: feed")
    assert (paid.memo, paid.recorded_by) == ("cash", "cashier-01")
    assert (reversed_.memo, reversed_.recorded_by) == ("the transfer bounced", "acc-07")
    assert (wrote_off.memo, wrote_off.recorded_by) == ("the pond flooded", "pm-01")
    assert unrecovered.memo == "counted twice"
    # A reversal and what it cancels name each other; nothing else is linked.
    assert paid.transaction_id == bounced.repayment.transaction_id
    assert (paid.reversed_by_transaction_id, reversed_.reverses_transaction_id) == (
        undone.reversal_transaction_id,
        paid.transaction_id,
    )
    assert unrecovered.reverses_transaction_id == recovered.transaction_id
    assert recovered.reversed_by_transaction_id == unrecovered.transaction_id
    assert kept.transaction_id == later.repayment.transaction_id
    assert not (kept.reversed_by_transaction_id or kept.reverses_transaction_id)
    assert all(t.HasField("record_time") for t in lines)
    # The statement's last balance is the loan's, and the figures add up to it.
    read = await lending.GetLoan(pb.GetLoanRequest(loan_id=lid))
    assert read.loan.outstanding_principal_minor == lines[-1].outstanding_after_minor == 0
    assert read.loan.written_off_minor == wrote_off.amount_minor
    assert read.loan.recovered_minor == 0
    assert sum(t.principal_change_minor for t in lines) == 0


async def test_a_payment_that_bounces_after_the_write_off_is_written_off_with_the_loan(
    cluster: Cluster,
) -> None:
    """The cashier learns that a transfer bounced only after the loan was written off. The
    reversal was refused (LOAN_NOT_ACTIVE), and the fund kept counting money that never
    came. Now the payment is reversed and what it had repaid is written off with the
    loan, on the write-off's day: the loan stays closed, owing nothing."""
    lending = cluster.lending
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(lending, fund_id=fund_id, amount_minor=200_000)
    lid = loan.loan_id
    await disburse(lending, lid, 200_000, date(2026, 1, 15))
    bounced = await lending.RecordRepayment(repayment(lid, 30_000, date(2026, 3, 1)))
    await write_off(lending, lid, date(2026, 6, 1), reason="the shop burned down")
    recovery = await lending.RecordRepayment(repayment(lid, 5_000, date(2026, 6, 1)))
    assert recovery.repayment.recovery  # on the write-off's day

    undone = await lending.ReverseRepayment(
        reversal(lid, bounced.repayment.transaction_id, "the transfer bounced")
    )
    assert undone.write_off_transaction_id
    assert undone.loan.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
    read = (await lending.GetLoan(pb.GetLoanRequest(loan_id=lid))).loan
    assert read.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
    assert (read.repaid_principal_minor, read.written_off_minor) == (0, 200_000)
    assert (read.outstanding_principal_minor, read.recovered_minor) == (0, 5_000)
    fund = (await lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert (fund.repaid_principal_minor, fund.written_off_minor) == (0, 200_000)
    assert fund.available_minor == 1_000_000 - 200_000 + 5_000  # the 30,000 never came
    assert fund.outstanding_principal_minor == 0

    # The write-off and what it took in later read together, nothing owed after them;
    # the recovery of the same day comes after both. Page by page alike.
    lines = await statement(lending, lid)
    assert [(t.kind, t.amount_minor, t.outstanding_after_minor) for t in lines] == [
        (K.LOAN_TRANSACTION_KIND_DISBURSEMENT, 200_000, 200_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT, 30_000, 200_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT_REVERSAL, 30_000, 200_000),
        (K.LOAN_TRANSACTION_KIND_WRITE_OFF, 170_000, 0),
        (K.LOAN_TRANSACTION_KIND_WRITE_OFF, 30_000, 0),
        (K.LOAN_TRANSACTION_KIND_RECOVERY, 5_000, 0),
    ]
    assert await statement(lending, lid, page_size=2) == lines
    added = lines[4]
    assert added.transaction_id == undone.write_off_transaction_id
    assert added.value_date == pdate(date(2026, 6, 1))
    assert added.recorded_by == "acc-07"
    assert bounced.repayment.transaction_id in added.memo
    async with lending_db(cluster).pool.acquire() as conn:
        await ledger_invariants(conn)
        # The loan's history says who wrote the payment off with the loan, and why.
        event = await conn.fetchrow(
            """SELECT from_state, to_state, actor, note FROM loan_events
               WHERE loan_id = $1 ORDER BY event_id DESC LIMIT 1""",
            lid,
        )
    assert event is not None
    assert (event["from_state"], event["to_state"], event["actor"]) == (
        "CLOSED_WRITTEN_OFF",
        "CLOSED_WRITTEN_OFF",
        "acc-07",
    )
    assert event["note"].startswith("30000 qəpik (300.00 AZN) written off with the loan")
    assert "the transfer bounced" in event["note"]

    again = reversal(lid, bounced.repayment.transaction_id, "the transfer bounced")
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await lending.ReverseRepayment(again)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(twice.value) == "ALREADY_REVERSED"


async def test_a_statement_pages_and_refuses_what_it_cannot_answer(cluster: Cluster) -> None:
    lending = cluster.lending
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(lending, fund_id=fund_id, amount_minor=120_000)
    # Approved, nothing paid out yet: an empty statement, not an error.
    assert await statement(lending, loan.loan_id) == []
    await disburse(lending, loan.loan_id, 120_000, date(2026, 3, 10))
    for day in range(1, 6):
        await lending.RecordRepayment(repayment(loan.loan_id, 1_000 * day, date(2026, 5, day)))
    whole = await statement(lending, loan.loan_id)
    assert [t.outstanding_after_minor for t in whole] == [
        120_000,
        119_000,
        117_000,
        114_000,
        110_000,
        105_000,
    ]
    # Two at a time: the same lines, every page carrying the balance from the start.
    assert await statement(lending, loan.loan_id, page_size=2) == whole

    # A payment recorded while the pages are read, dated before the place reached, and a
    # reversal of a payment already shown: the later pages do not count them (they
    # counted them in their balances, and the statement did not add up); read from the
    # first page again, they are there.
    page = await lending.ListLoanTransactions(
        pb.ListLoanTransactionsRequest(loan_id=loan.loan_id, page_size=2)
    )
    late = await lending.RecordRepayment(repayment(loan.loan_id, 7_000, date(2026, 5, 1)))
    await lending.ReverseRepayment(reversal(loan.loan_id, whole[1].transaction_id))
    rest = []
    token = page.next_page_token
    while token:
        more = await lending.ListLoanTransactions(
            pb.ListLoanTransactionsRequest(loan_id=loan.loan_id, page_size=2, page_token=token)
        )
        rest.extend(more.transactions)
        token = more.next_page_token
    assert [*page.transactions, *rest] == whole
    again = await statement(lending, loan.loan_id, page_size=2)
    assert late.repayment.transaction_id in {t.transaction_id for t in again}
    assert again[-1].outstanding_after_minor == 105_000 - 7_000 + 1_000

    first = await lending.ListLoanTransactions(
        pb.ListLoanTransactionsRequest(loan_id=loan.loan_id, page_size=2)
    )
    other = await approved_loan(lending, fund_id=fund_id, amount_minor=120_000)
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await lending.ListLoanTransactions(
            pb.ListLoanTransactionsRequest(loan_id=other.loan_id, page_token=first.next_page_token)
        )
    assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in violations_in(foreign.value)] == [
        ("page_token", "PAGE_TOKEN_NOT_ISSUED")
    ]

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await lending.ListLoanTransactions(
            pb.ListLoanTransactionsRequest(loan_id="loan-nothing-like-it")
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "loan-nothing-like-it" in (unknown.value.details() or "")

    for bad, field in (
        (pb.ListLoanTransactionsRequest(), "loan_id"),
        (pb.ListLoanTransactionsRequest(loan_id="loan 1"), "loan_id"),
        (pb.ListLoanTransactionsRequest(loan_id=loan.loan_id, page_size=501), "page_size"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lending.ListLoanTransactions(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(refused.value) == [field]


async def test_reversed_payments_never_take_the_balance_below_zero_or_out_of_order(
    cluster: Cluster,
) -> None:
    """A closing payment reversed, then the loan repaid by a payment dated before it: the
    balance after each line stays what the borrower owed (counted, the reversed payment
    took it to -1,200.00 between the two). Two payments on one day, the first reversed:
    the reversal is listed with what it cancels, before the second."""
    lending = cluster.lending
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(lending, fund_id=fund_id, amount_minor=120_000)
    lid = loan.loan_id
    await disburse(lending, lid, 120_000, date(2026, 3, 10))
    closing = await lending.RecordRepayment(repayment(lid, 120_000, date(2026, 6, 10)))
    await lending.ReverseRepayment(reversal(lid, closing.repayment.transaction_id))
    earlier = await lending.RecordRepayment(repayment(lid, 100_000, date(2026, 6, 5)))
    assert earlier.loan.outstanding_principal_minor == 20_000
    lines = await statement(lending, lid)
    assert [(t.kind, t.value_date, t.outstanding_after_minor) for t in lines] == [
        (K.LOAN_TRANSACTION_KIND_DISBURSEMENT, pdate(date(2026, 3, 10)), 120_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT, pdate(date(2026, 6, 5)), 20_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT, pdate(date(2026, 6, 10)), 20_000),
        (K.LOAN_TRANSACTION_KIND_REPAYMENT_REVERSAL, pdate(date(2026, 6, 10)), 20_000),
    ]
    for day, owed in ((date(2026, 6, 5), 20_000), (date(2026, 6, 10), 20_000)):
        as_of = await lending.GetLoan(pb.GetLoanRequest(loan_id=lid, as_of=pdate(day)))
        assert as_of.loan.outstanding_principal_minor == owed

    first = await lending.RecordRepayment(repayment(lid, 1_000, date(2026, 7, 1)))
    second = await lending.RecordRepayment(repayment(lid, 2_000, date(2026, 7, 1)))
    undone = await lending.ReverseRepayment(reversal(lid, first.repayment.transaction_id))
    july = [t.transaction_id for t in await statement(lending, lid, page_size=1)][4:]
    assert july == [
        first.repayment.transaction_id,
        undone.reversal_transaction_id,
        second.repayment.transaction_id,
    ]


async def test_a_loan_closes_on_the_day_of_the_payments_that_stand(cluster: Cluster) -> None:
    """A payment of 10 March that bounced, then the loan repaid by one of 5 March: it
    closed on 5 March, by its figures as by the statement; the reversed pair's date is
    no closing (close_date said 10 March)."""
    lending = cluster.lending
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(lending, fund_id=fund_id, amount_minor=100_000)
    lid = loan.loan_id
    await disburse(lending, lid, 100_000, date(2026, 3, 1))
    bounced = await lending.RecordRepayment(repayment(lid, 50_000, date(2026, 3, 10)))
    await lending.ReverseRepayment(reversal(lid, bounced.repayment.transaction_id))
    closing = await lending.RecordRepayment(repayment(lid, 100_000, date(2026, 3, 5)))
    assert closing.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert closing.loan.close_date == pdate(date(2026, 3, 5))
    read = await lending.GetLoan(pb.GetLoanRequest(loan_id=lid))
    assert read.loan.close_date == pdate(date(2026, 3, 5))
    lines = await statement(lending, lid)
    assert [(t.value_date, t.outstanding_after_minor) for t in lines][1] == (
        pdate(date(2026, 3, 5)),
        0,
    )


async def test_a_bounced_payment_is_recorded_even_when_the_fund_lent_the_money_again(
    cluster: Cluster,
) -> None:
    """Repaid money lent again, then the repayment bounces: the bounce is a fact and is
    recorded; the fund statement shows the shortfall, and no tranche is paid out until
    money covers it."""
    lending = cluster.lending
    fund_id = await open_fund(cluster, 100_000)
    first = await approved_loan(lending, fund_id=fund_id, amount_minor=100_000)
    await disburse(lending, first.loan_id, 100_000, date(2026, 3, 1))
    paid = await lending.RecordRepayment(repayment(first.loan_id, 50_000, date(2026, 4, 1)))
    second = await approved_loan(lending, fund_id=fund_id, amount_minor=100_000)
    await disburse(lending, second.loan_id, 50_000, date(2026, 4, 2))
    await lending.ReverseRepayment(reversal(first.loan_id, paid.repayment.transaction_id))
    fund = (await lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.available_minor == -50_000
    assert fund.outstanding_principal_minor == 150_000
    third = await approved_loan(lending, fund_id=fund_id, amount_minor=100_000)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await disburse(lending, third.loan_id, 1_000, date(2026, 4, 3))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "INSUFFICIENT_FUNDS"
    assert "has -50000 qəpik available" in (refused.value.details() or "")


async def test_a_further_tranche_is_not_dated_before_a_payment_already_recorded(
    cluster: Cluster,
) -> None:
    """Feed recorded after the first payment but dated before it re-spread the instalments
    that payment was allocated to (its stored answer then said otherwise)."""
    lending = cluster.lending
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        lending, fund_id=fund_id, product_id="fish_farming", amount_minor=300_000
    )
    await disburse(lending, loan.loan_id, 200_000, date(2026, 1, 10))
    await lending.RecordRepayment(repayment(loan.loan_id, 20_000, date(2026, 4, 10)))
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await disburse(lending, loan.loan_id, 100_000, date(2026, 3, 1), "feed")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in violations_in(refused.value)] == [
        ("disbursement_date", "BEFORE_LATEST_TRANSACTION")
    ]
    assert await cluster.row_counts() == before
    fed = await disburse(lending, loan.loan_id, 100_000, date(2026, 4, 10), "feed")
    assert fed.loan.disbursed_minor == 300_000
