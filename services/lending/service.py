"""LendingService: loan products, applications, the committee decision, tranches,
repayments, reschedules, hardship pauses, write-offs, the fund and the portfolio."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
import yaml

from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import localized_text_pb2, sex_pb2
from services.common import audit, idempotency, pagination
from services.common.config import Settings
from services.common.db import Connection, Database, fetch_one
from services.common.districts import require_known_district, require_known_district_filter
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    invalid,
)
from services.common.idempotency import once_per_request
from services.common.identity import same_person
from services.common.interceptors import GuardedServer
from services.common.money import qepik_and_manat
from services.common.programme_time import not_after_today, programme_today
from services.common.protoconv import from_proto_date, proto_date, timestamp
from services.common.server import ServiceSpec
from services.lending import arrears, figures, ledger
from services.lending.figures import LoanFigures
from services.lending.ledger import FUND_CASH, LOANS_RECEIVABLE, Posting
from services.lending.lifecycle import check_transition
from services.lending.repayments import METHOD as REPAYMENT_METHOD
from services.lending.repayments import Repayment, RepaymentGroups
from services.lending.schedule import (
    Instalment,
    build_schedule,
    instalments_from_arrays,
    owing_again,
)

HERE = Path(__file__).parent
DEFAULT_FUND = "main"


# The change feed's cursors are page tokens of this one query.
LOAN_CHANGES = "loan-changes"
# How often a long-polling ListLoanChanges looks again while it waits.
CHANGES_POLL_SECONDS = 0.5


def tranche_to_proto(row: Mapping[str, Any] | asyncpg.Record) -> pb.Tranche:
    on = row["disbursement_date"]
    return pb.Tranche(
        sequence=row["sequence"],
        amount_minor=row["amount_minor"],
        kind=pb.DisbursementKind.Value(f"DISBURSEMENT_KIND_{row['kind']}"),
        description=row["description"],
        disbursement_date=proto_date(on if isinstance(on, date) else date.fromisoformat(on)),
        transaction_id=row["transaction_id"],
    )


def loan_to_proto(
    row: Mapping[str, Any] | asyncpg.Record,
    numbers: LoanFigures | None = None,
    tranches: Sequence[Mapping[str, Any]] = (),
    as_of: date | None = None,
) -> pb.Loan:
    """`as_of`: the day `numbers` are as of (none: an application's answer, no figures)."""
    numbers = numbers or LoanFigures()
    # A loan is in a delinquency bucket on the figures' date when it had principal
    # outstanding then, whatever its state today: not before its first tranche (the
    # portfolio report leaves it out then too), still after a later closure or write-off.
    active = numbers.outstanding_minor > 0
    return pb.Loan(
        loan_id=row["loan_id"],
        survivor_id=row["survivor_id"],
        product_id=row["product_id"],
        product_version=row["product_version"],
        state=pb.LoanState.Value(f"LOAN_STATE_{row['state']}"),
        principal_minor=row["principal_minor"],
        currency_code=row["currency_code"],
        district_code=row["district_code"],
        borrower_sex=row["borrower_sex"],
        borrower_age_band=row["borrower_age_band"],
        fund_id=row["fund_id"],
        submitted_by=row["submitted_by"],
        approved_by=row["approved_by"],
        committee_decision_ref=row["committee_decision_ref"],
        disbursed_minor=numbers.disbursed_minor,
        repaid_principal_minor=numbers.repaid_minor,
        outstanding_principal_minor=numbers.outstanding_minor,
        written_off_minor=numbers.written_off_minor,
        recovered_minor=numbers.recovered_minor,
        days_past_due=numbers.days_past_due,
        bucket=pb.DelinquencyBucket.Value(
            f"DELINQUENCY_BUCKET_{arrears.bucket(numbers.days_past_due)}"
        )
        if active
        else pb.DELINQUENCY_BUCKET_UNSPECIFIED,
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
        purpose=row["purpose"],
        tranches=[tranche_to_proto(t) for t in tranches],
        close_date=proto_date(row["close_date"]) if row.get("close_date") else None,
        figures_as_of=proto_date(as_of) if as_of else None,
    )


def repayment_answer(
    request: pb.RecordRepaymentRequest, stored: bytes
) -> pb.RecordRepaymentResponse:
    """The response to a repayment from the answer stored with its request_id: JSON from
    lending_repay_once (migrations 009, 014, 015), the same for the first call and every replay; or
    the protobuf that earlier versions stored (a serialized message never starts with
    '{': that would be field 15 as a group)."""
    if not stored.startswith(b"{"):
        return pb.RecordRepaymentResponse.FromString(stored)
    answer = json.loads(stored)
    loan = dict(answer["loan"])
    for column in ("created_at", "updated_at"):
        loan[column] = datetime.fromisoformat(loan[column])
    allocation = arrears.allocate_cumulative(
        answer["cumulative_minor"], answer["repaid_against_revision"], request.amount_minor
    )
    if answer.get("close_date"):  # this repayment closed the loan (migration 015)
        loan["close_date"] = date.fromisoformat(answer["close_date"])
    # Answers stored before migration 022 said no date (their figures were the payment's).
    as_of = date.fromisoformat(answer["as_of"]) if "as_of" in answer else None
    return pb.RecordRepaymentResponse(
        loan=loan_to_proto(loan, LoanFigures.of(answer), answer["tranches"], as_of),
        repayment=pb.Repayment(
            transaction_id=answer["transaction_id"],
            amount_minor=request.amount_minor,
            payment_date=request.payment_date,
            allocations=[
                pb.Allocation(instalment_number=n, principal_minor=a) for n, a in allocation
            ],
        ),
    )


def product_to_proto(row: asyncpg.Record) -> pb.LoanProduct:
    return pb.LoanProduct(
        product_id=row["product_id"],
        version=row["version"],
        name=localized_text_pb2.LocalizedText(en=row["name_en"], az=row["name_az"]),
        min_amount_minor=row["min_amount_minor"],
        max_amount_minor=row["max_amount_minor"],
        term_months=row["term_months"],
        grace_months=row["grace_months"],
        moratorium_months=row["moratorium_months"],
        max_tranches=row["max_tranches"],
        currency_code=row["currency_code"],
    )


async def seed_reference_data(conn: Connection) -> None:
    """Products and funds shipped in products.yaml; existing versions are never changed."""
    data = yaml.safe_load((HERE / "products.yaml").read_text(encoding="utf-8"))
    for p in data["products"]:
        await conn.execute(
            """INSERT INTO loan_products (product_id, version, name_en, name_az,
                   min_amount_minor, max_amount_minor, term_months, grace_months,
                   moratorium_months, max_tranches)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING""",
            p["product_id"],
            p["version"],
            p["name"]["en"],
            p["name"]["az"],
            p["min_amount_minor"],
            p["max_amount_minor"],
            p["term_months"],
            p["grace_months"],
            p["moratorium_months"],
            p["max_tranches"],
        )
    for f in data["funds"]:
        await ledger.open_fund(
            conn,
            fund_id=f["fund_id"],
            name_en=f["name"]["en"],
            name_az=f["name"]["az"],
            committed_capital_minor=f["committed_capital_minor"],
            committed_on=f["committed_on"],
        )


# The loan row with its all-time balances, read once the loan is locked (_LOCK_LOAN).
_LOAN_WITH_BALANCES = """
SELECT l.*, p.term_months, p.grace_months, p.moratorium_months, p.max_tranches,
    b.disbursed, b.repaid, b.written_off, b.recovered, b.outstanding, b.last_value_date,
    b.first_disbursed_on, rv.base_repaid_minor, rv.due_dates, rv.cumulative_minor,
    rv.last_posting_id AS revision_last_posting_id
FROM loans l
JOIN loan_products p ON p.product_id = l.product_id AND p.version = l.product_version
CROSS JOIN LATERAL (
    SELECT
        coalesce(sum(ps.amount_minor) FILTER (
            WHERE ps.account = 'LOANS_RECEIVABLE' AND ps.kind = 'DISBURSEMENT'), 0)::bigint
            AS disbursed,
        coalesce(-sum(ps.amount_minor) FILTER (
            WHERE ps.account = 'LOANS_RECEIVABLE'
              AND ps.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')), 0)::bigint AS repaid,
        coalesce(-sum(ps.amount_minor) FILTER (
            WHERE ps.account = 'LOANS_RECEIVABLE' AND ps.kind = 'WRITE_OFF'), 0)::bigint
            AS written_off,
        coalesce(-sum(ps.amount_minor) FILTER (
            WHERE ps.account = 'RECOVERY_INCOME'), 0)::bigint AS recovered,
        coalesce(sum(ps.amount_minor) FILTER (
            WHERE ps.account = 'LOANS_RECEIVABLE'), 0)::bigint AS outstanding,
        max(ps.value_date) AS last_value_date,
        min(ps.value_date) FILTER (WHERE ps.kind = 'DISBURSEMENT') AS first_disbursed_on
    FROM postings ps
    WHERE ps.loan_id = l.loan_id AND ps.account IN ('LOANS_RECEIVABLE', 'RECOVERY_INCOME')
) b
LEFT JOIN LATERAL (
    SELECT r.base_repaid_minor, r.due_dates, r.cumulative_minor, r.last_posting_id
    FROM schedule_revisions r
    WHERE r.loan_id = l.loan_id ORDER BY r.revision DESC LIMIT 1
) rv ON true
WHERE l.loan_id = $1
"""
_LOCK_LOAN = "SELECT true FROM loans WHERE loan_id = $1 FOR UPDATE"


def _counted_by_the_schedule(loan: asyncpg.Record, repayment: asyncpg.Record) -> bool:
    """The loan's schedule was rebuilt from what was outstanding after `repayment` (a
    reschedule counts the repayments before it as repaid): reversing it would undo
    principal the schedule counts as paid."""
    if not loan["base_repaid_minor"]:
        return False  # a schedule that counts no repayment as made before it
    if loan["revision_last_posting_id"] is None:  # a revision made before it was kept
        return bool(loan["repaid"] - repayment["amount"] < loan["base_repaid_minor"])
    return bool(repayment["last_posting_id"] <= loan["revision_last_posting_id"])


REPAID_BEFORE_CONFIRMATION = "the loan was repaid in full before the write-off was confirmed"


# A loan's statement: its transactions by value date, each reversal right after what it
# cancels (`pos`: the original's first posting), a payment written off with the loan
# after it bounced right after the loan's write-off (`pos`: the write-off's), otherwise
# in the order recorded (the first posting's id). The principal outstanding after each
# counts the transactions that stand: a reversed one and its reversal cancel out, and
# leave it as it was (a bounced payment never reduced what is owed; counted, a payment
# back-dated before a reversed one would show the loan below zero in between). Lines of
# one position show the total after all of them (a write-off and what it took in later
# leave nothing owed). The running sum is taken over the whole loan before the page is
# cut, so every page carries it.
_STATEMENT = """
    SELECT * FROM (
        SELECT t.transaction_id, t.kind, t.value_date, t.recorded_by, t.memo, t.reverses,
               t.created_at, r.transaction_id AS reversed_by, p.seq, p.accounts, p.amounts,
               p.principal_change, coalesce(w.seq, o.seq, p.seq) AS pos,
               (coalesce(sum(p.principal_change)
                    FILTER (WHERE t.reverses IS NULL AND r.transaction_id IS NULL)
                    OVER (ORDER BY t.value_date, coalesce(w.seq, o.seq, p.seq)), 0))::bigint
                   AS outstanding_after
        FROM ledger_transactions t
        CROSS JOIN LATERAL (
            SELECT min(posting_id) AS seq,
                   array_agg(account ORDER BY posting_id) AS accounts,
                   array_agg(amount_minor ORDER BY posting_id) AS amounts,
                   coalesce(sum(amount_minor) FILTER (WHERE account = 'LOANS_RECEIVABLE'),
                       0)::bigint AS principal_change
            FROM postings WHERE transaction_id = t.transaction_id) p
        LEFT JOIN LATERAL (
            SELECT min(posting_id) AS seq FROM postings WHERE transaction_id = t.reverses) o
            ON true
        LEFT JOIN LATERAL (  -- the loan's write-off, for every WRITE_OFF of the loan
            SELECT min(posting_id) AS seq FROM postings
            WHERE loan_id = t.loan_id AND kind = 'WRITE_OFF') w
            ON t.kind = 'WRITE_OFF'
        LEFT JOIN ledger_transactions r ON r.reverses = t.transaction_id
            AND (r.loan_seq IS NULL OR r.loan_seq <= $6)
        -- As recorded when the first page was read ($6: migration 023); numberless
        -- transactions came before any.
        WHERE t.loan_id = $1 AND (t.loan_seq IS NULL OR t.loan_seq <= $6)) s
    WHERE $2::date IS NULL OR (value_date, pos, seq) > ($2::date, $3::bigint, $4::bigint)
    ORDER BY value_date, pos, seq
    LIMIT $5"""
# The statement's page key: where the last line stands, and the last transaction counted.
_STATEMENT_KEY = (pagination.iso_date, pagination.int64, pagination.int64, pagination.int64)


def _statement_place(token: str, query: dict[str, str]) -> list[Any] | None:
    """Where a statement's next page starts, and the last transaction it counts; a token
    issued before statements were one snapshot carries no such number (None)."""
    try:
        return pagination.decode(token, query, _STATEMENT_KEY)
    except InvalidArgument:
        earlier = pagination.decode(token, query, _STATEMENT_KEY[:3])
        return None if earlier is None else [*earlier, None]


def _statement_line(row: asyncpg.Record) -> pb.LoanTransaction:
    amounts = row["amounts"]
    return pb.LoanTransaction(
        transaction_id=row["transaction_id"],
        kind=pb.LoanTransactionKind.Value(f"LOAN_TRANSACTION_KIND_{row['kind']}"),
        value_date=proto_date(row["value_date"]),
        # Debits equal credits: either side is the transaction's amount.
        amount_minor=sum(a for a in amounts if a > 0),
        principal_change_minor=row["principal_change"],
        outstanding_after_minor=row["outstanding_after"],
        postings=[
            pb.LedgerPosting(account=pb.LedgerAccount.Value(f"LEDGER_ACCOUNT_{a}"), amount_minor=m)
            for a, m in zip(row["accounts"], amounts, strict=True)
        ],
        recorded_by=row["recorded_by"],
        memo=row["memo"],
        reverses_transaction_id=row["reverses"] or "",
        reversed_by_transaction_id=row["reversed_by"] or "",
        record_time=timestamp(row["created_at"]),
    )


_LATEST_REVISION = """SELECT revision, effective_date, reason FROM schedule_revisions
    WHERE loan_id = $1 ORDER BY revision DESC LIMIT 1"""


def _before_revision(latest: asyncpg.Record, field: str, why: str) -> InvalidArgument:
    """A date before the loan's schedule was last rebuilt (a tranche, a reschedule)."""
    return invalid(
        field,
        f"must not be before {latest['effective_date']}, when the loan's schedule was "
        f"rebuilt ({latest['reason']}): {why}",
        "BEFORE_SCHEDULE_REVISION",
    )


async def _no_write_off_proposed(conn: Connection, loan_id: str, doing: str) -> None:
    """FAILED_PRECONDITION (WRITE_OFF_PROPOSED) while a write-off of the loan waits for its
    confirmation: a tranche, a reschedule or a pause then would be undone by it."""
    proposal = await _open_proposal(conn, loan_id)
    if proposal is not None:
        raise FailedPrecondition(
            f"loan {loan_id} has a write-off proposed by {proposal['proposed_by']}: withdraw "
            f"it before {doing}",
            reason="WRITE_OFF_PROPOSED",
            metadata={"loan_id": loan_id},
        )


async def _open_proposal(conn: Connection, loan_id: str) -> asyncpg.Record | None:
    """The loan's write-off proposal awaiting its confirmation, if any."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM write_off_proposals WHERE loan_id = $1", loan_id
    )
    return row


def _check_proposal_seen(
    request: pb.ConfirmLoanWriteOffRequest | pb.WithdrawLoanWriteOffRequest,
    proposal: asyncpg.Record,
) -> None:
    """The open proposal is the one the person acting saw, when they say which: another
    made meanwhile (the one seen withdrawn through the API) is not confirmed or withdrawn
    in its place."""
    if (request.proposed_by and not same_person(proposal["proposed_by"], request.proposed_by)) or (
        request.proposal_reason and proposal["reason"] != request.proposal_reason
    ):
        raise FailedPrecondition(
            f"the write-off proposal open on loan {request.loan_id} is {proposal['proposed_by']}'s "
            f"({proposal['reason']}), not the one seen; read the loan again",
            reason="PROPOSAL_CHANGED",
            metadata={"loan_id": request.loan_id, "proposed_by": proposal["proposed_by"]},
        )


def _proposal_to_proto(row: asyncpg.Record) -> pb.LoanWriteOffProposal:
    return pb.LoanWriteOffProposal(
        loan_id=row["loan_id"],
        reason=row["reason"],
        proposed_by=row["proposed_by"],
        write_off_date=proto_date(row["write_off_date"]),
        propose_time=timestamp(row["created_at"]),
    )


async def _write_off_reversed(
    conn: Connection,
    fund_id: str,
    request: pb.ReverseRepaymentRequest,
    amount: int,
) -> tuple[date, str]:
    """A repayment of a loan since written off never came: what it repaid was owed when
    the loan was written off, and is written off with it, on the write-off's day, so the
    loan stays closed owing nothing. Returns that day and the transaction's id."""
    on = await conn.fetchval(
        "SELECT write_off_date FROM write_offs WHERE loan_id = $1", request.loan_id
    )
    txn_id = await ledger.write_off(
        conn,
        fund_id=fund_id,
        loan_id=request.loan_id,
        amount_minor=amount,
        value_date=on,
        recorded_by=request.reversed_by,
        memo=f"bounced {request.transaction_id}, written off with the loan",
    )
    return on, txn_id


class LendingServicer(pb_grpc.LendingServiceServicer):
    def __init__(self, db: Database, *, accept_future_dates: bool = False) -> None:
        self.db = db
        self.repayments = RepaymentGroups(db)
        self.accept_future_dates = accept_future_dates

    def _not_after_today(self, field: str, on: date) -> None:
        """Money is received, paid out or written off, and a schedule rebuilt, on a day
        that has come: a future date (a typing slip, 2030 for 2023) would count in the
        fund now and in the loan only later, and block every correction dated before it."""
        not_after_today(field, on, simulated_clock=self.accept_future_dates)

    # ----- products and applications -------------------------------------------------

    async def ListLoanProducts(
        self, request: pb.ListLoanProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoanProductsResponse:
        after = pagination.decode(request.page_token, {}, (pagination.text,))
        size = pagination.page_size(request.page_size)
        rows = await self.db.pool.fetch(
            """SELECT DISTINCT ON (product_id) * FROM loan_products
               WHERE $1::text IS NULL OR product_id > $1
               ORDER BY product_id, version DESC LIMIT $2""",
            after[0] if after else None,
            size + 1,
        )
        page = rows[:size]
        token = pagination.encode([page[-1]["product_id"]], {}) if len(rows) > size else ""
        return pb.ListLoanProductsResponse(
            loan_products=[product_to_proto(r) for r in page], next_page_token=token
        )

    async def SubmitLoanApplication(
        self, request: pb.SubmitLoanApplicationRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitLoanApplicationResponse:
        async def submit(conn: Connection) -> pb.SubmitLoanApplicationResponse:
            # Checked here, not before: a retry of an application made before the check
            # existed gets its first answer back.
            require_known_district(request.district_code)
            product = await conn.fetchrow(
                """SELECT * FROM loan_products WHERE product_id = $1
                   ORDER BY version DESC LIMIT 1""",
                request.product_id,
            )
            if product is None:
                raise invalid(
                    "product_id", f"unknown loan product {request.product_id!r}", "UNKNOWN_PRODUCT"
                )
            low, high = product["min_amount_minor"], product["max_amount_minor"]
            if not low <= request.amount_minor <= high:
                raise invalid(
                    "amount_minor",
                    f"must be from {low} to {high} qəpik for product {request.product_id}",
                    "OUTSIDE_PRODUCT_RANGE",
                )
            fund_id = request.fund_id or DEFAULT_FUND
            if not await conn.fetchval("SELECT 1 FROM funds WHERE fund_id = $1", fund_id):
                raise invalid("fund_id", f"unknown fund {fund_id!r}", "UNKNOWN_FUND")
            row = await fetch_one(
                conn,
                """INSERT INTO loans (loan_id, survivor_id, product_id, product_version,
                       fund_id, state, principal_minor, currency_code, purpose,
                       district_code, borrower_sex, borrower_age_band, submitted_by)
                   VALUES ($1, $2, $3, $4, $5, 'SUBMITTED', $6, $7, $8, $9, $10, $11, $12)
                   RETURNING *""",
                f"loan-{uuid.uuid4().hex[:20]}",
                request.survivor_id,
                product["product_id"],
                product["version"],
                fund_id,
                request.amount_minor,
                request.currency_code,
                request.purpose,
                request.district_code,
                request.borrower_sex,
                request.borrower_age_band,
                request.submitted_by,
            )
            await self._record_event(
                conn, row["loan_id"], None, "SUBMITTED", request.submitted_by, ""
            )
            return pb.SubmitLoanApplicationResponse(loan=loan_to_proto(row))

        return await once_per_request(self.db, request, pb.SubmitLoanApplicationResponse, submit)

    async def ApproveLoan(
        self, request: pb.ApproveLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApproveLoanResponse:
        async def approve(conn: Connection) -> pb.ApproveLoanResponse:
            loan = await self._loan_for_update(conn, request.loan_id)
            check_transition(loan["loan_id"], loan["state"], "APPROVED")
            if same_person(loan["submitted_by"], request.approved_by):
                raise PermissionDenied(
                    "four eyes: whoever submitted an application cannot approve it",
                    reason="FOUR_EYES",
                )
            row = await fetch_one(
                conn,
                """UPDATE loans SET state = 'APPROVED', approved_by = $2,
                       committee_decision_ref = $3, updated_at = now()
                   WHERE loan_id = $1 RETURNING *""",
                request.loan_id,
                request.approved_by,
                request.committee_decision_ref,
            )
            await self._record_event(
                conn,
                request.loan_id,
                "SUBMITTED",
                "APPROVED",
                request.approved_by,
                request.note,
            )
            return pb.ApproveLoanResponse(loan=loan_to_proto(row))

        return await once_per_request(self.db, request, pb.ApproveLoanResponse, approve)

    async def RejectLoan(
        self, request: pb.RejectLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.RejectLoanResponse:
        async def reject(conn: Connection) -> pb.RejectLoanResponse:
            row = await self._close_application(
                conn, request.loan_id, "REJECTED", request.rejected_by, request.reason
            )
            return pb.RejectLoanResponse(loan=loan_to_proto(row))

        return await once_per_request(self.db, request, pb.RejectLoanResponse, reject)

    async def WithdrawLoan(
        self, request: pb.WithdrawLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithdrawLoanResponse:
        async def withdraw(conn: Connection) -> pb.WithdrawLoanResponse:
            row = await self._close_application(
                conn, request.loan_id, "WITHDRAWN", request.withdrawn_by, request.reason
            )
            return pb.WithdrawLoanResponse(loan=loan_to_proto(row))

        return await once_per_request(self.db, request, pb.WithdrawLoanResponse, withdraw)

    async def _close_application(
        self, conn: Connection, loan_id: str, target: str, actor: str, note: str
    ) -> asyncpg.Record:
        loan = await self._loan_for_update(conn, loan_id)
        check_transition(loan_id, loan["state"], target)
        row = await fetch_one(
            conn,
            "UPDATE loans SET state = $2, updated_at = now() WHERE loan_id = $1 RETURNING *",
            loan_id,
            target,
        )
        await self._record_event(conn, loan_id, loan["state"], target, actor, note)
        return row

    # ----- reads ----------------------------------------------------------------------

    async def GetLoan(
        self, request: pb.GetLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoanResponse:
        as_of = from_proto_date(request.as_of) if request.HasField("as_of") else programme_today()
        async with self.db.pool.acquire() as conn:
            loans = await self._loan_views(conn, [request.loan_id], as_of)
            if not loans:
                raise NotFound(f"loan {request.loan_id} does not exist")
            response = pb.GetLoanResponse(loan=loans[0])
            if loans[0].state == pb.LOAN_STATE_ACTIVE:
                proposal = await _open_proposal(conn, request.loan_id)
                if proposal is not None:
                    response.write_off_proposal.CopyFrom(_proposal_to_proto(proposal))
            if request.include_schedule:
                revision = await self._revision_in_force(
                    conn, request.loan_id, as_of if request.HasField("as_of") else None
                )
                if revision is not None:
                    response.schedule.CopyFrom(
                        await self._schedule_view(conn, request.loan_id, revision, as_of)
                    )
            return response

    async def ListLoans(
        self, request: pb.ListLoansRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoansResponse:
        require_known_district_filter(request.district_code)
        state = (
            pb.LoanState.Name(request.state).removeprefix("LOAN_STATE_") if request.state else ""
        )
        query = {
            "survivor_id": request.survivor_id,
            "state": state,
            "district": request.district_code,
        }
        after = pagination.decode(request.page_token, query, (pagination.text,))
        size = pagination.page_size(request.page_size)
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT * FROM loans
                   WHERE ($1 = '' OR survivor_id = $1) AND ($2 = '' OR state = $2)
                     AND ($3 = '' OR district_code = $3) AND ($4::text IS NULL OR loan_id > $4)
                   ORDER BY loan_id LIMIT $5""",
                request.survivor_id,
                state,
                request.district_code,
                after[0] if after else None,
                size + 1,
            )
            page = rows[:size]
            loans = await self._loan_views(conn, [r["loan_id"] for r in page], programme_today())
        token = pagination.encode([page[-1]["loan_id"]], query) if len(rows) > size else ""
        return pb.ListLoansResponse(loans=loans, next_page_token=token)

    async def GetRepaymentSchedule(
        self, request: pb.GetRepaymentScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRepaymentScheduleResponse:
        as_of = from_proto_date(request.as_of) if request.HasField("as_of") else programme_today()
        async with self.db.pool.acquire() as conn:
            loan = await conn.fetchrow(
                "SELECT state FROM loans WHERE loan_id = $1", request.loan_id
            )
            if loan is None:
                raise NotFound(f"loan {request.loan_id} does not exist")
            revision = request.revision or await self._revision_in_force(
                conn, request.loan_id, as_of if request.HasField("as_of") else None
            )
            if revision is None:
                raise NotFound(
                    f"loan {request.loan_id} has no schedule in force on {as_of} (none before "
                    "its first disbursement)"
                    if request.HasField("as_of")
                    else f"loan {request.loan_id} has no schedule until it is disbursed"
                )
            schedule = await self._schedule_view(conn, request.loan_id, revision, as_of)
        return pb.GetRepaymentScheduleResponse(schedule=schedule)

    async def GetFund(
        self, request: pb.GetFundRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFundResponse:
        async with self.db.pool.acquire() as conn:
            s = await ledger.fund_statement(conn, request.fund_id)
        return pb.GetFundResponse(
            fund=pb.Fund(
                fund_id=s.fund_id,
                name=localized_text_pb2.LocalizedText(en=s.name_en, az=s.name_az),
                currency_code=s.currency_code,
                committed_capital_minor=s.committed_capital_minor,
                disbursed_minor=s.disbursed_minor,
                repaid_principal_minor=s.repaid_principal_minor,
                written_off_minor=s.written_off_minor,
                recovered_minor=s.recovered_minor,
                available_minor=s.available_minor,
                outstanding_principal_minor=s.outstanding_principal_minor,
            )
        )

    async def GetPortfolioReport(
        self, request: pb.GetPortfolioReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPortfolioReportResponse:
        as_of = from_proto_date(request.as_of)
        # Payments after today are not known yet: a report dated later would count every
        # instalment falling due by then as overdue, and PAR30 with them.
        self._not_after_today("as_of", as_of)
        if request.fund_id and not await self.db.pool.fetchval(
            "SELECT 1 FROM funds WHERE fund_id = $1", request.fund_id
        ):
            raise invalid("fund_id", f"unknown fund {request.fund_id!r}", "UNKNOWN_FUND")
        async with self.db.pool.acquire() as conn:
            rows = await figures.portfolio(conn, as_of, request.fund_id)
        report = pb.PortfolioReport(as_of=request.as_of)
        for row in rows:
            numbers = pb.PortfolioFigures(
                active_loans=row.active_loans,
                outstanding_principal_minor=row.outstanding_minor,
                par30_outstanding_minor=row.par30_minor,
                par30_basis_points=row.par30_basis_points,
                repayment_rate_basis_points=row.repayment_rate_basis_points,
                buckets=[
                    pb.BucketCount(
                        bucket=pb.DelinquencyBucket.Value(f"DELINQUENCY_BUCKET_{name}"),
                        loans=loans,
                        outstanding_principal_minor=outstanding,
                    )
                    for name, (loans, outstanding) in row.buckets.items()
                ],
            )
            if row.dimension == "total":
                report.total.CopyFrom(numbers)
            elif row.dimension == "district":
                report.by_district.add(key=str(row.key), figures=numbers)
            elif row.dimension == "sex":
                report.by_sex.add(
                    key=sex_pb2.Sex.Name(sex_pb2.Sex.ValueType(int(row.key or 0))), figures=numbers
                )
            else:
                report.by_product.add(key=str(row.key), figures=numbers)
        if not report.HasField("total"):
            report.total.CopyFrom(pb.PortfolioFigures(repayment_rate_basis_points=10_000))
        return pb.GetPortfolioReportResponse(report=report)

    async def ListLoanChanges(
        self, request: pb.ListLoanChangesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoanChangesResponse:
        after = pagination.decode(
            request.after, LOAN_CHANGES, (pagination.xid8, pagination.int64), field="after"
        )
        wait = request.max_wait.ToTimedelta().total_seconds() if request.HasField("max_wait") else 0
        remaining = context.time_remaining()
        if remaining is not None:  # answer (empty) before the caller's deadline passes
            wait = max(0.0, min(wait, remaining - CHANGES_POLL_SECONDS))
        deadline = time.monotonic() + wait
        size = pagination.page_size(request.page_size)
        while True:
            rows = await self._loan_changes(after, size)
            if rows or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(CHANGES_POLL_SECONDS, deadline - time.monotonic()))
        response = pb.ListLoanChangesResponse(
            changes=[
                pb.LoanChange(
                    loan_id=r["loan_id"],
                    survivor_id=r["survivor_id"],
                    kind=pb.LoanChangeKind.Value(f"LOAN_CHANGE_KIND_{r['kind']}"),
                    change_time=timestamp(r["changed_at"]),
                )
                for r in rows
            ],
            cursor=(
                pagination.encode([rows[-1]["txid"], rows[-1]["change_id"]], LOAN_CHANGES)
                if rows
                else request.after
            ),
        )
        if len(rows) < size:
            held_back = await self.db.pool.fetchval(
                """SELECT min(changed_at) FROM loan_changes
                   WHERE txid >= pg_snapshot_xmin(pg_current_snapshot())"""
            )
            if held_back is not None:
                response.held_back_since.CopyFrom(timestamp(held_back))
        return response

    async def _loan_changes(self, after: list[Any] | None, size: int) -> list[asyncpg.Record]:
        return await self.db.pool.fetch(
            """SELECT c.txid::text AS txid, c.change_id, c.loan_id, c.kind, c.changed_at,
                      l.survivor_id
               FROM loan_changes c JOIN loans l USING (loan_id)
               WHERE (c.txid, c.change_id) > ($1::text::xid8, $2::bigint)
                 -- Only transactions older than any still running: none can commit
                 -- a change behind the cursor afterwards.
                 AND c.txid < pg_snapshot_xmin(pg_current_snapshot())
               ORDER BY c.txid, c.change_id LIMIT $3""",
            *(after or ("0", 0)),
            size,
        )

    async def ListLoanTransactions(
        self, request: pb.ListLoanTransactionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoanTransactionsResponse:
        query = {"loan_id": request.loan_id}
        after = _statement_place(request.page_token, query)
        size = pagination.page_size(request.page_size)
        async with self.db.pool.acquire() as conn:
            # The first page fixes the transactions the statement counts: those numbered
            # so far (in a token from before migration 023, those recorded so far).
            counted = await conn.fetchval(
                """SELECT coalesce(max(t.loan_seq), 0) FROM loans l
                   LEFT JOIN ledger_transactions t USING (loan_id)
                   WHERE l.loan_id = $1 GROUP BY l.loan_id""",
                request.loan_id,
            )
            if counted is None:
                raise NotFound(f"loan {request.loan_id} does not exist")
            if after is not None and after[3] is not None:
                counted = after[3]
            rows = await conn.fetch(
                _STATEMENT, request.loan_id, *(after[:3] if after else (None,) * 3), size + 1,
                counted,
            )  # fmt: skip
        page = rows[:size]
        last = page[-1] if len(rows) > size else None
        token = (
            pagination.encode(
                [last["value_date"].isoformat(), last["pos"], last["seq"], counted], query
            )
            if last
            else ""
        )
        return pb.ListLoanTransactionsResponse(
            transactions=[_statement_line(r) for r in page], next_page_token=token
        )

    # ----- money ------------------------------------------------------------------------

    async def DisburseTranche(
        self, request: pb.DisburseTrancheRequest, context: grpc.aio.ServicerContext
    ) -> pb.DisburseTrancheResponse:
        on = from_proto_date(request.disbursement_date)

        async def disburse(conn: Connection) -> pb.DisburseTrancheResponse:
            self._not_after_today("disbursement_date", on)
            loan = await self._loan_for_update(conn, request.loan_id)
            if loan["state"] not in ("APPROVED", "ACTIVE"):
                check_transition(loan["loan_id"], loan["state"], "ACTIVE")
            # The loan is thought uncollectable: money paid out now would be written off
            # with the rest at the confirmation.
            await _no_write_off_proposed(conn, request.loan_id, "paying out a tranche")
            tranches = await conn.fetch(
                "SELECT * FROM tranches WHERE loan_id = $1 ORDER BY sequence",
                request.loan_id,
            )
            remaining = loan["principal_minor"] - loan["disbursed"]
            if request.amount_minor > remaining:
                raise invalid(
                    "amount_minor",
                    f"only {remaining} qəpik of the approved principal is undisbursed",
                    "ABOVE_APPROVED_PRINCIPAL",
                )
            if tranches and on < tranches[-1]["disbursement_date"]:
                raise invalid(
                    "disbursement_date",
                    "must not be before the previous tranche "
                    f"({tranches[-1]['disbursement_date']})",
                    "BEFORE_DISBURSEMENT",
                )
            if len(tranches) >= loan["max_tranches"]:
                raise FailedPrecondition(
                    f"the product allows {loan['max_tranches']} tranche(s)",
                    reason="MAX_TRANCHES",
                )
            if tranches:
                await self._check_further_tranche(conn, request.loan_id, on)
                # Dated before a payment already recorded, it would re-spread instalments
                # that payment was allocated to.
                self._check_not_before_latest(loan, on, "disbursement_date")
            cash = await ledger.lock_fund_available(conn, loan["fund_id"])
            if cash.committed_on is not None and on < cash.committed_on:
                # A slip of the year (2016 for 2026) would pay out of a fund before it
                # had any money, and date the loan's whole schedule a decade early.
                raise invalid(
                    "disbursement_date",
                    f"must not be before fund {loan['fund_id']} was committed "
                    f"({cash.committed_on})",
                    "BEFORE_FUND_COMMITTED",
                )
            if request.amount_minor > cash.available_minor:
                raise FailedPrecondition(
                    f"fund {loan['fund_id']} has {cash.available_minor} qəpik available; the "
                    f"tranche is {request.amount_minor} qəpik",
                    reason="INSUFFICIENT_FUNDS",
                    metadata={
                        "fund_id": loan["fund_id"],
                        "available_minor": str(cash.available_minor),
                    },
                )
            kind = pb.DisbursementKind.Name(request.kind).removeprefix("DISBURSEMENT_KIND_")
            sequence = len(tranches) + 1
            txn_id = await ledger.post(
                conn,
                fund_id=loan["fund_id"],
                loan_id=request.loan_id,
                kind="DISBURSEMENT",
                value_date=on,
                recorded_by=request.disbursed_by,
                memo=f"tranche {sequence}: {request.description}",
                postings=[
                    Posting(LOANS_RECEIVABLE, request.amount_minor, request.loan_id),
                    Posting(FUND_CASH, -request.amount_minor, request.loan_id),
                ],
            )
            tranche = await fetch_one(
                conn,
                """INSERT INTO tranches (loan_id, sequence, amount_minor, kind, description,
                       disbursement_date, transaction_id, disbursed_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
                request.loan_id,
                sequence,
                request.amount_minor,
                kind,
                request.description,
                on,
                txn_id,
                request.disbursed_by,
            )
            # The schedule covers everything disbursed, anchored on the first tranche.
            anchor = tranches[0]["disbursement_date"] if tranches else on
            await self._insert_revision(
                conn,
                request.loan_id,
                sequence,
                build_schedule(
                    loan["disbursed"] + request.amount_minor,
                    anchor,
                    loan["term_months"],
                    loan["grace_months"],
                    loan["moratorium_months"],
                ),
                effective_date=on,
                base_repaid=0,
                reason="initial" if sequence == 1 else f"tranche {sequence} disbursed",
                created_by=request.disbursed_by,
            )
            if loan["state"] == "APPROVED":
                await self._set_state(
                    conn, request.loan_id, "APPROVED", "ACTIVE", request.disbursed_by, ""
                )
            return pb.DisburseTrancheResponse(
                loan=await self._loan_after(conn, loan, on),
                tranche=tranche_to_proto(tranche),
            )

        return await once_per_request(self.db, request, pb.DisburseTrancheResponse, disburse)

    async def _check_further_tranche(self, conn: Connection, loan_id: str, on: date) -> None:
        """A later tranche re-spreads the whole schedule, so it must come before the
        first instalment falls due and before any reschedule; and none is paid out once the
        loan has been repaid in full: what was not disbursed lapsed then, and a reversal
        that reopens the loan owes the payment again, it does not revive the rest."""
        # Any reschedule, not only the latest revision's: a payment that bounced after a
        # reschedule is owed again in a revision of its own (_owe_again).
        latest = await fetch_one(
            conn,
            """SELECT r.revision, min(i.due_date) AS first_due,
                      EXISTS (SELECT 1 FROM schedule_revisions s WHERE s.loan_id = $1
                              AND s.reason LIKE 'rescheduled:%') AS rescheduled,
                      EXISTS (SELECT 1 FROM loan_events e WHERE e.loan_id = $1
                              AND e.to_state = 'CLOSED_OBLIGATIONS_MET') AS repaid_once
               FROM schedule_revisions r JOIN instalments i USING (loan_id, revision)
               WHERE r.loan_id = $1 GROUP BY r.revision
               ORDER BY r.revision DESC LIMIT 1""",
            loan_id,
        )
        if latest["repaid_once"]:
            raise FailedPrecondition(
                f"loan {loan_id} was repaid in full once: the principal not disbursed then "
                "lapsed, and a reversal that reopened the loan does not pay it out",
                reason="TRANCHE_LAPSED",
            )
        if latest["rescheduled"] or on >= latest["first_due"]:
            raise FailedPrecondition(
                "a further tranche must be disbursed before the first instalment falls due "
                f"({latest['first_due']}) and before any reschedule",
                reason="TRANCHE_AFTER_REPAYMENT_START",
            )

    async def RecordRepayment(
        self, request: pb.RecordRepaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordRepaymentResponse:
        # once_per_request in one statement, with the calls that arrive meanwhile
        # (services/lending/repayments.py): key, repayment, answer and audit entry.
        paid_on = from_proto_date(request.payment_date)
        self._not_after_today("payment_date", paid_on)
        digest = idempotency.payload_hash(request)
        written = await self.repayments.record(
            Repayment(request, paid_on, digest, ledger.new_transaction_id(), audit.current_call())
        )
        if written.outcome == "OK":
            return repayment_answer(request, bytes(written.answer or b""))
        if written.outcome == "REPLAY":
            idempotency.check_replay(
                written.stored_method,
                written.stored_payload_hash,
                request_id=request.request_id,
                method=REPAYMENT_METHOD,
                digest=digest,
            )
            return repayment_answer(request, bytes(written.answer or b""))
        return await self._repayment_refused(written.outcome, written.detail, request, paid_on)

    async def _repayment_refused(
        self,
        outcome: str,
        detail: Mapping[str, object],
        request: pb.RecordRepaymentRequest,
        paid_on: date,
    ) -> pb.RecordRepaymentResponse:
        """lending_repay_once's refusal (nothing was written) as its gRPC error; a
        written-off loan takes the recovery path instead, as its own idempotent call."""
        if outcome == "WRITTEN_OFF":

            async def recover(conn: Connection) -> pb.RecordRepaymentResponse:
                loan = await self._loan_for_update(conn, request.loan_id)
                if loan["state"] != "CLOSED_WRITTEN_OFF":  # changed since: ask again
                    raise FailedPrecondition(
                        f"loan {request.loan_id} changed while recording; retry",
                        reason="LOAN_CHANGED",
                    )
                return await self._record_recovery(conn, loan, request, paid_on)

            return await once_per_request(self.db, request, pb.RecordRepaymentResponse, recover)
        if outcome == "NOT_ACTIVE":
            raise FailedPrecondition(
                f"loan {request.loan_id} is {detail.get('state')}; repayments need an "
                "ACTIVE (or, as recoveries, a written-off) loan",
                reason="LOAN_NOT_ACTIVE",
            )
        if outcome == "BEFORE_DISBURSEMENT":
            raise invalid(
                "payment_date",
                f"must not be before the first disbursement ({detail.get('first_disbursed_on')})",
                "BEFORE_DISBURSEMENT",
            )
        if outcome == "BEFORE_SCHEDULE_REVISION":
            raise _before_revision(
                await fetch_one(self.db.pool, _LATEST_REVISION, request.loan_id),
                "payment_date",
                "a payment dated earlier would count against a schedule that did not include "
                "it; date it on or after that day",
            )
        if outcome == "OVERPAYMENT":
            raise invalid(
                "amount_minor",
                f"overpayment: only {qepik_and_manat(cast(int, detail['outstanding']))} "
                "is outstanding",
                "OVERPAYMENT",
            )
        raise invalid("loan_id", f"unknown loan {request.loan_id!r}", "LOAN_NOT_FOUND")

    async def _record_recovery(
        self,
        conn: Connection,
        loan: asyncpg.Record,
        request: pb.RecordRepaymentRequest,
        paid_on: date,
    ) -> pb.RecordRepaymentResponse:
        """Money received after a write-off goes back to the fund as a recovery."""
        written_off_on = await conn.fetchval(
            "SELECT write_off_date FROM write_offs WHERE loan_id = $1", request.loan_id
        )
        if paid_on < written_off_on:
            raise invalid(
                "payment_date",
                f"a recovery must not be dated before the write-off ({written_off_on})",
                "BEFORE_WRITE_OFF",
            )
        unrecovered = loan["written_off"] - loan["recovered"]
        if request.amount_minor > unrecovered:
            raise invalid(
                "amount_minor",
                f"overpayment: only {qepik_and_manat(unrecovered)} written off is unrecovered",
                "OVERPAYMENT",
            )
        txn_id = await ledger.post(
            conn,
            fund_id=loan["fund_id"],
            loan_id=request.loan_id,
            kind="RECOVERY",
            value_date=paid_on,
            recorded_by=request.received_by,
            memo=request.channel,
            postings=[
                Posting(FUND_CASH, request.amount_minor, request.loan_id),
                Posting(ledger.RECOVERY_INCOME, -request.amount_minor, request.loan_id),
            ],
        )
        return pb.RecordRepaymentResponse(
            loan=await self._loan_after(conn, loan, paid_on),
            repayment=pb.Repayment(
                transaction_id=txn_id,
                amount_minor=request.amount_minor,
                payment_date=request.payment_date,
                recovery=True,
            ),
        )

    async def ReverseRepayment(
        self, request: pb.ReverseRepaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReverseRepaymentResponse:
        async def reverse(conn: Connection) -> pb.ReverseRepaymentResponse:
            loan = await self._loan_for_update(conn, request.loan_id)
            # Money leaves the fund's cash: it takes its turn with disbursements, which
            # check the balance under this lock (a bounce is recorded even if it leaves
            # the fund short; the statement shows it, and tranches wait for the money).
            await ledger.lock_fund(conn, loan["fund_id"])
            original = await conn.fetchrow(
                """SELECT t.*, r.transaction_id AS reversed_by_txn,
                       (SELECT sum(amount_minor) FROM postings p
                        WHERE p.transaction_id = t.transaction_id
                          AND p.account = 'FUND_CASH') AS amount,
                       (SELECT max(posting_id) FROM postings p
                        WHERE p.transaction_id = t.transaction_id) AS last_posting_id
                   FROM ledger_transactions t
                   LEFT JOIN ledger_transactions r ON r.reverses = t.transaction_id
                   WHERE t.transaction_id = $1 AND t.loan_id = $2""",
                request.transaction_id,
                request.loan_id,
            )
            if original is None or original["kind"] not in ledger.REVERSAL_OF:
                raise invalid(
                    "transaction_id",
                    f"no repayment or recovery {request.transaction_id!r} on this loan",
                    "TRANSACTION_NOT_FOUND",
                )
            if original["reversed_by_txn"] is not None:
                raise FailedPrecondition(
                    f"transaction {request.transaction_id} was already reversed by "
                    f"{original['reversed_by_txn']}",
                    reason="ALREADY_REVERSED",
                )
            reopen = written_off = False
            replaced: list[asyncpg.Record] = []
            if original["kind"] == "RECOVERY":
                if loan["state"] != "CLOSED_WRITTEN_OFF":  # pragma: no cover - invariant
                    raise FailedPrecondition("recoveries exist only on written-off loans")
            else:  # a repayment: the loan is ACTIVE, repaid or written off since
                reopen = loan["state"] == "CLOSED_OBLIGATIONS_MET"
                written_off = loan["state"] == "CLOSED_WRITTEN_OFF"
                # A schedule rebuilt since counts it as paid: it is owed again there
                # (below). Written off since, it is written off with the loan instead.
                if not written_off:
                    replaced = await self._schedules_counting(conn, loan, original)
            reversal_id = await ledger.reverse(
                conn,
                request.transaction_id,
                recorded_by=request.reversed_by,
                memo=request.reason,
            )
            amount = int(original["amount"])  # a sum: numeric in PostgreSQL
            shown_on = original["value_date"]
            write_off_id = ""
            if written_off:
                shown_on, write_off_id = await _write_off_reversed(
                    conn, loan["fund_id"], request, amount
                )
                # Not a write-off decided anew: it follows from the one two people
                # approved; the loan's history says who added it, and why.
                await self._record_event(
                    conn,
                    request.loan_id,
                    "CLOSED_WRITTEN_OFF",
                    "CLOSED_WRITTEN_OFF",
                    request.reversed_by,
                    f"{qepik_and_manat(amount)} written off with the loan "
                    f"({write_off_id}): repayment {request.transaction_id} reversed "
                    f"({reversal_id}): {request.reason}",
                )
            if reopen:
                await self._set_state(
                    conn,
                    request.loan_id,
                    "CLOSED_OBLIGATIONS_MET",
                    "ACTIVE",
                    request.reversed_by,
                    f"reopened by reversal {reversal_id}: {request.reason}",
                )
                # A write-off proposed before the loan was repaid is not open again: it was
                # about a loan the borrower then repaid.
                await self._withdraw_proposal(
                    conn, request.loan_id, request.reversed_by, REPAID_BEFORE_CONFIRMATION
                )
            revision = 0
            if replaced:
                revision = await self._owe_again(conn, request, replaced, amount)
                await self._record_event(
                    conn,
                    request.loan_id,
                    "ACTIVE",
                    "ACTIVE",
                    request.reversed_by,
                    f"{qepik_and_manat(amount)} owed again from schedule revision {revision}: "
                    f"repayment {request.transaction_id}, made before the schedule was "
                    f"rebuilt, reversed ({reversal_id}): {request.reason}",
                )
            return pb.ReverseRepaymentResponse(
                loan=await self._loan_after(conn, loan, shown_on),
                reversal_transaction_id=reversal_id,
                write_off_transaction_id=write_off_id,
                schedule_revision=revision,
            )

        return await once_per_request(self.db, request, pb.ReverseRepaymentResponse, reverse)

    async def RescheduleLoan(
        self, request: pb.RescheduleLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.RescheduleLoanResponse:
        effective = from_proto_date(request.effective_date)

        async def reschedule(conn: Connection) -> pb.RescheduleLoanResponse:
            self._not_after_today("effective_date", effective)
            loan = await self._active_loan(conn, request.loan_id, "rescheduling")
            # A loan rescheduled as its write-off waits for a second approver would be
            # written off moments after its borrower was given a new schedule.
            await _no_write_off_proposed(conn, request.loan_id, "rescheduling it")
            self._check_not_before_disbursement(loan, effective, "effective_date")
            self._check_not_before_latest(loan, effective, "effective_date")
            if request.additional_grace_months >= request.new_term_months:
                raise invalid(
                    "additional_grace_months",
                    "must be less than new_term_months",
                    "GRACE_NOT_LESS_THAN_TERM",
                )
            latest = await fetch_one(conn, _LATEST_REVISION, request.loan_id)
            if effective < latest["effective_date"]:
                raise _before_revision(
                    latest,
                    "effective_date",
                    "a schedule taking effect earlier would replace it before it began, and "
                    "it would never be in force",
                )
            revision = latest["revision"] + 1
            await self._insert_revision(
                conn,
                request.loan_id,
                revision,
                build_schedule(
                    loan["outstanding"],
                    effective,
                    request.new_term_months,
                    request.additional_grace_months,
                    loan["moratorium_months"],
                ),
                effective_date=effective,
                base_repaid=loan["repaid"],
                reason=f"rescheduled: {request.reason}",
                created_by=request.requested_by,
            )
            await self._record_event(
                conn,
                request.loan_id,
                "ACTIVE",
                "ACTIVE",
                request.requested_by,
                f"rescheduled (revision {revision}): {request.reason}",
            )
            return pb.RescheduleLoanResponse(
                loan=await self._loan_after(conn, loan, effective),
                schedule=await self._schedule_view(conn, request.loan_id, revision, effective),
            )

        return await once_per_request(self.db, request, pb.RescheduleLoanResponse, reschedule)

    async def PauseDelinquency(
        self, request: pb.PauseDelinquencyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseDelinquencyResponse:
        start, end = from_proto_date(request.start_date), from_proto_date(request.end_date)

        async def pause(conn: Connection) -> pb.PauseDelinquencyResponse:
            self._not_after_today("start_date", start)
            loan = await self._active_loan(conn, request.loan_id, "a hardship pause")
            await _no_write_off_proposed(conn, request.loan_id, "pausing its arrears")
            self._check_not_before_disbursement(loan, start, "start_date")
            await conn.execute(
                """INSERT INTO delinquency_pauses (loan_id, start_date, end_date, reason,
                       requested_by) VALUES ($1, $2, $3, $4, $5)""",
                request.loan_id,
                start,
                end,
                request.reason,
                request.requested_by,
            )
            await self._record_event(
                conn,
                request.loan_id,
                "ACTIVE",
                "ACTIVE",
                request.requested_by,
                f"delinquency paused {start} to {end}: {request.reason}",
            )
            return pb.PauseDelinquencyResponse(loan=await self._loan_after(conn, loan, end))

        return await once_per_request(self.db, request, pb.PauseDelinquencyResponse, pause)

    async def ProposeLoanWriteOff(
        self, request: pb.ProposeLoanWriteOffRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProposeLoanWriteOffResponse:
        on = from_proto_date(request.write_off_date)

        async def propose(conn: Connection) -> pb.ProposeLoanWriteOffResponse:
            self._not_after_today("write_off_date", on)
            loan = await self._loan_for_update(conn, request.loan_id)
            check_transition(request.loan_id, loan["state"], "CLOSED_WRITTEN_OFF")
            self._check_not_before_latest(loan, on, "write_off_date")
            row = await conn.fetchrow(
                """INSERT INTO write_off_proposals (loan_id, reason, write_off_date, proposed_by)
                   VALUES ($1, $2, $3, $4) ON CONFLICT (loan_id) DO NOTHING RETURNING *""",
                request.loan_id,
                request.reason,
                on,
                request.proposed_by,
            )
            if row is None:
                raise FailedPrecondition(
                    f"loan {request.loan_id} already has a write-off proposal waiting for "
                    "confirmation",
                    reason="WRITE_OFF_ALREADY_PROPOSED",
                    metadata={"loan_id": request.loan_id},
                )
            await self._record_event(
                conn,
                request.loan_id,
                "ACTIVE",
                "ACTIVE",
                request.proposed_by,
                f"write-off proposed: {request.reason}",
            )
            return pb.ProposeLoanWriteOffResponse(proposal=_proposal_to_proto(row))

        return await once_per_request(self.db, request, pb.ProposeLoanWriteOffResponse, propose)

    async def ConfirmLoanWriteOff(
        self, request: pb.ConfirmLoanWriteOffRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmLoanWriteOffResponse:
        async def confirm(conn: Connection) -> pb.ConfirmLoanWriteOffResponse:
            loan = await self._loan_for_update(conn, request.loan_id)
            proposal = await _open_proposal(conn, request.loan_id)
            if proposal is None:
                raise FailedPrecondition(
                    f"loan {request.loan_id} has no write-off proposal to confirm",
                    reason="NO_WRITE_OFF_PROPOSAL",
                    metadata={"loan_id": request.loan_id},
                )
            _check_proposal_seen(request, proposal)
            if same_person(proposal["proposed_by"], request.confirmed_by):
                raise PermissionDenied(
                    "four eyes: whoever proposed a write-off cannot confirm it",
                    reason="FOUR_EYES",
                )
            check_transition(request.loan_id, loan["state"], "CLOSED_WRITTEN_OFF")
            # The proposal's date; a payment recorded since (the four-eyes lag) moves it to
            # that payment's date, so the ledger's dates never run backwards.
            on = max(proposal["write_off_date"], loan["last_value_date"] or date.min)
            txn_id = await ledger.write_off(
                conn,
                fund_id=loan["fund_id"],
                loan_id=request.loan_id,
                amount_minor=loan["outstanding"],
                value_date=on,
                recorded_by=request.confirmed_by,
                memo=proposal["reason"],
            )
            await conn.execute(
                """INSERT INTO write_offs (loan_id, transaction_id, write_off_date, reason,
                       proposed_by, confirmed_by) VALUES ($1, $2, $3, $4, $5, $6)""",
                request.loan_id,
                txn_id,
                on,
                proposal["reason"],
                proposal["proposed_by"],
                request.confirmed_by,
            )
            await self._set_state(
                conn,
                request.loan_id,
                "ACTIVE",
                "CLOSED_WRITTEN_OFF",
                request.confirmed_by,
                f"proposed by {proposal['proposed_by']}: {proposal['reason']}",
            )
            return pb.ConfirmLoanWriteOffResponse(loan=await self._loan_after(conn, loan, on))

        return await once_per_request(self.db, request, pb.ConfirmLoanWriteOffResponse, confirm)

    async def WithdrawLoanWriteOff(
        self, request: pb.WithdrawLoanWriteOffRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithdrawLoanWriteOffResponse:
        async def withdraw(conn: Connection) -> pb.WithdrawLoanWriteOffResponse:
            loan = await self._loan_for_update(conn, request.loan_id)
            if loan["state"] != "ACTIVE":  # a confirmed write-off is final
                raise FailedPrecondition(
                    f"loan {request.loan_id} is {loan['state']}; only an active loan's open "
                    "write-off proposal can be withdrawn",
                    reason="LOAN_NOT_ACTIVE",
                )
            proposal = await _open_proposal(conn, request.loan_id)
            if proposal is None:
                raise FailedPrecondition(
                    f"loan {request.loan_id} has no write-off proposal to withdraw",
                    reason="NO_WRITE_OFF_PROPOSAL",
                    metadata={"loan_id": request.loan_id},
                )
            _check_proposal_seen(request, proposal)
            row = await self._withdraw_proposal(
                conn, request.loan_id, request.withdrawn_by, request.reason
            )
            assert row is not None  # the loan's row is locked: the proposal is still there
            return pb.WithdrawLoanWriteOffResponse(
                withdrawn=_proposal_to_proto(row),
                withdrawn_by=row["withdrawn_by"],
                withdraw_time=timestamp(row["withdrawn_at"]),
            )

        return await once_per_request(self.db, request, pb.WithdrawLoanWriteOffResponse, withdraw)

    async def _withdraw_proposal(
        self, conn: Connection, loan_id: str, withdrawn_by: str, reason: str
    ) -> asyncpg.Record | None:
        """The active loan's open write-off proposal, moved to write_off_withdrawals
        (append-only) with who withdrew it and why, and in the loan's events; None when
        none is open."""
        row: asyncpg.Record | None = await conn.fetchrow(
            """WITH proposal AS (
                   DELETE FROM write_off_proposals WHERE loan_id = $1 RETURNING *)
               INSERT INTO write_off_withdrawals (loan_id, reason, write_off_date,
                   proposed_by, proposed_at, withdrawn_by, withdraw_reason)
               SELECT loan_id, reason, write_off_date, proposed_by, created_at, $2, $3
               FROM proposal
               RETURNING loan_id, reason, write_off_date, proposed_by,
                         proposed_at AS created_at, withdrawn_by, withdrawn_at""",
            loan_id,
            withdrawn_by,
            reason,
        )
        if row is not None:
            await self._record_event(
                conn, loan_id, "ACTIVE", "ACTIVE", withdrawn_by, f"write-off withdrawn: {reason}"
            )
        return row

    @staticmethod
    def _check_not_before_latest(loan: asyncpg.Record, on: date, field: str) -> None:
        """A write-off, a reschedule or a further tranche re-reads the loan from its
        date on: one dated before what is recorded already would rewrite its past."""
        if loan["last_value_date"] is not None and on < loan["last_value_date"]:
            raise invalid(
                field,
                f"must not be before the loan's latest transaction ({loan['last_value_date']})",
                "BEFORE_LATEST_TRANSACTION",
            )

    # ----- helpers ------------------------------------------------------------------------

    @staticmethod
    async def _loan_for_update(conn: Connection, loan_id: str) -> asyncpg.Record:
        """The loan, locked, with its balances. Locked first and read after: a statement
        that waits for the lock reads the postings as they were when it began, so a
        payment committed while it waited would be missed (a write-off of more than is
        owed, two tranches beyond the principal)."""
        if not await conn.fetchval(_LOCK_LOAN, loan_id):
            # A mutation naming no loan is bad input, as an unknown product is.
            raise invalid("loan_id", f"unknown loan {loan_id!r}", "LOAN_NOT_FOUND")
        return await fetch_one(conn, _LOAN_WITH_BALANCES, loan_id)

    async def _active_loan(self, conn: Connection, loan_id: str, action: str) -> asyncpg.Record:
        loan = await self._loan_for_update(conn, loan_id)
        if loan["state"] != "ACTIVE":
            raise FailedPrecondition(
                f"loan {loan_id} is {loan['state']}; only an ACTIVE loan allows {action}",
                reason="LOAN_NOT_ACTIVE",
                metadata={"loan_id": loan_id, "state": loan["state"]},
            )
        return loan

    @staticmethod
    def _check_not_before_disbursement(loan: asyncpg.Record, on: date, field: str) -> None:
        first = loan["first_disbursed_on"]
        if first is not None and on < first:
            raise invalid(
                field, f"must not be before the first disbursement ({first})", "BEFORE_DISBURSEMENT"
            )

    async def _loan_view(self, conn: Connection, loan_id: str, as_of: date) -> pb.Loan:
        row = await fetch_one(conn, figures.LOAN_VIEW_ONE, as_of, loan_id)
        return loan_to_proto(row, LoanFigures.of(row), json.loads(row["tranches"]), as_of)

    async def _loan_after(self, conn: Connection, loan: asyncpg.Record, on: date) -> pb.Loan:
        """A mutation's answer: the loan as of the mutation's date `on`, or as of its latest
        transaction when that is later (`loan` as read before the mutation): a payment or a
        reversal recorded late shows everything recorded since, not a loan without them."""
        latest = loan["last_value_date"]
        return await self._loan_view(conn, loan["loan_id"], max(on, latest or on))

    @staticmethod
    async def _loan_views(conn: Connection, loan_ids: list[str], as_of: date) -> list[pb.Loan]:
        """Loans with their figures as of a date and their tranches, in the given order."""
        rows = {r["loan_id"]: r for r in await conn.fetch(figures.LOAN_VIEW, as_of, loan_ids)}
        return [
            loan_to_proto(row, LoanFigures.of(row), json.loads(row["tranches"]), as_of)
            for row in (rows[i] for i in loan_ids if i in rows)
        ]

    @staticmethod
    async def _insert_revision(
        conn: Connection,
        loan_id: str,
        revision: int,
        instalments: Sequence[Instalment],
        *,
        effective_date: date,
        base_repaid: int,
        reason: str,
        created_by: str,
        counting_to: int | None = None,
    ) -> None:
        """A new schedule revision. Its base counts the loan's postings so far, or those
        up to the posting `counting_to` (a revision owing a bounced payment again counts
        what the one it replaces did)."""
        await conn.execute(
            """WITH rev AS (
                   INSERT INTO schedule_revisions (loan_id, revision, effective_date,
                       principal_minor, base_repaid_minor, reason, created_by, due_dates,
                       cumulative_minor, last_posting_id, postings_until)
                   SELECT $1, $2, $3, $4, $5, $6, $7, $9, $11, coalesce($12::bigint, p.last),
                          p.last
                   FROM (SELECT max(posting_id) AS last FROM postings WHERE loan_id = $1) p)
               INSERT INTO instalments (loan_id, revision, number, due_date, principal_minor,
                   cumulative_minor)
               SELECT $1, $2, n, d, p, c
               FROM unnest($8::int[], $9::date[], $10::bigint[], $11::bigint[]) AS x(n, d, p, c)""",
            loan_id,
            revision,
            effective_date,
            instalments[-1].cumulative_minor,
            base_repaid,
            reason,
            created_by,
            [i.number for i in instalments],
            [i.due_date for i in instalments],
            [i.principal_minor for i in instalments],
            [i.cumulative_minor for i in instalments],
            counting_to,
        )

    @staticmethod
    async def _schedules_counting(
        conn: Connection, loan: asyncpg.Record, repayment: asyncpg.Record
    ) -> list[asyncpg.Record]:
        """The schedules in force since `repayment` that were rebuilt counting it as paid
        (a reschedule's base counts every repayment posted before it). A revision is in
        force from its day until a later one takes effect. A schedule made before
        revisions kept which postings they count cannot say: a repayment it may count
        is refused, as it always was."""
        live = await conn.fetch(
            """SELECT r.revision, r.effective_date, r.base_repaid_minor, r.last_posting_id,
                      r.due_dates, r.cumulative_minor
               FROM schedule_revisions r
               WHERE r.loan_id = $1 AND r.base_repaid_minor > 0
                 AND NOT EXISTS (SELECT 1 FROM schedule_revisions later
                                 WHERE later.loan_id = r.loan_id AND later.revision > r.revision
                                   AND later.effective_date <= r.effective_date)
               ORDER BY r.revision""",
            loan["loan_id"],
        )
        if any(r["last_posting_id"] is None for r in live) and _counted_by_the_schedule(
            loan, repayment
        ):
            raise FailedPrecondition(
                "the loan was rescheduled after this repayment, before schedules kept which "
                "payments they count; reversing it would undo principal the schedule counts "
                "as repaid",
                reason="REPAYMENT_BEFORE_RESCHEDULE",
            )
        return [
            r
            for r in live
            if r["last_posting_id"] is not None
            and r["last_posting_id"] >= repayment["last_posting_id"]
        ]

    async def _owe_again(
        self,
        conn: Connection,
        request: pb.ReverseRepaymentRequest,
        replaced: list[asyncpg.Record],
        amount: int,
    ) -> int:
        """Each of the `replaced` schedules (_schedules_counting) again, as a new revision
        from the same day that owes the amount: its base repaid less the amount, the amount
        spread over its instalments (schedule.owing_again). The ones replaced stay
        readable. Returns the revision now in force."""
        revision = await conn.fetchval(
            "SELECT max(revision) FROM schedule_revisions WHERE loan_id = $1", request.loan_id
        )
        for row in replaced:
            instalments = instalments_from_arrays(row["due_dates"], row["cumulative_minor"])
            revision += 1
            await self._insert_revision(
                conn,
                request.loan_id,
                revision,
                owing_again(instalments, amount),
                effective_date=row["effective_date"],
                base_repaid=row["base_repaid_minor"] - amount,
                reason=f"revision {row['revision']} owing {qepik_and_manat(amount)} again: "
                f"repayment {request.transaction_id} reversed: {request.reason}",
                created_by=request.reversed_by,
                counting_to=row["last_posting_id"],
            )
        return int(revision)

    @staticmethod
    async def _revision_in_force(conn: Connection, loan_id: str, as_of: date | None) -> int | None:
        """The loan's schedule in force on `as_of` (the latest revision effective by
        then), or its latest when no date is asked for; None before its first
        disbursement."""
        revision: int | None = await conn.fetchval(
            """SELECT max(revision) FROM schedule_revisions
               WHERE loan_id = $1 AND ($2::date IS NULL OR effective_date <= $2)""",
            loan_id,
            as_of,
        )
        return revision

    async def _schedule_view(
        self, conn: Connection, loan_id: str, revision: int, as_of: date
    ) -> pb.RepaymentSchedule:
        rev = await _Revision.load(conn, loan_id, revision)
        # A superseded revision is shown as it stood when it was replaced.
        if rev.superseded_on is not None:
            as_of = min(as_of, rev.superseded_on)
        context = await fetch_one(
            conn,
            """SELECT
                 coalesce((SELECT -sum(p.amount_minor) FROM postings p
                   WHERE p.loan_id = $1 AND p.account = 'LOANS_RECEIVABLE'
                     AND p.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')
                     AND p.value_date <= $2
                     AND ($3::timestamptz IS NULL OR EXISTS (
                         SELECT 1 FROM ledger_transactions t
                         WHERE t.transaction_id = p.transaction_id AND t.created_at < $3))
                     AND ($4::bigint IS NULL OR p.posting_id <= $4)
                   ), 0)::bigint AS repaid,
                 (SELECT write_off_date FROM write_offs WHERE loan_id = $1) AS written_off_on,
                 (SELECT coalesce(array_agg(start_date ORDER BY pause_id), '{}') FROM
                     delinquency_pauses WHERE loan_id = $1) AS pause_starts,
                 (SELECT coalesce(array_agg(end_date ORDER BY pause_id), '{}') FROM
                     delinquency_pauses WHERE loan_id = $1) AS pause_ends""",
            loan_id,
            as_of,
            rev.replaced_at,
            rev.recorded_until,
        )
        written_off = context["written_off_on"] is not None and context["written_off_on"] <= as_of
        # Repayments (and reversals) recorded after the replacement, even dated on or
        # before its day, belong to the revisions after it.
        repaid = context["repaid"]
        if rev.repaid_when_superseded is not None:
            repaid = min(repaid, rev.repaid_when_superseded)
        rows = arrears.statuses(
            rev.instalments,
            repaid - rev.base_repaid,
            as_of,
            zip(context["pause_starts"], context["pause_ends"], strict=True),
            written_off=written_off,
        )
        return pb.RepaymentSchedule(
            loan_id=loan_id,
            revision=rev.revision,
            reason=rev.reason,
            create_time=timestamp(rev.created_at),
            effective_date=proto_date(rev.effective_date),
            base_repaid_minor=rev.base_repaid,
            instalments=[
                pb.Instalment(
                    number=s.number,
                    due_date=proto_date(s.due_date),
                    principal_due_minor=s.principal_minor,
                    principal_paid_minor=s.paid_minor,
                    days_past_due=s.days_past_due,
                    state=pb.InstalmentState.Value(f"INSTALMENT_STATE_{s.state}"),
                )
                for s in rows
            ],
        )

    async def _set_state(
        self, conn: Connection, loan_id: str, current: str, target: str, actor: str, note: str
    ) -> None:
        await conn.execute(
            "UPDATE loans SET state = $2, updated_at = now() WHERE loan_id = $1", loan_id, target
        )
        await self._record_event(conn, loan_id, current, target, actor, note)

    @staticmethod
    async def _record_event(
        conn: Connection,
        loan_id: str,
        from_state: str | None,
        to_state: str,
        actor: str,
        note: str,
    ) -> None:
        await conn.execute(
            """INSERT INTO loan_events (loan_id, from_state, to_state, actor, note)
               VALUES ($1, $2, $3, $4, $5)""",
            loan_id,
            from_state,
            to_state,
            actor,
            note,
        )


class _Revision:
    """One schedule revision with its instalments."""

    def __init__(self, row: asyncpg.Record, instalments: list[Instalment]) -> None:
        self.revision: int = row["revision"]
        self.reason: str = row["reason"]
        self.effective_date: date = row["effective_date"]
        self.base_repaid: int = row["base_repaid_minor"]
        self.created_at: datetime = row["created_at"]
        self.superseded_on: date | None = row["superseded_on"]
        # When a revision from the same day replaced this one (owing a bounced payment
        # again, _owe_again): it is shown with what was recorded before then.
        self.replaced_at: datetime | None = row["replaced_at"]
        # Replaced by a later-dated revision: the loan's last posting then.
        self.recorded_until: int | None = row["recorded_until"]
        # The same, for one replaced by a revision made before those were kept: the
        # principal repaid against the loan then, as far as can be told.
        self.repaid_when_superseded: int | None = row["repaid_when_superseded"]
        self.instalments = instalments

    @classmethod
    async def load(cls, conn: Connection, loan_id: str, revision: int | None) -> _Revision:
        rows = await conn.fetch(
            """WITH r AS (
                   SELECT r.*,
                       CASE WHEN n.effective_date > r.effective_date
                            THEN n.effective_date END AS superseded_on,
                       CASE WHEN n.effective_date <= r.effective_date
                            THEN n.created_at END AS replaced_at,
                       c.until AS recorded_until,
                       -- Replaced by a revision that cannot say (made before migration
                       -- 020, or owing a bounced payment again before 024): what was
                       -- repaid then, from the payments it counts, or a reschedule's
                       -- count (a tranche's said none).
                       CASE WHEN n.effective_date <= r.effective_date OR c.until IS NOT NULL
                            THEN NULL
                       WHEN n.last_posting_id IS NOT NULL THEN
                           (SELECT coalesce(-sum(p.amount_minor), 0)::bigint FROM postings p
                            WHERE p.loan_id = r.loan_id AND p.account = 'LOANS_RECEIVABLE'
                              AND p.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')
                              AND p.posting_id <= n.last_posting_id)
                       WHEN n.base_repaid_minor > 0 THEN n.base_repaid_minor
                       END AS repaid_when_superseded
                   FROM schedule_revisions r
                   LEFT JOIN schedule_revisions n
                     ON n.loan_id = r.loan_id AND n.revision = r.revision + 1
                   -- The loan's last posting when a later-dated revision replaced this one:
                   -- it is read with the postings up to there, and none later (a reversal
                   -- recorded since, dated back, included). Kept since migration 024;
                   -- before, a revision's last_posting_id was the same, but for one
                   -- owing a bounced payment again (_owe_again's reason), which copies
                   -- the count of the one it replaces. One replaced from its own day is
                   -- read by replaced_at instead.
                   LEFT JOIN LATERAL (
                       SELECT CASE WHEN n.effective_date > r.effective_date THEN
                           coalesce(n.postings_until,
                               CASE WHEN n.reason NOT LIKE 'revision % owing % again: %'
                                    THEN n.last_posting_id END)
                           END AS until) c ON true
                   WHERE r.loan_id = $1
                     AND r.revision = coalesce($2, (SELECT max(revision)
                         FROM schedule_revisions WHERE loan_id = $1)))
               SELECT r.*, i.number, i.due_date, i.principal_minor AS due,
                   i.cumulative_minor
               FROM r JOIN instalments i USING (loan_id, revision) ORDER BY i.number""",
            loan_id,
            revision,
        )
        if not rows:
            raise NotFound(f"loan {loan_id} has no schedule revision {revision or ''}".strip())
        return cls(
            rows[0],
            [Instalment(r["number"], r["due_date"], r["due"], r["cumulative_minor"]) for r in rows],
        )


async def attach(
    server: GuardedServer, db: Database, settings: Settings, resources: AsyncExitStack
) -> None:
    async with db.transaction() as conn:
        await seed_reference_data(conn)
    servicer = LendingServicer(db, accept_future_dates=settings.lending_accept_future_dates)
    pb_grpc.add_LendingServiceServicer_to_server(servicer, server)


SPEC = ServiceSpec(
    name="lending",
    full_name="mineaction.lending.v1.LendingService",
    migrations_dir=HERE / "migrations",
    attach=attach,
    address=lambda settings: settings.lending_address,
)
