"""The money paths over gRPC against real PostgreSQL: the ledger's database guarantees,
the fund reservation, idempotency under concurrency, bad input, arrears and pauses,
reschedules, reversals, write-offs with recoveries, and the portfolio report."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from fractions import Fraction
from typing import Any, cast

import asyncpg
import grpc
import pytest

from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import sex_pb2
from services.common import idempotency
from services.common.errors import reason_of, violations_in
from services.common.programme_time import programme_today
from services.lending import ledger
from services.lending.repayments import Outcome, Repayment, RepaymentGroups
from services.lending.schedule import build_schedule
from services.lending.service import SPEC as LENDING
from tests.conftest import Cluster
from tests.factories import new_id, pdate, request_id
from tests.lending_helpers import (
    active_loan,
    approved_loan,
    disburse,
    field_violations,
    ledger_invariants,
    lending_db,
    open_fund,
    pause,
    propose_write_off,
    repayment,
    reschedule,
    reversal,
    write_off,
)
from tests.locks import queued_behind

START = date(2026, 3, 10)  # small_trade: 12 months, 1 month grace; first due 2026-05-10


async def test_postings_refuse_update_delete_and_truncate(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    await active_loan(cluster, fund_id=fund_id)
    async with lending_db(cluster).pool.acquire() as conn:
        posting_id = await conn.fetchval(
            "SELECT max(posting_id) FROM postings WHERE fund_id = $1", fund_id
        )
        for statement in (
            "UPDATE postings SET amount_minor = amount_minor + 1 WHERE posting_id = $1",
            "DELETE FROM postings WHERE posting_id = $1",
            "UPDATE ledger_transactions SET value_date = value_date + 1 WHERE transaction_id = "
            "(SELECT transaction_id FROM postings WHERE posting_id = $1)",
        ):
            with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
                await conn.execute(statement, posting_id)
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("TRUNCATE postings CASCADE")
        assert await conn.fetchval("SELECT count(*) FROM postings WHERE fund_id = $1", fund_id) == 4


async def test_the_database_refuses_an_unbalanced_transaction(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    async with lending_db(cluster).pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO ledger_transactions (transaction_id, fund_id, kind, value_date,
                           recorded_by, loan_id) VALUES ('txn-lopsided', $1, 'CAPITAL',
                           '2026-01-01', 'test', NULL)""",
                    fund_id,
                )
                await conn.execute(
                    """INSERT INTO postings (transaction_id, fund_id, account, amount_minor, kind,
                           value_date)
                       VALUES ('txn-lopsided', $1, 'FUND_CASH', 100, 'CAPITAL', '2026-01-01'),
                              ('txn-lopsided', $1, 'FUND_CAPITAL', -99, 'CAPITAL', '2026-01-01')""",
                    fund_id,
                )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ledger_transactions WHERE transaction_id = 'txn-lopsided'"
            )
            == 0
        )
        await ledger_invariants(conn)


async def test_disbursement_beyond_the_fund_is_refused_and_writes_nothing(
    cluster: Cluster,
) -> None:
    fund_id = await open_fund(cluster, 150_000)
    first = await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=100_000)
    second = await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=100_000)
    await disburse(cluster.lending, first.loan_id, 100_000, START)
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await disburse(cluster.lending, second.loan_id, 100_000, START)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "INSUFFICIENT_FUNDS"
    assert await cluster.row_counts() == before
    fund = (await cluster.lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.available_minor == 50_000
    loan = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=second.loan_id))).loan
    assert loan.state == pb.LOAN_STATE_APPROVED


async def test_a_disbursement_dated_before_its_fund_was_committed_is_refused(
    cluster: Cluster,
) -> None:
    """The test funds are committed on 2025-01-01: a tranche dated 2015 (a slip of the
    year) names the day the fund got its money, and leaves the loan APPROVED."""
    fund_id = await open_fund(cluster, 150_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=100_000)
    slip = disburse(cluster.lending, loan.loan_id, 100_000, date(2015, 3, 10))
    await _refused_without_writes(
        cluster, slip, "disbursement_date", grpc.StatusCode.INVALID_ARGUMENT
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await disburse(cluster.lending, loan.loan_id, 100_000, date(2024, 12, 31))
    assert [v.reason for v in violations_in(refused.value)] == ["BEFORE_FUND_COMMITTED"]
    assert f"before fund {fund_id} was committed (2025-01-01)" in (refused.value.details() or "")
    still = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))).loan
    assert still.state == pb.LOAN_STATE_APPROVED
    paid_out = await disburse(cluster.lending, loan.loan_id, 100_000, date(2025, 1, 1))
    assert paid_out.loan.state == pb.LOAN_STATE_ACTIVE


async def test_nothing_changes_the_loan_while_a_write_off_is_proposed(cluster: Cluster) -> None:
    """A loan thought uncollectable: a tranche paid out then was written off with the
    rest at the confirmation, and a loan rescheduled then (its borrower given a new
    schedule) written off moments later."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="fish_farming", amount_minor=300_000
    )
    await disburse(cluster.lending, loan.loan_id, 200_000, date(2026, 1, 31))
    await propose_write_off(cluster.lending, loan.loan_id, date(2026, 2, 10))
    before = await cluster.row_counts()
    hospitalised = pause(loan.loan_id, date(2026, 2, 12), date(2026, 3, 12))
    attempts: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: disburse(cluster.lending, loan.loan_id, 100_000, date(2026, 2, 12)), "paying out"),
        (
            lambda: cluster.lending.RescheduleLoan(reschedule(loan.loan_id, date(2026, 2, 12), 18)),
            "rescheduling it",
        ),
        (lambda: cluster.lending.PauseDelinquency(hospitalised), "pausing its arrears"),
    ]
    for attempt, says in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attempt()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(refused.value) == "WRITE_OFF_PROPOSED"
        assert f"proposed by lo-07: withdraw it before {says}" in (refused.value.details() or "")
    assert await cluster.row_counts() == before
    await cluster.lending.WithdrawLoanWriteOff(
        pb.WithdrawLoanWriteOffRequest(
            request_id=request_id(), loan_id=loan.loan_id, reason="she paid", withdrawn_by="pm-02"
        )
    )
    paid = await disburse(cluster.lending, loan.loan_id, 100_000, date(2026, 2, 12))
    assert paid.loan.disbursed_minor == 300_000


async def test_concurrent_disbursements_never_overdraw_the_fund(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 250_000)
    loans = [
        await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=100_000)
        for _ in range(5)
    ]
    results = await asyncio.gather(
        *(disburse(cluster.lending, loan.loan_id, 100_000, START) for loan in loans),
        return_exceptions=True,
    )
    assert sum(1 for r in results if isinstance(r, pb.DisburseTrancheResponse)) == 2
    fund = (await cluster.lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.available_minor == 50_000


async def _queued_behind_the_loan(
    cluster: Cluster, loan_id: str, *calls: Awaitable[Any], waiting: int = 0
) -> list[Any]:
    lock = "SELECT 1 FROM loans WHERE loan_id = $1 FOR UPDATE"
    return await queued_behind(lending_db(cluster), lock, loan_id, *calls, waiting=waiting)


def _refusals(results: list[Any]) -> list[str]:
    return [
        reason
        for r in results
        if isinstance(r, grpc.aio.AioRpcError)
        for reason in ([v.reason for v in violations_in(r)] or [reason_of(r)])
    ]


async def test_two_tranches_at_once_never_pay_out_beyond_the_principal(cluster: Cluster) -> None:
    """Each call read the balances as they were before it waited for the loan: both
    tranches were paid out, 700,000 on a 500,000 loan."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="carpet_weaving", amount_minor=500_000
    )
    await disburse(cluster.lending, loan.loan_id, 100_000, date(2026, 1, 31))
    results = await _queued_behind_the_loan(
        cluster,
        loan.loan_id,
        disburse(cluster.lending, loan.loan_id, 300_000, date(2026, 2, 10)),
        disburse(cluster.lending, loan.loan_id, 300_000, date(2026, 2, 10)),
    )
    assert _refusals(results) == ["ABOVE_APPROVED_PRINCIPAL"], results
    after = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))).loan
    assert after.disbursed_minor == 400_000
    schedule = await cluster.lending.GetRepaymentSchedule(
        pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id)
    )
    assert sum(i.principal_due_minor for i in schedule.schedule.instalments) == 400_000


