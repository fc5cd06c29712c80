"""Property test over the real gRPC API and PostgreSQL: any sequence of disbursements,
repayments, reversals, reschedules, pauses, write-offs and recoveries keeps every ledger
invariant, and the ledger agrees with a plain model of the loan."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import asyncpg
import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mineaction.lending.v1 import lending_service_pb2 as pb
from services.common.db import database_url
from tests.conftest import Cluster
from tests.factories import pdate, request_id
from tests.lending_helpers import (
    approved_loan,
    disburse,
    ledger_invariants,
    lending_db,
    open_fund,
    repayment,
    reschedule,
    reversal,
    statement,
    write_off,
)

CAPITAL = 1_500_000
PRINCIPAL = 600_000  # business_expansion: up to 3 tranches, 36 months, 2 months grace
FAR_FUTURE = date(2100, 1, 1)
EXPECTED_REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT}

operations = st.lists(
    st.one_of(
        st.tuples(st.just("disburse"), st.integers(1, PRINCIPAL), st.integers(0, 40)),
        # Back-dated too: a payment recorded after others may be dated before them.
        st.tuples(st.just("repay"), st.integers(1, 300_000), st.integers(-45, 60)),
        st.tuples(st.just("reverse"), st.integers(0, 10), st.just(0)),
        st.tuples(st.just("reschedule"), st.integers(2, 24), st.integers(0, 60)),
        st.tuples(st.just("pause"), st.integers(1, 90), st.integers(0, 30)),
        st.tuples(st.just("write_off"), st.just(0), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class Model:
    """What the loan should look like, kept by hand."""

    disbursed: int = 0
    repaid: int = 0
    written_off: int = 0
    recovered: int = 0
    today: date = date(2026, 2, 1)
    repayments: list[tuple[str, int, bool]] = field(default_factory=list)  # id, amount, recovery

    @property
    def outstanding(self) -> int:
        return self.disbursed - self.repaid - self.written_off


async def _apply(cluster: Cluster, loan_id: str, model: Model, op: tuple[str, int, int]) -> None:
    lending = cluster.lending
    kind, number, days = op
    on = model.today + timedelta(days=days)
    if kind == "disburse":
        await disburse(lending, loan_id, number, on)
        model.disbursed += number
    elif kind == "repay":
        done = await lending.RecordRepayment(repayment(loan_id, number, on))
        # The answer shows the loan as GetLoan does as of the answer's day.
        seen = await lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan_id, as_of=done.loan.figures_as_of)
        )
        assert done.loan == seen.loan, op
        if done.repayment.recovery:
            model.recovered += number
        else:
            model.repaid += number
        model.repayments.append((done.repayment.transaction_id, number, done.repayment.recovery))
    elif kind == "reverse":
        if not model.repayments:
            return
        txn_id, amount, recovery = model.repayments[number % len(model.repayments)]
        await lending.ReverseRepayment(reversal(loan_id, txn_id, "correction"))
        model.repayments.remove((txn_id, amount, recovery))
        if recovery:
            model.recovered -= amount
        else:
            model.repaid -= amount
            if model.written_off:  # owed when the loan was written off: written off with it
                model.written_off += amount
        on = model.today  # a reversal keeps the original's value date
    elif kind == "reschedule":
        await lending.RescheduleLoan(
            reschedule(loan_id, on, number, reason="hardship", additional_grace_months=1)
        )
    elif kind == "pause":
        await lending.PauseDelinquency(
            pb.PauseDelinquencyRequest(
                request_id=request_id(),
                loan_id=loan_id,
                start_date=pdate(on),
                end_date=pdate(on + timedelta(days=number)),
                reason="hospitalised",
                requested_by="cw-01",
            )
        )
        on = model.today  # a pause posts nothing
    else:
        await write_off(lending, loan_id, on)
        model.written_off = model.outstanding
    model.today = max(model.today, on)


async def _check(cluster: Cluster, fund_id: str, loan_id: str, model: Model) -> None:
    lending = cluster.lending
    fund = (await lending.GetFund(pb.GetFundRequest(fund_id=fund_id))).fund
    loan = (await lending.GetLoan(pb.GetLoanRequest(loan_id=loan_id, as_of=pdate(FAR_FUTURE)))).loan
    assert (fund.disbursed_minor, loan.disbursed_minor) == (model.disbursed, model.disbursed)
    assert (fund.repaid_principal_minor, loan.repaid_principal_minor) == (model.repaid,) * 2
    assert (fund.written_off_minor, loan.written_off_minor) == (model.written_off,) * 2
    assert (fund.recovered_minor, loan.recovered_minor) == (model.recovered,) * 2
    assert loan.outstanding_principal_minor == model.outstanding >= 0
    assert fund.outstanding_principal_minor == model.outstanding
    assert fund.available_minor == (CAPITAL - model.disbursed + model.repaid + model.recovered) >= 0
    if model.written_off:
        assert loan.state == pb.LOAN_STATE_CLOSED_WRITTEN_OFF
    elif model.disbursed and model.outstanding == 0:
        assert loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    elif model.disbursed:
        assert loan.state == pb.LOAN_STATE_ACTIVE
    if model.disbursed:
        schedule = (
            await lending.GetRepaymentSchedule(
                pb.GetRepaymentScheduleRequest(loan_id=loan_id, as_of=pdate(FAR_FUTURE))
            )
        ).schedule
        due = sum(i.principal_due_minor for i in schedule.instalments)
        paid = sum(i.principal_paid_minor for i in schedule.instalments)
        assert schedule.base_repaid_minor + due == model.disbursed  # exact, every revision
        if not model.written_off:
            assert schedule.base_repaid_minor + paid == model.repaid
    # The loan's statement agrees: every line balances, the balance after each never
    # drops below zero, ends at the loan's, and reversals pair up both ways.
    lines = await statement(lending, loan_id, page_size=3)
    assert all(sum(p.amount_minor for p in t.postings) == 0 for t in lines)
    assert all(t.outstanding_after_minor >= 0 for t in lines)
    assert (lines[-1].outstanding_after_minor if lines else 0) == model.outstanding
    disbursements = [t for t in lines if t.kind == pb.LOAN_TRANSACTION_KIND_DISBURSEMENT]
    assert sum(t.amount_minor for t in disbursements) == model.disbursed
    assert {t.reverses_transaction_id for t in lines if t.reverses_transaction_id} == {
        t.transaction_id for t in lines if t.reversed_by_transaction_id
    }
    async with lending_db(cluster).pool.acquire() as conn:
        await ledger_invariants(conn)
        by_account = await conn.fetch(
            "SELECT account, sum(amount_minor) AS total FROM postings WHERE fund_id = $1 "
            "GROUP BY account",
            fund_id,
        )
    assert sum(r["total"] for r in by_account) == 0  # the fund's books balance


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first_tranche=st.integers(1, PRINCIPAL), ops=operations)
async def test_any_sequence_of_operations_keeps_the_ledger_invariants(
    cluster: Cluster, first_tranche: int, ops: list[tuple[str, int, int]]
) -> None:
    await _run(cluster, [("disburse", first_tranche, 0), *ops])


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.integers(1, 150_000),
    reschedules=st.lists(
        st.tuples(st.integers(2, 24), st.integers(1, 60), st.integers(0, 150_000)),
        min_size=1,
        max_size=3,
    ),
)
async def test_a_payment_rescheduled_over_that_bounces_keeps_every_schedule_exact(
    cluster: Cluster, first: int, reschedules: list[tuple[int, int, int]]
) -> None:
    """A payment, one to three reschedules (each perhaps followed by a payment), then the
    first payment reversed: the books add up, and the schedule in force on every day a
    revision took effect owes exactly what was disbursed, less what it counts as paid."""
    ops = [("disburse", PRINCIPAL, 0), ("repay", first, 5)]
    for term, days, paid in reschedules:
        ops.append(("reschedule", term, days))
        if paid:
            ops.append(("repay", paid, 1))
    loan_id, model = await _run(cluster, [*ops, ("reverse", 0, 0)])
    revisions = await lending_db(cluster).pool.fetch(
        "SELECT DISTINCT effective_date FROM schedule_revisions WHERE loan_id = $1", loan_id
    )
    for day in [r["effective_date"] for r in revisions]:
        answer = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan_id, as_of=pdate(day), include_schedule=True)
        )
        due = sum(i.principal_due_minor for i in answer.schedule.instalments)
        assert answer.schedule.base_repaid_minor + due == model.disbursed, day
        assert answer.loan.repaid_principal_minor >= answer.schedule.base_repaid_minor, day


async def _run(cluster: Cluster, ops: list[tuple[str, int, int]]) -> tuple[str, Model]:
    """A new loan (business expansion, in a fund of its own) taken through `ops`, its
    books checked against the model after each; the loan's id and the model."""
    fund_id = await open_fund(cluster, CAPITAL)
    loan = await approved_loan(
        cluster.lending, fund_id=fund_id, product_id="business_expansion", amount_minor=PRINCIPAL
    )
    model = Model()
    for op in ops:
        before = await _posting_count(cluster, fund_id)
        try:
            await _apply(cluster, loan.loan_id, model, op)
        except grpc.aio.AioRpcError as refused:
            # Refusals are business rules, never bugs, and they write nothing.
            assert refused.code() in EXPECTED_REFUSALS, (op, refused.details())
            assert await _posting_count(cluster, fund_id) == before
        await _check(cluster, fund_id, loan.loan_id, model)
    return loan.loan_id, model


async def _posting_count(cluster: Cluster, fund_id: str) -> int:
    count: int = await lending_db(cluster).pool.fetchval(
        "SELECT count(*) FROM postings WHERE fund_id = $1", fund_id
    )
    return count


async def test_the_loan_positions_rebuilt_from_the_postings_are_the_ones_kept(
    cluster: Cluster,
) -> None:
    """The operator's check after a restore: `SELECT lending.loan_positions_rebuild()` from a
    plain session (default search_path) recomputes every position from the postings, and
    they equal the ones the ledger trigger kept."""
    fund_id = await open_fund(cluster, CAPITAL)
    loan = await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=100_000)
    await disburse(cluster.lending, loan.loan_id, 100_000, date(2026, 4, 10))
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 30_000, date(2026, 5, 10)))
    kept = "SELECT * FROM lending.loan_positions ORDER BY loan_id"
    conn = await asyncpg.connect(database_url(cluster.settings))
    try:
        before = await conn.fetch(kept)
        await conn.execute("SELECT lending.loan_positions_rebuild()")
        assert await conn.fetch(kept) == before
    finally:
        await conn.close()
    assert any(row["loan_id"] == loan.loan_id for row in before)
