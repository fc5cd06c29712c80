"""The loan change feed (ListLoanChanges) against real PostgreSQL: every change to a loan,
whichever call made it, in the order written; a cursor reads on from where the last read
ended; a transaction still open holds back what follows it, so a cursor never passes
over a change that commits late; a cursor the service did not issue is refused."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, date

import grpc
import pytest
from google.protobuf import duration_pb2
from prometheus_client import REGISTRY

from mineaction.lending.v1 import lending_service_pb2 as pb
from services.common import pagination
from services.common.errors import violations_in
from services.lending.service import LOAN_CHANGES
from tests.conftest import Cluster
from tests.factories import pdate, request_id
from tests.lending_helpers import (
    approved_loan,
    changes_after,
    disburse,
    feed_end,
    field_violations,
    lending_db,
    open_fund,
    repayment,
    reschedule,
    reversal,
)

START = date(2026, 3, 10)


def kinds(changes: list[pb.LoanChange], loan_id: str) -> list[str]:
    return [
        pb.LoanChangeKind.Name(c.kind).removeprefix("LOAN_CHANGE_KIND_")
        for c in changes
        if c.loan_id == loan_id
    ]


async def test_every_change_to_a_loan_is_in_the_feed_in_order(cluster: Cluster) -> None:
    start = await feed_end(cluster)
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id)
    await disburse(cluster.lending, loan.loan_id, 120_000, START)
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 10_000, START))
    await cluster.lending.ReverseRepayment(reversal(loan.loan_id, paid.repayment.transaction_id))
    await cluster.lending.PauseDelinquency(
        pb.PauseDelinquencyRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            start_date=pdate(date(2026, 6, 11)),
            end_date=pdate(date(2026, 7, 10)),
            reason="hospitalised: prosthesis surgery",
            requested_by="cw-01",
        )
    )
    await cluster.lending.RescheduleLoan(reschedule(loan.loan_id, date(2026, 8, 31), 18))
    await cluster.lending.ProposeLoanWriteOff(
        pb.ProposeLoanWriteOffRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            reason="the borrower moved away",
            write_off_date=pdate(date(2026, 9, 1)),
            proposed_by="lo-03",
        )
    )
    await cluster.lending.WithdrawLoanWriteOff(
        pb.WithdrawLoanWriteOffRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            reason="the borrower is back in touch",
            withdrawn_by="lo-03",
        )
    )
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 120_000, date(2026, 9, 1)))

    # Read in pages of two: the cursor carries each read on from the last.
    changes = await changes_after(cluster, start, page_size=2)
    assert kinds(changes, loan.loan_id) == [
        "STATE",  # submitted
        "STATE",  # approved
        "DISBURSEMENT",  # its schedule with it
        "STATE",  # active
        "REPAYMENT",
        "REPAYMENT_REVERSAL",
        # Each of these is also in the loan's events, with who and why.
        *("DELINQUENCY_PAUSE", "STATE"),
        *("SCHEDULE", "STATE"),
        *("WRITE_OFF_PROPOSAL", "STATE"),
        *("WRITE_OFF_WITHDRAWAL", "STATE"),
        "REPAYMENT",
        "STATE",  # closed, obligations met
    ]
    mine = [c for c in changes if c.loan_id == loan.loan_id]
    assert {c.survivor_id for c in mine} == {loan.survivor_id}
    assert all(c.change_time.seconds > 0 for c in mine)
    assert mine == sorted(mine, key=lambda c: c.change_time.ToNanoseconds())


async def test_a_transaction_still_open_holds_back_the_changes_after_it(cluster: Cluster) -> None:
    """An early transaction that commits late: a reader must not pass over its change, so
    nothing written after it is given out until it ends."""
    fund_id = await open_fund(cluster, 1_000_000)
    early = await approved_loan(cluster.lending, fund_id=fund_id)
    late = await approved_loan(cluster.lending, fund_id=fund_id)
    start = await feed_end(cluster)
    async with lending_db(cluster).pool.acquire() as conn:
        open_transaction = conn.transaction()
        await open_transaction.start()
        await conn.execute(
            """INSERT INTO delinquency_pauses (loan_id, start_date, end_date, reason, requested_by)
               VALUES ($1, '2026-06-01', '2026-06-30', 'a slow cashier', 'cw-01')""",
            early.loan_id,
        )
        before = time.time()
        await disburse(cluster.lending, late.loan_id, 120_000, START)  # commits meanwhile
        held = await changes_after(cluster, start)
        assert kinds(held, late.loan_id) == []
        assert kinds(held, early.loan_id) == []
        # The reader is told that committed changes wait, and since when: the
        # disbursement's (an operator sees a transaction left open).
        waiting = await cluster.lending.ListLoanChanges(pb.ListLoanChangesRequest(after=start))
        assert waiting.HasField("held_back_since")
        since = waiting.held_back_since.ToDatetime(tzinfo=UTC).timestamp()
        assert before - 1 <= since <= time.time()
        await open_transaction.commit()
    changes = await changes_after(cluster, start)
    assert kinds(changes, early.loan_id) == ["DELINQUENCY_PAUSE"]
    assert kinds(changes, late.loan_id) == ["DISBURSEMENT", "STATE"]
    caught_up = await cluster.lending.ListLoanChanges(
        pb.ListLoanChangesRequest(after=await feed_end(cluster))
    )
    assert not caught_up.changes and not caught_up.HasField("held_back_since")


async def test_a_rolled_back_change_is_not_in_the_feed(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id)
    start = await feed_end(cluster)
    async with lending_db(cluster).pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO delinquency_pauses
                           (loan_id, start_date, end_date, reason, requested_by)
                       VALUES ($1, '2026-06-01', '2026-06-30', 'entered twice', 'cw-01')""",
                    loan.loan_id,
                )
                raise RuntimeError("the clerk cancels")
    assert kinds(await changes_after(cluster, start), loan.loan_id) == []


