"""Shared steps for the lending tests: a fund of the test's own, loans driven through the
real gRPC API, reading the loan change feed, and reading the google.rpc details of a
refused call."""

from __future__ import annotations

from datetime import date

import asyncpg
import grpc

from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common.db import Database
from services.common.errors import violations_in
from services.lending import ledger
from tests.conftest import Cluster
from tests.factories import new_id, pdate, request_id


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The BadRequest field paths carried by a refused call."""
    return [v.field for v in violations_in(error)]


def lending_db(cluster: Cluster) -> Database:
    db = cluster.hosts["lending"].db
    assert db is not None
    return db


async def open_fund(cluster: Cluster, capital_minor: int) -> str:
    """A fund of the test's own, so tests never compete for the shipped fund's money."""
    fund_id = new_id("fund")
    async with lending_db(cluster).transaction() as conn:
        await ledger.open_fund(
            conn,
            fund_id=fund_id,
            name_en="Test fund",
            name_az="Sınaq fondu",
            committed_capital_minor=capital_minor,
            committed_on=date(2025, 1, 1),
        )
    return fund_id


async def approved_loan(
    lending: pb_grpc.LendingServiceStub,
    *,
    fund_id: str,
    product_id: str = "small_trade",
    amount_minor: int = 120_000,
    district_code: str = "saatli",
    sex: int = sex_pb2.SEX_FEMALE,
    survivor_id: str = "",
) -> pb.Loan:
    """A loan the committee approved (of a new survivor unless `survivor_id` is given)."""
    submitted = await lending.SubmitLoanApplication(
        pb.SubmitLoanApplicationRequest(
            request_id=request_id(),
            survivor_id=survivor_id or new_id("srv"),
            product_id=product_id,
            amount_minor=amount_minor,
            currency_code="AZN",
            district_code=district_code,
            borrower_sex=sex,  # type: ignore[arg-type]
            borrower_age_band=age_band_pb2.AGE_BAND_35_59,
            purpose="test loan",
            submitted_by="cw-01",
            fund_id=fund_id,
        )
    )
    approved = await lending.ApproveLoan(
        pb.ApproveLoanRequest(
            request_id=request_id(),
            loan_id=submitted.loan.loan_id,
            approved_by="cm-02",
            committee_decision_ref="CM-TEST",
        )
    )
    return approved.loan


async def disburse(
    lending: pb_grpc.LendingServiceStub,
    loan_id: str,
    amount_minor: int,
    on: date,
    description: str = "cash for stock",
    kind: int = pb.DISBURSEMENT_KIND_CASH,
) -> pb.DisburseTrancheResponse:
    response: pb.DisburseTrancheResponse = await lending.DisburseTranche(
        pb.DisburseTrancheRequest(
            request_id=request_id(),
            loan_id=loan_id,
            amount_minor=amount_minor,
            currency_code="AZN",
            kind=kind,  # type: ignore[arg-type]
            description=description,
            disbursement_date=pdate(on),
            disbursed_by="lo-03",
        )
    )
    return response


def repayment(loan_id: str, amount_minor: int, on: date) -> pb.RecordRepaymentRequest:
    return pb.RecordRepaymentRequest(
        request_id=request_id(),
        loan_id=loan_id,
        amount_minor=amount_minor,
        currency_code="AZN",
        payment_date=pdate(on),
        received_by="cashier-01",
        channel="cash",
    )


def reschedule(
    loan_id: str,
    on: date,
    new_term_months: int,
    *,
    reason: str = "drought: the stall lost its summer trade",
    additional_grace_months: int = 0,
) -> pb.RescheduleLoanRequest:
    return pb.RescheduleLoanRequest(
        request_id=request_id(),
        loan_id=loan_id,
        reason=reason,
        new_term_months=new_term_months,
        additional_grace_months=additional_grace_months,
        effective_date=pdate(on),
        requested_by="lo-03",
    )


def pause(
    loan_id: str, start: date, end: date, *, reason: str = "hospitalised"
) -> pb.PauseDelinquencyRequest:
    return pb.PauseDelinquencyRequest(
        request_id=request_id(),
        loan_id=loan_id,
        start_date=pdate(start),
        end_date=pdate(end),
        reason=reason,
        requested_by="cw-01",
    )


def reversal(
    loan_id: str, transaction_id: str, reason: str = "the transfer bounced"
) -> pb.ReverseRepaymentRequest:
    return pb.ReverseRepaymentRequest(
        request_id=request_id(),
        loan_id=loan_id,
        transaction_id=transaction_id,
        reason=reason,
        reversed_by="acc-07",
    )


async def active_loan(
    cluster: Cluster, *, fund_id: str, amount_minor: int = 120_000, on: date = date(2026, 3, 10)
) -> pb.Loan:
    loan = await approved_loan(cluster.lending, fund_id=fund_id, amount_minor=amount_minor)
    return (await disburse(cluster.lending, loan.loan_id, amount_minor, on)).loan


async def ledger_invariants(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Every transaction balances, and every loan's receivable matches its parts."""
    unbalanced = await conn.fetch(
        """SELECT transaction_id FROM postings GROUP BY transaction_id
           HAVING sum(amount_minor) <> 0 OR count(*) < 2"""
    )
    assert unbalanced == []
    empty = await conn.fetchval(
        """SELECT count(*) FROM ledger_transactions t
           WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.transaction_id = t.transaction_id)"""
    )
    assert empty == 0