async def test_a_write_off_confirmed_as_a_payment_lands_writes_off_only_what_is_owed(
    cluster: Cluster,
) -> None:
    """The confirmation wrote off the whole 120,000 although 50,000 had just been paid:
    outstanding -50,000. Whichever comes first, the money adds up."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    await propose_write_off(cluster.lending, loan.loan_id, date(2026, 6, 1))
    confirm = pb.ConfirmLoanWriteOffRequest(
        request_id=request_id(), loan_id=loan.loan_id, confirmed_by="pm-01"
    )
    results = await _queued_behind_the_loan(
        cluster,
        loan.loan_id,
        cluster.lending.RecordRepayment(repayment(loan.loan_id, 50_000, date(2026, 6, 1))),
        cluster.lending.ConfirmLoanWriteOff(confirm),
    )
    assert _refusals(results) == [], results
    after = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))).loan
    assert after.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
    assert after.outstanding_principal_minor == 0
    # Paid before the write-off: 70,000 written off. Paid after: all of it written off,
    # and the payment a recovery.
    assert (after.repaid_principal_minor, after.written_off_minor, after.recovered_minor) in {
        (50_000, 70_000, 0),
        (0, 120_000, 50_000),
    }
    fund = (await cluster.lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.outstanding_principal_minor == 0
    async with lending_db(cluster).pool.acquire() as conn:
        await ledger_invariants(conn)


async def test_two_recoveries_at_once_never_recover_more_than_was_written_off(
    cluster: Cluster,
) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    await write_off(cluster.lending, loan.loan_id, date(2026, 6, 1))
    # Repayments reach the database in groups, one group at a time: one waits there.
    results = await _queued_behind_the_loan(
        cluster,
        loan.loan_id,
        cluster.lending.RecordRepayment(repayment(loan.loan_id, 70_000, date(2026, 6, 2))),
        cluster.lending.RecordRepayment(repayment(loan.loan_id, 70_000, date(2026, 6, 2))),
        waiting=1,
    )
    assert _refusals(results) == ["OVERPAYMENT"], results
    after = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))).loan
    assert (after.written_off_minor, after.recovered_minor) == (120_000, 70_000)


async def test_a_schedule_replaced_by_a_tranche_shows_what_was_paid_against_it(
    cluster: Cluster,
) -> None:
    """Revision 1 showed nothing paid once the second tranche replaced it, although the
    repayment's own answer had allocated 50,000 to it."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="fish_farming", amount_minor=500_000
    )
    await disburse(cluster.lending, loan.loan_id, 300_000, date(2026, 1, 31))
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 50_000, date(2026, 2, 15)))
    allocated = {a.instalment_number: a.principal_minor for a in paid.repayment.allocations}
    await disburse(cluster.lending, loan.loan_id, 200_000, date(2026, 3, 1))
    first = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, revision=1)
        )
    ).schedule
    shown = {i.number: i.principal_paid_minor for i in first.instalments if i.principal_paid_minor}
    assert shown == allocated and sum(shown.values()) == 50_000
    # The schedule in force now counts it too: the loan's figures and its schedule agree.
    now = await cluster.lending.GetLoan(
        pb.GetLoanRequest(loan_id=loan.loan_id, include_schedule=True)
    )
    assert sum(i.principal_paid_minor for i in now.schedule.instalments) == 50_000
    assert now.loan.repaid_principal_minor == 50_000

    # The payment bounces. The answer shows the loan with both tranches (the reversal
    # carries the payment's date, before the second), and revision 1 still reads as it
    # stood when it was replaced: the reversal was recorded after.
    reversed_ = await cluster.lending.ReverseRepayment(
        reversal(loan.loan_id, paid.repayment.transaction_id)
    )
    assert reversed_.loan.figures_as_of == pdate(date(2026, 3, 1))
    assert (reversed_.loan.disbursed_minor, reversed_.loan.outstanding_principal_minor) == (
        500_000,
        500_000,
    )
    after = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, revision=1)
        )
    ).schedule
    assert after == first


async def test_a_schedule_replaced_before_revisions_kept_their_last_posting_reads_the_same(
    cluster: Cluster,
) -> None:
    """A revision made before migration 024 keeps no postings_until: the one it replaced
    is read up to its last_posting_id (the same, for a tranche's or a reschedule's), and a
    payment reversed since still shows paid there, as it did before the migration."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="fish_farming", amount_minor=500_000
    )
    await disburse(cluster.lending, loan.loan_id, 300_000, date(2026, 1, 31))
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 50_000, date(2026, 2, 15)))
    await disburse(cluster.lending, loan.loan_id, 200_000, date(2026, 3, 1))
    async with lending_db(cluster).pool.acquire() as conn, conn.transaction():
        # As a revision made before the migration was: without postings_until.
        await conn.execute(
            "ALTER TABLE schedule_revisions DISABLE TRIGGER schedule_revisions_append_only"
        )
        await conn.execute(
            "UPDATE schedule_revisions SET postings_until = NULL WHERE loan_id = $1",
            loan.loan_id,
        )
        await conn.execute(
            "ALTER TABLE schedule_revisions ENABLE TRIGGER schedule_revisions_append_only"
        )
    await cluster.lending.ReverseRepayment(reversal(loan.loan_id, paid.repayment.transaction_id))
    first = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, revision=1)
        )
    ).schedule
    assert sum(i.principal_paid_minor for i in first.instalments) == 50_000


async def test_no_tranche_is_paid_out_once_the_loan_was_repaid_in_full(cluster: Cluster) -> None:
    """The principal not disbursed lapses when the loan is repaid in full; a reversal that
    reopened the loan let a further tranche be paid out of the fund all the same."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="fish_farming", amount_minor=500_000
    )
    await disburse(cluster.lending, loan.loan_id, 300_000, date(2026, 1, 31))
    paid = await cluster.lending.RecordRepayment(
        repayment(loan.loan_id, 300_000, date(2026, 2, 15))
    )
    assert paid.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    await cluster.lending.ReverseRepayment(reversal(loan.loan_id, paid.repayment.transaction_id))
    later = disburse(
        cluster.lending,
        loan.loan_id,
        200_000,
        date(2026, 3, 1),
        "feed",
        pb.DISBURSEMENT_KIND_IN_KIND,
    )
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await later
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "TRANCHE_LAPSED"
    assert await cluster.row_counts() == before