def _token(key: list[object], query: object = LOAN_CHANGES) -> str:
    """A cursor as the service encodes one, around a key of the test's choosing."""
    return pagination.encode(key, query)


@pytest.mark.parametrize(
    "after",
    [
        "not-a-cursor",
        base64.urlsafe_b64encode(json.dumps({"k": ["1", 1]}).encode()).decode(),
        _token(["12; DROP TABLE loans", 1]),
        _token(["-5", 1]),
        _token([str(2**64), 1]),
        _token(["100", "1"]),
        _token(["100", 1], query="loans"),  # a cursor of another query
    ],
)
async def test_a_cursor_the_service_did_not_issue_is_refused(cluster: Cluster, after: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.lending.ListLoanChanges(pb.ListLoanChangesRequest(after=after))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["after"]
    assert [v.reason for v in violations_in(refused.value)] == ["CURSOR_NOT_ISSUED"]


async def test_a_page_size_out_of_range_is_refused(cluster: Cluster) -> None:
    for size in (-1, 501):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.lending.ListLoanChanges(pb.ListLoanChangesRequest(page_size=size))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(refused.value) == ["page_size"]


async def test_a_read_may_wait_for_the_next_change(cluster: Cluster) -> None:
    """Long polling: with `max_wait`, a read at the end of the feed answers as soon as a
    change is there, or with the same cursor once the wait is over."""
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id)
    end = await feed_end(cluster)

    async def disburse_soon() -> None:
        await asyncio.sleep(0.5)
        await disburse(cluster.lending, loan.loan_id, 120_000, START)

    disbursing = asyncio.create_task(disburse_soon())
    started = time.monotonic()
    page = await cluster.lending.ListLoanChanges(
        pb.ListLoanChangesRequest(after=end, max_wait=duration_pb2.Duration(seconds=10))
    )
    answered_in = time.monotonic() - started
    await disbursing
    assert 0.4 < answered_in < 5, answered_in

    assert kinds(list(page.changes), loan.loan_id) == ["DISBURSEMENT", "STATE"]

    started = time.monotonic()
    last = await cluster.lending.ListLoanChanges(
        pb.ListLoanChangesRequest(after=page.cursor, max_wait=duration_pb2.Duration(seconds=1))
    )
    waited = time.monotonic() - started
    assert (list(last.changes), last.cursor) == ([], page.cursor)
    assert 0.9 < waited < 3, waited


@pytest.mark.parametrize("seconds", [-1, 31])
async def test_a_wait_out_of_range_is_refused(cluster: Cluster, seconds: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.lending.ListLoanChanges(
            pb.ListLoanChangesRequest(max_wait=duration_pb2.Duration(seconds=seconds))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["max_wait"]


async def test_a_wait_ends_before_the_callers_deadline(cluster: Cluster) -> None:
    """A caller whose deadline comes before `max_wait` gets an empty page in time, not
    DEADLINE_EXCEEDED."""
    end = await feed_end(cluster)
    started = time.monotonic()
    page = await cluster.lending.ListLoanChanges(
        pb.ListLoanChangesRequest(after=end, max_wait=duration_pb2.Duration(seconds=10)),
        timeout=1.5,
    )
    assert (list(page.changes), page.cursor) == ([], end)
    assert time.monotonic() - started < 1.5


async def test_a_wait_the_caller_gives_up_is_counted_as_cancelled(cluster: Cluster) -> None:
    """The caller cancels while the read waits: the call ends, and the service counts
    (and logs) it as CANCELLED, not as an unknown failure."""
    service = "mineaction.lending.v1.LendingService"
    labels = {"service": service, "method": "ListLoanChanges", "code": "CANCELLED"}

    def cancelled() -> float:
        return REGISTRY.get_sample_value("mineaction_rpc_requests_total", labels) or 0.0

    before = cancelled()
    end = await feed_end(cluster)
    call = cluster.lending.ListLoanChanges(
        pb.ListLoanChangesRequest(after=end, max_wait=duration_pb2.Duration(seconds=10))
    )
    await asyncio.sleep(0.5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):  # the service sees the cancellation a moment later
        if cancelled() > before:
            break
        await asyncio.sleep(0.1)
    assert cancelled() == before + 1
