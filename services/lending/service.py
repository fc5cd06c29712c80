"""LendingService: loan products, applications and the committee decision."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import yaml
from google.protobuf import timestamp_pb2
from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import localized_text_pb2

from services.common import pagination
from services.common.config import Settings
from services.common.db import Connection, Database, fetch_one
from services.common.errors import NotFound, PermissionDenied, Unimplemented, invalid
from services.common.idempotency import idempotent
from services.common.server import ServiceSpec
from services.lending.lifecycle import check_transition

HERE = Path(__file__).parent
DEFAULT_FUND = "main"


def _timestamp(moment: Any) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def loan_to_proto(row: asyncpg.Record) -> pb.Loan:
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
        outstanding_principal_minor=0,
        create_time=_timestamp(row["created_at"]),
        update_time=_timestamp(row["updated_at"]),
        purpose=row["purpose"],
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
        await conn.execute(
            """INSERT INTO funds (fund_id, name_en, name_az, committed_capital_minor)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            f["fund_id"],
            f["name"]["en"],
            f["name"]["az"],
            f["committed_capital_minor"],
        )


class LendingServicer(pb_grpc.LendingServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ListLoanProducts(
        self, request: pb.ListLoanProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoanProductsResponse:
        after = pagination.decode(request.page_token, {})
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
        async with self.db.transaction() as conn:

            async def submit() -> pb.SubmitLoanApplicationResponse:
                product = await conn.fetchrow(
                    """SELECT * FROM loan_products WHERE product_id = $1
                       ORDER BY version DESC LIMIT 1""",
                    request.product_id,
                )
                if product is None:
                    raise invalid("product_id", f"unknown loan product {request.product_id!r}")
                low, high = product["min_amount_minor"], product["max_amount_minor"]
                if not low <= request.amount_minor <= high:
                    raise invalid(
                        "amount_minor",
                        f"must be from {low} to {high} qəpik for product {request.product_id}",
                    )
                fund_id = request.fund_id or DEFAULT_FUND
                if not await conn.fetchval("SELECT 1 FROM funds WHERE fund_id = $1", fund_id):
                    raise invalid("fund_id", f"unknown fund {fund_id!r}")
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

            return await idempotent(
                conn,
                method="SubmitLoanApplication",
                request=request,
                response_type=pb.SubmitLoanApplicationResponse,
                effect=submit,
            )

    async def ApproveLoan(
        self, request: pb.ApproveLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApproveLoanResponse:
        async with self.db.transaction() as conn:

            async def approve() -> pb.ApproveLoanResponse:
                loan = await self._loan_for_update(conn, request.loan_id)
                check_transition(loan["loan_id"], loan["state"], "APPROVED")
                if loan["submitted_by"] == request.approved_by:
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

            return await idempotent(
                conn,
                method="ApproveLoan",
                request=request,
                response_type=pb.ApproveLoanResponse,
                effect=approve,
            )

    async def RejectLoan(
        self, request: pb.RejectLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.RejectLoanResponse:
        async with self.db.transaction() as conn:

            async def reject() -> pb.RejectLoanResponse:
                loan = await self._loan_for_update(conn, request.loan_id)
                check_transition(loan["loan_id"], loan["state"], "REJECTED")
                row = await fetch_one(
                    conn,
                    """UPDATE loans SET state = 'REJECTED', updated_at = now()
                       WHERE loan_id = $1 RETURNING *""",
                    request.loan_id,
                )
                await self._record_event(
                    conn,
                    request.loan_id,
                    "SUBMITTED",
                    "REJECTED",
                    request.rejected_by,
                    request.reason,
                )
                return pb.RejectLoanResponse(loan=loan_to_proto(row))

            return await idempotent(
                conn,
                method="RejectLoan",
                request=request,
                response_type=pb.RejectLoanResponse,
                effect=reject,
            )

    async def GetLoan(
        self, request: pb.GetLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoanResponse:
        row = await self.db.pool.fetchrow("SELECT * FROM loans WHERE loan_id = $1", request.loan_id)
        if row is None:
            raise NotFound(f"loan {request.loan_id} does not exist")
        return pb.GetLoanResponse(loan=loan_to_proto(row))

    async def ListLoans(
        self, request: pb.ListLoansRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLoansResponse:
        state = (
            pb.LoanState.Name(request.state).removeprefix("LOAN_STATE_") if request.state else ""
        )
        query = {
            "survivor_id": request.survivor_id,
            "state": state,
            "district": request.district_code,
        }
        after = pagination.decode(request.page_token, query)
        size = pagination.page_size(request.page_size)
        rows = await self.db.pool.fetch(
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
        token = pagination.encode([page[-1]["loan_id"]], query) if len(rows) > size else ""
        return pb.ListLoansResponse(loans=[loan_to_proto(r) for r in page], next_page_token=token)

    async def DisburseTranche(
        self, request: pb.DisburseTrancheRequest, context: grpc.aio.ServicerContext
    ) -> pb.DisburseTrancheResponse:
        raise Unimplemented("DisburseTranche is not available yet")

    async def RecordRepayment(
        self, request: pb.RecordRepaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordRepaymentResponse:
        raise Unimplemented("RecordRepayment is not available yet")

    async def GetRepaymentSchedule(
        self, request: pb.GetRepaymentScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRepaymentScheduleResponse:
        raise Unimplemented("GetRepaymentSchedule is not available yet")

    async def RescheduleLoan(
        self, request: pb.RescheduleLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.RescheduleLoanResponse:
        raise Unimplemented("RescheduleLoan is not available yet")

    async def PauseDelinquency(
        self, request: pb.PauseDelinquencyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseDelinquencyResponse:
        raise Unimplemented("PauseDelinquency is not available yet")

    async def WriteOffLoan(
        self, request: pb.WriteOffLoanRequest, context: grpc.aio.ServicerContext
    ) -> pb.WriteOffLoanResponse:
        raise Unimplemented("WriteOffLoan is not available yet")

    async def GetFund(
        self, request: pb.GetFundRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFundResponse:
        raise Unimplemented("GetFund is not available yet")

    async def GetPortfolioReport(
        self, request: pb.GetPortfolioReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPortfolioReportResponse:
        raise Unimplemented("GetPortfolioReport is not available yet")

    @staticmethod
    async def _loan_for_update(conn: Connection, loan_id: str) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM loans WHERE loan_id = $1 FOR UPDATE", loan_id)
        if row is None:
            raise invalid("loan_id", f"unknown loan {loan_id!r}")
        return row

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


async def attach(server: grpc.aio.Server, db: Database, settings: Settings) -> None:
    async with db.transaction() as conn:
        await seed_reference_data(conn)
    pb_grpc.add_LendingServiceServicer_to_server(LendingServicer(db), server)


SPEC = ServiceSpec(
    name="lending",
    full_name="mineaction.lending.v1.LendingService",
    migrations_dir=HERE / "migrations",
    attach=attach,
    address=lambda settings: settings.lending_address,
)