async def test_a_payment_dated_before_the_schedule_was_rebuilt_is_refused(
    cluster: Cluster,
) -> None:
    """Recorded after a later tranche (or a reschedule) but dated before it, a payment
    counted against a schedule that did not include it: 450,000 paid on 300,000 as the
    loan stood that day (outstanding -150,000 as of the payment)."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="fish_farming", amount_minor=500_000
    )
    await disburse(cluster.lending, loan.loan_id, 300_000, date(2026, 1, 31))
    await disburse(cluster.lending, loan.loan_id, 200_000, date(2026, 3, 1))
    early = cluster.lending.RecordRepayment(repayment(loan.loan_id, 450_000, date(2026, 2, 15)))
    await _refused_without_writes(cluster, early, "payment_date", grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.lending.RecordRepayment(repayment(loan.loan_id, 1_000, date(2026, 2, 28)))
    assert [v.reason for v in violations_in(refused.value)] == ["BEFORE_SCHEDULE_REVISION"]
    assert "must not be before 2026-03-01, when the loan's schedule was rebuilt (tranche 2 " in (
        refused.value.details() or ""
    )
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 450_000, date(2026, 3, 1)))
    assert paid.loan.outstanding_principal_minor == 50_000

    # The same after a reschedule: the loan's figures and its schedule told two stories.
    rescheduled = await active_loan(cluster, fund_id=fund_id)
    await cluster.lending.RescheduleLoan(
        reschedule(rescheduled.loan_id, date(2026, 8, 1), 12, reason="a flood took half the stock")
    )
    with pytest.raises(grpc.aio.AioRpcError) as before_it:
        await cluster.lending.RecordRepayment(
            repayment(rescheduled.loan_id, 40_000, date(2026, 5, 9))
        )
    assert "when the loan's schedule was rebuilt (rescheduled: a flood took half the stock)" in (
        before_it.value.details() or ""
    )
    # A second reschedule dated before the first: the first would never be in force.
    back = cluster.lending.RescheduleLoan(reschedule(rescheduled.loan_id, date(2026, 7, 1), 18))
    await _refused_without_writes(cluster, back, "effective_date", grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.aio.AioRpcError) as back_again:
        await cluster.lending.RescheduleLoan(reschedule(rescheduled.loan_id, date(2026, 7, 1), 18))
    assert [v.reason for v in violations_in(back_again.value)] == ["BEFORE_SCHEDULE_REVISION"]


async def test_fifty_concurrent_duplicates_have_exactly_one_effect(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    request = repayment(loan.loan_id, 10_000, date(2026, 5, 10))
    responses = await asyncio.gather(*(cluster.lending.RecordRepayment(request) for _ in range(50)))
    assert len({r.repayment.transaction_id for r in responses}) == 1
    assert len({r.SerializeToString(deterministic=True) for r in responses}) == 1
    async with lending_db(cluster).pool.acquire() as conn:
        repayments = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE loan_id = $1 AND kind = 'REPAYMENT'",
            loan.loan_id,
        )
    assert repayments == 1
    # The same request id in capitals is the same request (a UUID's case means nothing):
    # the first answer again, no second payment.
    shouted = pb.RecordRepaymentRequest()
    shouted.CopyFrom(request)
    shouted.request_id = request.request_id.upper()
    assert await cluster.lending.RecordRepayment(shouted) == responses[0]
    after = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))).loan
    assert after.repaid_principal_minor == 10_000

    changed = pb.RecordRepaymentRequest()
    changed.CopyFrom(request)
    changed.amount_minor = 20_000
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await cluster.lending.RecordRepayment(changed)
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def _refused_without_writes(
    cluster: Cluster, call: object, field: str, code: grpc.StatusCode
) -> None:
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    assert refused.value.code() == code, refused.value.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert field in field_violations(refused.value)
    assert await cluster.row_counts() == before


async def test_bad_input_is_invalid_argument_with_field_violations_and_writes_nothing(
    cluster: Cluster,
) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    lending = cluster.lending
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    for amount in (0, -500):
        await _refused_without_writes(
            cluster,
            lending.RecordRepayment(repayment(loan.loan_id, amount, date(2026, 5, 10))),
            "amount_minor",
            invalid,
        )
    # A reversal of a transaction the loan does not have: which one, and why.
    unknown = reversal(loan.loan_id, "txn-nothing-like-it", "typo")
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as no_such:
        await lending.ReverseRepayment(unknown)
    assert [(v.field, v.reason) for v in violations_in(no_such.value)] == [
        ("transaction_id", "TRANSACTION_NOT_FOUND")
    ]
    assert await cluster.row_counts() == before
    # An actor of only spaces names nobody (a service relaying may name others).
    nobody = repayment(loan.loan_id, 1_000, date(2026, 5, 10))
    nobody.received_by = "   "
    await _refused_without_writes(cluster, lending.RecordRepayment(nobody), "received_by", invalid)
    proposal = pb.ProposeLoanWriteOffRequest(
        request_id=request_id(),
        loan_id=loan.loan_id,
        reason="no contact",
        proposed_by=" ",
        write_off_date=pdate(date(2026, 9, 1)),
    )
    await _refused_without_writes(
        cluster, lending.ProposeLoanWriteOff(proposal), "proposed_by", invalid
    )
    application = pb.SubmitLoanApplicationRequest(
        request_id=request_id(),
        survivor_id=new_id("srv"),
        product_id="small_trade",
        amount_minor=400_001,  # the product's maximum is 400,000
        currency_code="AZN",
        district_code="saatli",
        borrower_sex=sex_pb2.SEX_FEMALE,
        borrower_age_band=2,  # type: ignore[arg-type]
        submitted_by="cw-01",
        fund_id=fund_id,
    )
    await _refused_without_writes(
        cluster, lending.SubmitLoanApplication(application), "amount_minor", invalid
    )
    application.amount_minor, application.product_id = 100_000, "camel_breeding"
    await _refused_without_writes(
        cluster, lending.SubmitLoanApplication(application), "product_id", invalid
    )
    # A district the eligibility service would refuse for the survivor's intake.
    application.product_id, application.district_code = "small_trade", "saatly"
    await _refused_without_writes(
        cluster, lending.SubmitLoanApplication(application), "district_code", invalid
    )
    await _refused_without_writes(
        cluster,
        lending.RecordRepayment(repayment("loan-nonexistent", 1_000, date(2026, 5, 10))),
        "loan_id",
        invalid,
    )
    await _refused_without_writes(
        cluster,
        lending.ApproveLoan(
            pb.ApproveLoanRequest(
                request_id=request_id(),
                loan_id="loan-nonexistent",
                approved_by="cm-02",
                committee_decision_ref="CM-1",
            )
        ),
        "loan_id",
        invalid,
    )
    in_dollars = repayment(loan.loan_id, 1_000, date(2026, 5, 10))
    in_dollars.currency_code = "USD"
    await _refused_without_writes(
        cluster, lending.RecordRepayment(in_dollars), "currency_code", invalid
    )
    await _refused_without_writes(
        cluster,
        lending.RecordRepayment(repayment(loan.loan_id, 1_000, date(2026, 3, 9))),
        "payment_date",
        invalid,
    )
    await _refused_without_writes(
        cluster,
        lending.RecordRepayment(repayment(loan.loan_id, 120_001, date(2026, 5, 10))),
        "amount_minor",
        invalid,
    )
    blank_reason = pause(loan.loan_id, date(2026, 5, 10), date(2026, 6, 10), reason="   ")
    await _refused_without_writes(
        cluster, lending.PauseDelinquency(blank_reason), "reason", invalid
    )
    impossible = repayment(loan.loan_id, 1_000, date(2026, 5, 10))
    impossible.payment_date.day = 31
    impossible.payment_date.month = 2
    await _refused_without_writes(
        cluster, lending.RecordRepayment(impossible), "payment_date", invalid
    )
    # Illegal transitions are FAILED_PRECONDITION and change nothing either.
    submitted = await lending.SubmitLoanApplication(
        pb.SubmitLoanApplicationRequest(
            request_id=request_id(),
            survivor_id=new_id("srv"),
            product_id="small_trade",
            amount_minor=100_000,
            currency_code="AZN",
            district_code="saatli",
            borrower_sex=sex_pb2.SEX_FEMALE,
            borrower_age_band=2,  # type: ignore[arg-type]
            submitted_by="cw-01",
            fund_id=fund_id,
        )
    )
    await _refused_without_writes(
        cluster,
        disburse(lending, submitted.loan.loan_id, 100_000, START),
        "",
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    withdrawn = await lending.WithdrawLoan(
        pb.WithdrawLoanRequest(
            request_id=request_id(),
            loan_id=submitted.loan.loan_id,
            withdrawn_by="cw-01",
            reason="the applicant found seasonal work",
        )
    )
    assert withdrawn.loan.state == pb.LOAN_STATE_WITHDRAWN
    await _refused_without_writes(
        cluster,
        lending.ApproveLoan(
            pb.ApproveLoanRequest(
                request_id=request_id(),
                loan_id=submitted.loan.loan_id,
                approved_by="cm-02",
                committee_decision_ref="CM-1",
            )
        ),
        "",
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_arrears_grow_then_pause_and_the_pause_cannot_be_deleted(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)

    async def dpd(on: date) -> int:
        got = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(on))
        )
        return got.loan.days_past_due

    assert await dpd(date(2026, 5, 10)) == 0  # first instalment due today: not yet late
    assert await dpd(date(2026, 6, 9)) == 30
    assert await dpd(date(2026, 6, 10)) == 31
    paused = await cluster.lending.PauseDelinquency(
        pb.PauseDelinquencyRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            start_date=pdate(date(2026, 6, 11)),
            end_date=pdate(date(2026, 7, 10)),
            reason="hospitalised: prosthesis surgery",
            requested_by="cw-01",
        )
    )
    assert paused.loan.days_past_due == 31
    assert await dpd(date(2026, 7, 1)) == 31  # frozen during the pause
    assert await dpd(date(2026, 7, 10)) == 31
    assert await dpd(date(2026, 7, 11)) == 32  # and grows again after it
    schedule = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 7, 11)))
        )
    ).schedule
    assert max(i.days_past_due for i in schedule.instalments) == 32  # same rule as GetLoan
    assert schedule.instalments[0].state == pb.INSTALMENT_STATE_OVERDUE
    got = await cluster.lending.GetLoan(
        pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 7, 11)))
    )
    assert got.loan.bucket == pb.DELINQUENCY_BUCKET_31_60

    async with lending_db(cluster).pool.acquire() as conn:
        for statement in (
            "DELETE FROM delinquency_pauses WHERE loan_id = $1",
            "UPDATE delinquency_pauses SET end_date = end_date + 30 WHERE loan_id = $1",
        ):
            with pytest.raises(asyncpg.RestrictViolationError):
                await conn.execute(statement, loan.loan_id)

    # A pause of one day ends the day it starts: that day counts, the next does not.
    await cluster.lending.PauseDelinquency(
        pb.PauseDelinquencyRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            start_date=pdate(date(2026, 7, 12)),
            end_date=pdate(date(2026, 7, 12)),
            reason="a day at the district hospital",
            requested_by="cw-01",
        )
    )
    assert await dpd(date(2026, 7, 12)) == 32
    assert await dpd(date(2026, 7, 13)) == 33
    ends_before = pb.PauseDelinquencyRequest(
        request_id=request_id(),
        loan_id=loan.loan_id,
        start_date=pdate(date(2026, 7, 20)),
        end_date=pdate(date(2026, 7, 19)),
        reason="typed the dates the wrong way round",
        requested_by="cw-01",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.lending.PauseDelinquency(ends_before)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must not be before start_date" in (refused.value.details() or "")

    no_reason = pb.PauseDelinquencyRequest(
        request_id=request_id(),
        loan_id=loan.loan_id,
        start_date=pdate(date(2026, 8, 1)),
        end_date=pdate(date(2027, 9, 1)),  # longer than a year
        reason="",
        requested_by="cw-01",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.lending.PauseDelinquency(no_reason)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason" in field_violations(refused.value)


async def test_reschedule_rebuilds_the_rest_and_keeps_the_old_schedule(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 10_000, date(2026, 5, 10)))
    rescheduled = await cluster.lending.RescheduleLoan(
        reschedule(loan.loan_id, date(2026, 8, 31), 18, additional_grace_months=2)
    )
    assert rescheduled.loan.state == pb.LOAN_STATE_ACTIVE
    assert rescheduled.loan.days_past_due == 0  # arrears cured by the new schedule
    new = rescheduled.schedule
    assert new.revision == 2 and new.base_repaid_minor == 10_000
    assert sum(i.principal_due_minor for i in new.instalments) == 110_000
    assert len(new.instalments) == 16
    first_due = new.instalments[0].due_date
    assert (first_due.year, first_due.month, first_due.day) == (2026, 11, 30)
    old = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, revision=1)
        )
    ).schedule
    assert old.reason == "initial" and len(old.instalments) == 11
    # Readable as it stood when it was replaced: the first instalment short and late.
    first = old.instalments[0]
    assert first.state == pb.INSTALMENT_STATE_OVERDUE and first.principal_paid_minor == 10_000
    assert first.days_past_due == (date(2026, 8, 31) - date(2026, 5, 10)).days
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 6_875, date(2026, 11, 30)))
    assert [(a.instalment_number, a.principal_minor) for a in paid.repayment.allocations] == [
        (1, 6_875)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as backdated:
        await cluster.lending.RescheduleLoan(
            reschedule(loan.loan_id, date(2026, 3, 1), 6, reason="again")
        )
    assert backdated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(backdated.value) == ["effective_date"]
    # A repayment recorded after the reschedule, dated its very day, is the new schedule's:
    # the old one still stands as it was replaced.
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 2_000, date(2026, 8, 31)))
    still = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, revision=1)
        )
    ).schedule
    assert still.instalments == old.instalments
    # A repayment made since the reschedule is reversed as any other: the schedule is
    # left as it is (a payment made before it: the next test).
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 5_000, date(2026, 11, 30)))
    reversed_since = await cluster.lending.ReverseRepayment(
        reversal(loan.loan_id, paid.repayment.transaction_id, "bounced")
    )
    assert reversed_since.loan.repaid_principal_minor == 10_000 + 2_000 + 5_000
    assert reversed_since.schedule_revision == 0
    # As of a date, the loan comes with the schedule in force then; none before the loan
    # was disbursed (10 March).
    for day, revision in ((date(2026, 8, 30), 1), (date(2026, 8, 31), 2), (date(2026, 3, 9), 0)):
        answer = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(day), include_schedule=True)
        )
        assert answer.schedule.revision == revision, day
        assert answer.HasField("schedule") == bool(revision), day
        # In a delinquency bucket only while principal is outstanding: not the day before
        # its first tranche, when the portfolio report leaves it out too.
        assert (answer.loan.bucket != pb.DELINQUENCY_BUCKET_UNSPECIFIED) == bool(revision), day


async def test_a_payment_the_rescheduled_loan_counted_bounces_and_is_owed_again(
    cluster: Cluster,
) -> None:
    """A transfer made before the reschedule bounces after it: the rescheduled schedule
    counted it as paid. Reversed, it is owed again: a new revision from the reschedule's
    day, its base less the amount and the amount spread over its instalments; the
    schedule replaced stays readable, and the money adds up."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    bounced = await cluster.lending.RecordRepayment(
        repayment(loan.loan_id, 10_000, date(2026, 5, 10))
    )
    await cluster.lending.RescheduleLoan(
        reschedule(loan.loan_id, date(2026, 8, 31), 18, additional_grace_months=2)
    )
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 7_000, date(2026, 11, 30)))
    rescheduled = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 11, 30)))
        )
    ).schedule
    assert (rescheduled.revision, rescheduled.base_repaid_minor) == (2, 10_000)
    assert sum(i.principal_paid_minor for i in rescheduled.instalments) == 7_000

    reversed_ = await cluster.lending.ReverseRepayment(
        reversal(loan.loan_id, bounced.repayment.transaction_id, "the transfer bounced")
    )
    assert reversed_.schedule_revision == 3
    now = await cluster.lending.GetLoan(
        pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 11, 30)))
    )
    assert now.loan.repaid_principal_minor == 7_000
    assert now.loan.outstanding_principal_minor == 120_000 - 7_000
    owed = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 11, 30)))
        )
    ).schedule
    assert (owed.revision, owed.base_repaid_minor) == (3, 0)
    assert owed.effective_date == rescheduled.effective_date
    assert sum(i.principal_due_minor for i in owed.instalments) == 120_000
    assert [i.due_date for i in owed.instalments] == [i.due_date for i in rescheduled.instalments]
    for before, after in zip(rescheduled.instalments, owed.instalments, strict=True):
        # Spread as the reschedule would have spread it: grace months still owe nothing.
        assert (after.principal_due_minor == 0) == (before.principal_due_minor == 0)
        assert after.principal_due_minor >= before.principal_due_minor
    # What was paid since goes to the oldest instalment due, as always.
    assert owed.instalments[0].principal_paid_minor == 7_000
    assert owed.instalments[0].principal_paid_minor < owed.instalments[0].principal_due_minor
    # The schedule replaced reads as it stood just before the payment bounced: the
    # 7,000 paid since the reschedule against its first instalment.
    replaced = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(
                loan_id=loan.loan_id, revision=2, as_of=pdate(date(2026, 11, 30))
            )
        )
    ).schedule
    assert replaced.instalments == rescheduled.instalments
    # In force from the reschedule's day; before it the first schedule, which never
    # counted the payment.
    for day, revision in ((date(2026, 8, 30), 1), (date(2026, 8, 31), 3)):
        answer = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(day), include_schedule=True)
        )
        assert answer.schedule.revision == revision, day
    fund = (await cluster.lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.repaid_principal_minor == 7_000
    assert fund.outstanding_principal_minor == 113_000
    # Paid in full now, the loan closes on what it owes, the bounced amount included.
    closed = await cluster.lending.RecordRepayment(
        repayment(loan.loan_id, 113_000, date(2026, 11, 30))
    )
    assert closed.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    async with lending_db(cluster).pool.acquire() as conn:
        await ledger_invariants(conn)


async def test_a_payment_two_reschedules_counted_bounces_and_each_schedule_owes_it(
    cluster: Cluster,
) -> None:
    """Each schedule in force since the payment owes it again, from its own day; a
    payment made after the reschedules is reversed as any other; and a further tranche
    is still refused after a reschedule, owed-again revisions or not."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="business_expansion", amount_minor=400_000
    )
    loan_id = loan.loan_id
    await disburse(cluster.lending, loan_id, 200_000, date(2026, 3, 10))
    bounced = await cluster.lending.RecordRepayment(repayment(loan_id, 10_000, date(2026, 3, 20)))
    await cluster.lending.RescheduleLoan(
        reschedule(loan_id, date(2026, 3, 25), 12, additional_grace_months=3)
    )
    await cluster.lending.RecordRepayment(repayment(loan_id, 5_000, date(2026, 7, 1)))
    await cluster.lending.RescheduleLoan(
        reschedule(loan_id, date(2026, 8, 1), 10, additional_grace_months=3)
    )
    later = await cluster.lending.RecordRepayment(repayment(loan_id, 3_000, date(2026, 9, 1)))

    reversed_ = await cluster.lending.ReverseRepayment(
        reversal(loan_id, bounced.repayment.transaction_id, "bounced")
    )
    assert reversed_.schedule_revision == 5  # revisions 2 and 3 owe it again as 4 and 5
    for day, revision, base in (
        (date(2026, 3, 24), 1, 0),
        (date(2026, 7, 15), 4, 0),
        (date(2026, 8, 15), 5, 5_000),
    ):
        answer = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan_id, as_of=pdate(day), include_schedule=True)
        )
        schedule = answer.schedule
        assert (schedule.revision, schedule.base_repaid_minor) == (revision, base), day
        assert base + sum(i.principal_due_minor for i in schedule.instalments) == 200_000, day
        # A schedule owing it again shows paid what the loan says was repaid (revision 4,
        # replaced by the copy of 3 made with the reversal, showed the bounced payment paid
        # too); revision 1 reads as it stood when the reschedule replaced it, paid.
        paid = sum(i.principal_paid_minor for i in schedule.instalments)
        repaid = answer.loan.repaid_principal_minor + (10_000 if revision == 1 else 0)
        assert base + paid == repaid, (day, paid)
    # Made after both reschedules: neither counted it, and none is replaced.
    since = await cluster.lending.ReverseRepayment(
        reversal(loan_id, later.repayment.transaction_id, "bounced too")
    )
    assert since.schedule_revision == 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # before the first instalment
        await disburse(cluster.lending, loan_id, 100_000, date(2026, 9, 2))
    assert reason_of(refused.value) == "TRANCHE_AFTER_REPAYMENT_START"
    async with lending_db(cluster).pool.acquire() as conn:
        await ledger_invariants(conn)


async def test_reversal_corrects_a_repayment_and_reopens_a_repaid_loan(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    full = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 120_000, date(2026, 6, 1)))
    assert full.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert full.loan.close_date == pdate(date(2026, 6, 1))
    read = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
    assert read.loan.close_date == pdate(date(2026, 6, 1))
    reverse = pb.ReverseRepaymentRequest(
        request_id=request_id(),
        loan_id=loan.loan_id,
        transaction_id=full.repayment.transaction_id,
        reason="the bank transfer bounced",
        reversed_by="acc-07",
    )
    reversed_ = await cluster.lending.ReverseRepayment(reverse)
    assert reversed_.loan.state == pb.LOAN_STATE_ACTIVE
    assert reversed_.loan.outstanding_principal_minor == 120_000
    assert not reversed_.loan.HasField("close_date")  # open again
    again = pb.ReverseRepaymentRequest()
    again.CopyFrom(reverse)
    again.request_id = request_id()
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await cluster.lending.ReverseRepayment(again)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    fund = (await cluster.lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert fund.available_minor == 1_000_000 - 120_000
    assert fund.repaid_principal_minor == 0
    async with lending_db(cluster).pool.acquire() as conn:
        kinds = await conn.fetch(
            "SELECT kind FROM ledger_transactions WHERE loan_id = $1 ORDER BY created_at",
            loan.loan_id,
        )
        await ledger_invariants(conn)
    assert [k["kind"] for k in kinds] == ["DISBURSEMENT", "REPAYMENT", "REPAYMENT_REVERSAL"]
    # Repaid again, in two payments, the second recorded dated before the first: the loan
    # closed as of the later date, from which its balance is zero.
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 100_000, date(2026, 7, 20)))
    last = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 20_000, date(2026, 7, 2)))
    assert last.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert last.loan.close_date == pdate(date(2026, 7, 20))
    for as_of, outstanding in ((date(2026, 7, 19), 100_000), (date(2026, 7, 20), 0)):
        read = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(as_of))
        )
        assert read.loan.close_date == pdate(date(2026, 7, 20))
        assert read.loan.outstanding_principal_minor == outstanding


async def test_write_off_needs_two_people_and_recoveries_return_to_the_fund(
    cluster: Cluster,
) -> None:
    """Four eyes by identity: the proposer's token cannot confirm, whatever it writes in
    confirmed_by; a second person's token can."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await active_loan(cluster, fund_id=fund_id)
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 20_000, date(2026, 5, 10)))
    officer = cluster.channel("lending", cluster.token_for("loan_officer", subject="lo-03"))
    # the same person, with the manager's role too, in other letters
    same = cluster.channel(
        "lending", cluster.token_for("programme_manager", "loan_officer", subject="LO-03")
    )
    manager = cluster.channel("lending", cluster.token_for("programme_manager", subject="pm-01"))
    try:
        confirm = pb.ConfirmLoanWriteOffRequest(request_id=request_id(), loan_id=loan.loan_id)
        with pytest.raises(grpc.aio.AioRpcError) as nothing_proposed:
            await pb_grpc.LendingServiceStub(manager).ConfirmLoanWriteOff(confirm)
        assert nothing_proposed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(nothing_proposed.value) == "NO_WRITE_OFF_PROPOSAL"

        proposed = await pb_grpc.LendingServiceStub(officer).ProposeLoanWriteOff(
            pb.ProposeLoanWriteOffRequest(
                request_id=request_id(),
                loan_id=loan.loan_id,
                reason="the borrower died; no estate",
                write_off_date=pdate(date(2027, 6, 30)),
            )
        )
        assert proposed.proposal.proposed_by == "lo-03"  # the token's subject
        nothing_posted = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
        assert nothing_posted.loan.state == pb.LOAN_STATE_ACTIVE

        confirm.request_id = request_id()
        with pytest.raises(grpc.aio.AioRpcError) as alone:
            await pb_grpc.LendingServiceStub(same).ConfirmLoanWriteOff(confirm)
        assert alone.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(alone.value) == "FOUR_EYES"
        # naming someone else does not help a staff member: actor fields are their own
        confirm.request_id, confirm.confirmed_by = request_id(), "pm-01"
        with pytest.raises(grpc.aio.AioRpcError) as pretending:
            await pb_grpc.LendingServiceStub(same).ConfirmLoanWriteOff(confirm)
        assert pretending.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(pretending.value) == "ACTOR_NOT_CALLER"

        confirm.request_id, confirm.confirmed_by = request_id(), ""
        written = await pb_grpc.LendingServiceStub(manager).ConfirmLoanWriteOff(confirm)
        again = await pb_grpc.LendingServiceStub(manager).ConfirmLoanWriteOff(confirm)
        assert again == written  # a retry: the stored answer
    finally:
        for channel in (officer, same, manager):
            await channel.close()
    assert written.loan.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
    assert written.loan.close_date == pdate(date(2027, 6, 30))
    assert written.loan.written_off_minor == 100_000
    assert written.loan.outstanding_principal_minor == 0
    async with lending_db(cluster).pool.acquire() as conn:
        names = await conn.fetchrow(
            "SELECT proposed_by, confirmed_by FROM write_offs WHERE loan_id = $1", loan.loan_id
        )
    assert names is not None
    assert (names["proposed_by"], names["confirmed_by"]) == ("lo-03", "pm-01")
    # As of a day before the write-off the loan was active, late, and in its bucket.
    before_write_off = (
        await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 7, 1)))
        )
    ).loan
    assert before_write_off.outstanding_principal_minor == 100_000
    assert before_write_off.days_past_due > 0
    assert before_write_off.bucket != pb.DELINQUENCY_BUCKET_UNSPECIFIED

    recovery = await cluster.lending.RecordRepayment(
        repayment(loan.loan_id, 15_000, date(2027, 9, 1))
    )
    assert recovery.repayment.recovery
    assert recovery.loan.recovered_minor == 15_000
    assert recovery.loan.close_date == pdate(date(2027, 6, 30))  # a recovery does not move it
    with pytest.raises(grpc.aio.AioRpcError) as too_much:
        await cluster.lending.RecordRepayment(repayment(loan.loan_id, 85_001, date(2027, 9, 2)))
    assert too_much.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only 85000 qəpik (850.00 AZN) written off is unrecovered" in too_much.value.details()
    fund = (await cluster.lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    assert (fund.disbursed_minor, fund.repaid_principal_minor) == (120_000, 20_000)
    assert (fund.written_off_minor, fund.recovered_minor) == (100_000, 15_000)
    assert fund.available_minor == 1_000_000 - 120_000 + 20_000 + 15_000
    assert fund.outstanding_principal_minor == 0
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await write_off(cluster.lending, loan.loan_id, date(2027, 9, 3))
    assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_portfolio_report_par30_buckets_and_breakdowns(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 5_000_000)
    lending = cluster.lending
    on_time = await active_loan(cluster, fund_id=fund_id)
    late = await active_loan(cluster, fund_id=fund_id)
    very_late = await approved_loan(
        lending, fund_id=fund_id, district_code="tartar", sex=sex_pb2.SEX_MALE, amount_minor=240_000
    )
    await disburse(lending, very_late.loan_id, 240_000, START)
    as_of = date(2026, 8, 20)
    await lending.RecordRepayment(repayment(on_time.loan_id, 50_000, as_of))  # ahead: prepaid
    await lending.RecordRepayment(repayment(late.loan_id, 10_910, date(2026, 5, 10)))
    report = (
        await lending.GetPortfolioReport(
            pb.GetPortfolioReportRequest(as_of=pdate(as_of), fund_id=fund_id)
        )
    ).report
    total = report.total
    assert total.active_loans == 3
    outstanding = {
        on_time.loan_id: 70_000,
        late.loan_id: 120_000 - 10_910,
        very_late.loan_id: 240_000,
    }
    assert total.outstanding_principal_minor == sum(outstanding.values())
    dpd = {
        loan_id: (
            await lending.GetLoan(pb.GetLoanRequest(loan_id=loan_id, as_of=pdate(as_of)))
        ).loan.days_past_due
        for loan_id in outstanding
    }
    assert dpd == {
        on_time.loan_id: 0,
        late.loan_id: (as_of - date(2026, 6, 10)).days,
        very_late.loan_id: (as_of - date(2026, 5, 10)).days,
    }
    assert total.par30_outstanding_minor == outstanding[late.loan_id] + 240_000
    # Hundredths of a percent, rounded half up.
    par30 = Fraction(total.par30_outstanding_minor * 10_000, sum(outstanding.values()))
    assert total.par30_basis_points == int(par30 + Fraction(1, 2))
    buckets = {b.bucket: (b.loans, b.outstanding_principal_minor) for b in total.buckets}
    assert buckets[pb.DELINQUENCY_BUCKET_CURRENT] == (1, 70_000)
    assert buckets[pb.DELINQUENCY_BUCKET_61_90] == (1, outstanding[late.loan_id])
    assert buckets[pb.DELINQUENCY_BUCKET_OVER_90] == (1, 240_000)
    assert buckets[pb.DELINQUENCY_BUCKET_1_30] == (0, 0)
    # Repayment rate: principal repaid against principal fallen due, prepayments left out.
    fallen_due = {
        amount: sum(i.principal_minor for i in build_schedule(amount, START, 12, 1)[:4])
        for amount in (120_000, 240_000)
    }
    repaid_against_due = fallen_due[120_000] + 10_910 + 0
    rate = Fraction(repaid_against_due * 10_000, 2 * fallen_due[120_000] + fallen_due[240_000])
    assert total.repayment_rate_basis_points == int(rate + Fraction(1, 2))
    by_district = {b.key: b.figures for b in report.by_district}
    assert by_district["tartar"].par30_basis_points == 10_000
    assert by_district["saatli"].active_loans == 2
    assert {b.key for b in report.by_sex} == {"SEX_FEMALE", "SEX_MALE"}
    assert [b.key for b in report.by_product] == ["small_trade"]


async def test_repayments_arriving_together_each_get_their_own_outcome(cluster: Cluster) -> None:
    """Repayments sent at once share a transaction (services/lending/repayments.py); each
    still gets what it would alone: a refused one leaves nothing, its request_id included;
    two of one loan both apply; a duplicate pair has one effect."""
    fund_id = await open_fund(cluster, 1_000_000)
    a, b, c = [(await active_loan(cluster, fund_id=fund_id)).loan_id for _ in range(3)]
    on = date(2026, 5, 10)
    over = repayment(b, 10_000_000, on)
    duplicate = repayment(c, 3_000, on)
    requests = [
        repayment(a, 10_000, on),
        over,
        repayment(a, 5_000, on),
        duplicate,
        repayment(b, 7_000, on),
        duplicate,
        repayment("loan-that-does-not-exist", 1_000, on),
    ]

    async def outcome(request: pb.RecordRepaymentRequest) -> object:
        try:
            return await cluster.lending.RecordRepayment(request)
        except grpc.aio.AioRpcError as error:
            return error.code()

    results = await asyncio.gather(*(outcome(r) for r in requests))
    assert results[1] == grpc.StatusCode.INVALID_ARGUMENT
    assert results[6] == grpc.StatusCode.INVALID_ARGUMENT  # an unknown loan
    assert results[3] == results[5]
    assert all(isinstance(results[i], pb.RecordRepaymentResponse) for i in (0, 2, 3, 4))

    async def repaid(loan_id: str) -> tuple[int, int]:
        loan = (await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan_id))).loan
        async with lending_db(cluster).pool.acquire() as conn:
            count = await conn.fetchval(
                """SELECT count(*) FROM ledger_transactions
                   WHERE loan_id = $1 AND kind = 'REPAYMENT'""",
                loan_id,
            )
        return loan.repaid_principal_minor, count

    assert await repaid(a) == (15_000, 2)
    assert await repaid(b) == (7_000, 1)
    assert await repaid(c) == (3_000, 1)
    # The refusal says what is outstanding, in qəpik and in manat.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.lending.RecordRepayment(over)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    outstanding = 120_000 - 7_000  # active_loan's principal, less b's repayment above
    assert f"only {outstanding} qəpik (1,130.00 AZN) is outstanding" in refused.value.details()
    # The refused overpayment kept nothing: its request_id, corrected, is a first call.
    over.amount_minor = 2_000
    corrected = await cluster.lending.RecordRepayment(over)
    assert corrected.loan.repaid_principal_minor == 9_000
    async with lending_db(cluster).pool.acquire() as conn:
        await ledger_invariants(conn)