async def propose_write_off(
    lending: pb_grpc.LendingServiceStub,
    loan_id: str,
    on: date,
    *,
    reason: str = "uncollectable",
    proposed_by: str = "lo-07",
) -> pb.ProposeLoanWriteOffResponse:
    """A write-off proposed straight with lending (a committee's own tool), naming the
    proposer (the default test token relays)."""
    return await lending.ProposeLoanWriteOff(
        pb.ProposeLoanWriteOffRequest(
            request_id=request_id(),
            loan_id=loan_id,
            reason=reason,
            proposed_by=proposed_by,
            write_off_date=pdate(on),
        )
    )


async def write_off(
    lending: pb_grpc.LendingServiceStub,
    loan_id: str,
    on: date,
    *,
    reason: str = "uncollectable",
    proposed_by: str = "lo-03",
    confirmed_by: str = "pm-01",
) -> pb.ConfirmLoanWriteOffResponse:
    """Propose, then confirm, naming the two people (the default test token relays)."""
    await propose_write_off(lending, loan_id, on, reason=reason, proposed_by=proposed_by)
    return await lending.ConfirmLoanWriteOff(
        pb.ConfirmLoanWriteOffRequest(
            request_id=request_id(), loan_id=loan_id, confirmed_by=confirmed_by
        )
    )


async def statement(
    lending: pb_grpc.LendingServiceStub, loan_id: str, page_size: int = 0
) -> list[pb.LoanTransaction]:
    """A loan's whole statement, page by page."""
    lines: list[pb.LoanTransaction] = []
    token = ""
    while True:
        page = await lending.ListLoanTransactions(
            pb.ListLoanTransactionsRequest(loan_id=loan_id, page_size=page_size, page_token=token)
        )
        lines.extend(page.transactions)
        token = page.next_page_token
        if not token:
            return lines


async def read_feed(
    cluster: Cluster, cursor: str, page_size: int = 500
) -> tuple[list[pb.LoanChange], str]:
    """Every change after `cursor`, page by page, and the cursor at the end."""
    changes: list[pb.LoanChange] = []
    while True:
        page = await cluster.lending.ListLoanChanges(
            pb.ListLoanChangesRequest(after=cursor, page_size=page_size)
        )
        if not page.changes:
            assert page.cursor == cursor  # nothing new: the same cursor back
            return changes, cursor
        changes.extend(page.changes)
        cursor = page.cursor


async def feed_end(cluster: Cluster) -> str:
    """A cursor at the feed's present end."""
    return (await read_feed(cluster, ""))[1]


async def changes_after(cluster: Cluster, cursor: str, page_size: int = 0) -> list[pb.LoanChange]:
    return (await read_feed(cluster, cursor, page_size))[0]