async def test_two_groups_caught_in_a_deadlock_still_answer_every_repayment(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two service processes' groups can wait on each other when a client reuses one
    request_id on two loans: PostgreSQL undoes one group, and its repayments are redone
    one at a time. Every call gets its answer, the request_id has one effect, and the
    ledger holds exactly the repayments that were answered as made."""
    fund_id = await open_fund(cluster, 1_000_000)
    x, a, b = sorted([(await active_loan(cluster, fund_id=fund_id)).loan_id for _ in range(3)])
    on = date(2026, 5, 10)
    reused = request_id()
    first = [repayment(a, 1_000, on), repayment(b, 2_000, on)]
    second = [repayment(x, 3_000, on), repayment(a, 4_000, on)]
    first[1].request_id = second[0].request_id = reused
    db = lending_db(cluster)
    # Two processes' groups: each its own one-group-at-a-time writer.
    one, other = RepaymentGroups(db), RepaymentGroups(db)
    redone: list[str] = []
    for groups in (one, other):
        alone = groups._alone

        async def counted(single: Repayment, alone: Any = alone) -> Outcome | BaseException:
            redone.append(single.request.loan_id)
            return cast(Outcome | BaseException, await alone(single))

        monkeypatch.setattr(groups, "_alone", counted)

    calls = {
        id(r): Repayment(r, on, idempotency.payload_hash(r), ledger.new_transaction_id(), None)
        for r in first + second
    }

    async def waiting_on_locks(count: int) -> None:
        for _ in range(200):
            async with db.pool.acquire() as conn:
                waiting = await conn.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE wait_event_type = 'Lock' AND query LIKE '%lending_repay_many%'"""
                )
            if waiting >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} group(s) waiting on a lock")

    # The order that closes the cycle, made certain: loan x is held, so the second group
    # claims the reused key and waits; the first then locks loan a and waits for the key;
    # x released, the second goes on to loan a, held by the first.
    async with db.pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM loans WHERE loan_id = $1 FOR UPDATE", x)
        second_group = asyncio.gather(*(other.record(calls[id(r)]) for r in second))
        await waiting_on_locks(1)
        first_group = asyncio.gather(*(one.record(calls[id(r)]) for r in first))
        await waiting_on_locks(2)
    outcomes = [*await first_group, *await second_group]

    # PostgreSQL undid one group; its two repayments were redone one at a time.
    assert sorted(redone) in (sorted([a, b]), sorted([x, a])), redone
    assert sorted(o.outcome for o in outcomes) == ["OK", "OK", "OK", "REPLAY"], outcomes
    # The reused key kept the payload of whichever repayment took it first; the other
    # call's digest differs, which the service answers as a reused request_id.
    replayed = next(
        (call, o) for call, o in zip(first + second, outcomes, strict=True) if o.outcome == "REPLAY"
    )
    assert replayed[0].request_id == reused
    assert replayed[1].stored_payload_hash != idempotency.payload_hash(replayed[0])
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT loan_id, count(*) AS n FROM ledger_transactions
               WHERE loan_id = ANY($1::text[]) AND kind = 'REPAYMENT' GROUP BY loan_id""",
            [x, a, b],
        )
        await ledger_invariants(conn)
    made = {row["loan_id"]: row["n"] for row in rows}
    assert made.get(a) == 2 and made.get(x, 0) + made.get(b, 0) == 1, made


async def test_a_payment_during_the_four_eyes_lag_moves_the_write_off_to_its_date(
    cluster: Cluster,
) -> None:
    """A payment recorded between the proposal and its confirmation: the write-off is
    posted on that payment's date, of what is left (the confirmation was refused as dated
    before the loan's latest transaction, and nobody could change the date but by
    withdrawing the proposal)."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    await propose_write_off(
        cluster.lending, loan.loan_id, date(2026, 6, 30), reason="no contact for a year"
    )
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 10_000, date(2026, 7, 5)))
    written = await cluster.lending.ConfirmLoanWriteOff(
        pb.ConfirmLoanWriteOffRequest(
            request_id=request_id(), loan_id=loan.loan_id, confirmed_by="pm-01"
        )
    )
    assert written.loan.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
    assert written.loan.close_date == pdate(date(2026, 7, 5))
    assert written.loan.written_off_minor == 110_000
    async with lending_db(cluster).pool.acquire() as conn:
        on = await conn.fetchval(
            "SELECT write_off_date FROM write_offs WHERE loan_id = $1", loan.loan_id
        )
        await ledger_invariants(conn)
    assert on == date(2026, 7, 5)


async def test_a_proposal_made_before_the_loan_was_repaid_is_not_open_again_on_reopening(
    cluster: Cluster,
) -> None:
    """Proposed, then the borrower repays in full, then that payment is reversed: the loan
    is ACTIVE again, but the old proposal is withdrawn (kept on record), not shown as
    open, and a new one may be made (the old one came back, and could be neither confirmed
    nor replaced)."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    await propose_write_off(
        cluster.lending, loan.loan_id, date(2026, 6, 30), reason="no contact for a year"
    )
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 120_000, date(2026, 7, 5)))
    assert paid.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    reopened = await cluster.lending.ReverseRepayment(
        reversal(loan.loan_id, paid.repayment.transaction_id)
    )
    assert reopened.loan.state == pb.LOAN_STATE_ACTIVE
    shown = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
    assert not shown.HasField("write_off_proposal")
    async with lending_db(cluster).pool.acquire() as conn:
        kept = await conn.fetchrow(
            "SELECT proposed_by, withdraw_reason FROM write_off_withdrawals WHERE loan_id = $1",
            loan.loan_id,
        )
        notes = await conn.fetch(
            "SELECT note FROM loan_events WHERE loan_id = $1 ORDER BY event_id", loan.loan_id
        )
    assert notes[-1]["note"].startswith("write-off withdrawn: the loan was repaid in full")
    assert kept is not None and kept["proposed_by"] == "lo-07"
    assert kept["withdraw_reason"].startswith("the loan was repaid in full")
    again = await propose_write_off(
        cluster.lending,
        loan.loan_id,
        date(2026, 7, 10),
        reason="the payment bounced; no contact since",
    )
    assert again.proposal.reason == "the payment bounced; no contact since"


async def test_a_confirmation_or_withdrawal_of_a_proposal_since_replaced_is_refused(
    cluster: Cluster,
) -> None:
    """The person acting says which proposal they saw: one withdrawn through the API and
    replaced by another meanwhile is not confirmed or withdrawn in its place (the other
    was, by someone who never saw it)."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    await propose_write_off(cluster.lending, loan.loan_id, date(2026, 6, 30), proposed_by="lo-01")
    await cluster.lending.WithdrawLoanWriteOff(
        pb.WithdrawLoanWriteOffRequest(
            request_id=request_id(), loan_id=loan.loan_id, reason="mistake", withdrawn_by="pm-02"
        )
    )
    await propose_write_off(
        cluster.lending, loan.loan_id, date(2026, 6, 30), reason="another reason"
    )  # by lo-07
    seen = {"proposed_by": "lo-01", "proposal_reason": "uncollectable"}
    before = await cluster.row_counts()
    for call in (
        cluster.lending.ConfirmLoanWriteOff(
            pb.ConfirmLoanWriteOffRequest(
                request_id=request_id(), loan_id=loan.loan_id, confirmed_by="pm-01", **seen
            )
        ),
        cluster.lending.WithdrawLoanWriteOff(
            pb.WithdrawLoanWriteOffRequest(
                request_id=request_id(),
                loan_id=loan.loan_id,
                reason="seen",
                withdrawn_by="pm-01",
                **seen,
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as changed:
            await call
        assert changed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(changed.value) == "PROPOSAL_CHANGED"
        assert "is lo-07's (another reason)" in (changed.value.details() or "")
    assert await cluster.row_counts() == before
    written = await cluster.lending.ConfirmLoanWriteOff(
        pb.ConfirmLoanWriteOffRequest(
            request_id=request_id(), loan_id=loan.loan_id, confirmed_by="pm-01",
            proposed_by="LO-07", proposal_reason="another reason",
        )
    )  # fmt: skip
    assert written.loan.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF


async def test_a_write_off_proposal_can_be_withdrawn_with_a_reason_and_proposed_again(
    cluster: Cluster,
) -> None:
    """A proposal made by mistake is withdrawn (kept on record, with who and why); nothing
    is left to confirm, a new proposal may follow, and a confirmed write-off is final."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    officer = cluster.channel("lending", cluster.token_for("loan_officer", subject="lo-07"))
    manager = cluster.channel("lending", cluster.token_for("programme_manager", subject="pm-02"))
    try:
        as_officer, as_manager = (pb_grpc.LendingServiceStub(c) for c in (officer, manager))
        withdraw = pb.WithdrawLoanWriteOffRequest(
            request_id=request_id(), loan_id=loan.loan_id, reason="the borrower is back"
        )
        with pytest.raises(grpc.aio.AioRpcError) as nothing:
            await as_officer.WithdrawLoanWriteOff(withdraw)
        assert reason_of(nothing.value) == "NO_WRITE_OFF_PROPOSAL"

        propose = pb.ProposeLoanWriteOffRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            reason="no contact for a year",
            write_off_date=pdate(date(2027, 6, 30)),
        )
        await as_officer.ProposeLoanWriteOff(propose)
        # GetLoan shows the open proposal, for whoever is to confirm or withdraw it.
        shown = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
        assert (shown.write_off_proposal.proposed_by, shown.write_off_proposal.reason) == (
            "lo-07",
            "no contact for a year",
        )
        withdraw.request_id = request_id()
        withdrawn = await as_manager.WithdrawLoanWriteOff(withdraw)
        assert await as_manager.WithdrawLoanWriteOff(withdraw) == withdrawn  # a retry
        assert (withdrawn.withdrawn.reason, withdrawn.withdrawn.proposed_by) == (
            "no contact for a year",
            "lo-07",
        )
        assert withdrawn.withdrawn_by == "pm-02"  # the token's subject

        confirm = pb.ConfirmLoanWriteOffRequest(request_id=request_id(), loan_id=loan.loan_id)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await as_manager.ConfirmLoanWriteOff(confirm)
        assert reason_of(gone.value) == "NO_WRITE_OFF_PROPOSAL"
        shown = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
        assert shown.loan.state == pb.LOAN_STATE_ACTIVE and shown.loan.written_off_minor == 0
        assert not shown.HasField("write_off_proposal")  # withdrawn: none open

        propose.request_id, propose.reason = request_id(), "the borrower died; no estate"
        await as_officer.ProposeLoanWriteOff(propose)
        confirm.request_id = request_id()
        written = await as_manager.ConfirmLoanWriteOff(confirm)
        assert written.loan.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
        shown = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
        assert not shown.HasField("write_off_proposal")  # confirmed: none open
        withdraw.request_id = request_id()
        with pytest.raises(grpc.aio.AioRpcError) as final:
            await as_manager.WithdrawLoanWriteOff(withdraw)
        assert final.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(final.value) == "LOAN_NOT_ACTIVE"
        with pytest.raises(grpc.aio.AioRpcError) as no_reason:
            await as_manager.WithdrawLoanWriteOff(
                pb.WithdrawLoanWriteOffRequest(request_id=request_id(), loan_id=loan.loan_id)
            )
        assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for channel in (officer, manager):
            await channel.close()
    async with lending_db(cluster).pool.acquire() as conn:
        kept = await conn.fetch(
            "SELECT reason, withdrawn_by, withdraw_reason FROM write_off_withdrawals"
            " WHERE loan_id = $1",
            loan.loan_id,
        )
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM write_off_withdrawals WHERE loan_id = $1", loan.loan_id)
    assert [tuple(r) for r in kept] == [("no contact for a year", "pm-02", "the borrower is back")]


async def test_get_loan_answers_with_its_schedule_in_one_call(cluster: Cluster) -> None:
    """What the journeys read at every due date: the loan and the schedule in force, as of
    one date, from one call; no schedule before the first disbursement."""
    fund_id = await open_fund(cluster, 1_000_000)
    approved = await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=120_000)
    ask = pb.GetLoanRequest(
        loan_id=approved.loan_id, as_of=pdate(date(2026, 5, 1)), include_schedule=True
    )
    before = await cluster.lending.GetLoan(ask)
    assert before.loan.state == pb.LOAN_STATE_APPROVED and not before.HasField("schedule")

    await disburse(cluster.lending, approved.loan_id, 120_000, date(2026, 3, 10))
    await cluster.lending.RecordRepayment(repayment(approved.loan_id, 7_000, date(2026, 4, 20)))
    both = await cluster.lending.GetLoan(ask)
    alone = await cluster.lending.GetRepaymentSchedule(
        pb.GetRepaymentScheduleRequest(loan_id=approved.loan_id, as_of=ask.as_of)
    )
    assert both.schedule == alone.schedule and both.schedule.instalments
    assert (
        both.loan
        == (
            await cluster.lending.GetLoan(
                pb.GetLoanRequest(loan_id=approved.loan_id, as_of=ask.as_of)
            )
        ).loan
    )
    assert sum(i.principal_paid_minor for i in both.schedule.instalments) == 7_000


async def test_money_dated_after_today_is_refused_and_writes_nothing(cluster: Cluster) -> None:
    """A real ledger's default (the test cluster accepts future dates, for journeys under
    time skipping): a second lending host on the same database, without them."""
    async with cluster.second_host(LENDING, lending_accept_future_dates=False) as channel:
        lending = pb_grpc.LendingServiceStub(channel)
        today = programme_today()
        tomorrow = today + timedelta(days=1)
        loan = await approved_loan(lending, fund_id=await open_fund(cluster, 1_000_000))
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        early = disburse(lending, loan.loan_id, 120_000, tomorrow)
        await _refused_without_writes(cluster, early, "disbursement_date", invalid)
        active = (await disburse(lending, loan.loan_id, 120_000, today)).loan
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lending.RecordRepayment(repayment(active.loan_id, 1_000, tomorrow))
        assert reason_of(refused.value) == "INVALID_ARGUMENT"
        assert f"must not be after today ({today} in Baku)" in (refused.value.details() or "")
        await _refused_without_writes(
            cluster,
            lending.RecordRepayment(repayment(active.loan_id, 1_000, tomorrow)),
            "payment_date",
            invalid,
        )
        proposal = pb.ProposeLoanWriteOffRequest(
            request_id=request_id(),
            loan_id=active.loan_id,
            reason="the borrower emigrated",
            write_off_date=pdate(tomorrow),
        )
        await _refused_without_writes(
            cluster, lending.ProposeLoanWriteOff(proposal), "write_off_date", invalid
        )
        later = reschedule(active.loan_id, tomorrow, 12, reason="a flood took half the stock")
        await _refused_without_writes(
            cluster, lending.RescheduleLoan(later), "effective_date", invalid
        )
        # A pause starts today at the latest (it ran on record for ever, and the answer
        # read the loan as of its end: decades past due).
        pause = pb.PauseDelinquencyRequest(
            request_id=request_id(),
            loan_id=active.loan_id,
            start_date=pdate(tomorrow),
            end_date=pdate(tomorrow + timedelta(days=30)),
            reason="hospitalised",
            requested_by="lo-03",
        )
        await _refused_without_writes(
            cluster, lending.PauseDelinquency(pause), "start_date", invalid
        )
        paid = await lending.RecordRepayment(repayment(active.loan_id, 1_000, today))
        assert paid.loan.repaid_principal_minor == 1_000
        # A report dated after today would count every instalment due by then as overdue.
        await _refused_without_writes(
            cluster,
            lending.GetPortfolioReport(pb.GetPortfolioReportRequest(as_of=pdate(tomorrow))),
            "as_of",
            invalid,
        )
        report = await lending.GetPortfolioReport(pb.GetPortfolioReportRequest(as_of=pdate(today)))
        assert report.report.total.active_loans >= 1
