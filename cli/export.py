"""CSV exports: loans, a loan's statement, the portfolio report and assessments. Amounts
are exact manat (two decimals, from integer qəpik) with the qəpik alongside."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import UTC, date
from typing import IO, Any

from cli.paging import pages
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.common.money import manat
from services.common.protoconv import from_proto_date, proto_date
from workers.journey.activities import loan_status

PAGE = 200


def azn(minor: int) -> str:
    """Exact manat without thousands separators: 123456 -> '1234.56'."""
    return manat(minor, grouped=False)


LOAN_COLUMNS = (
    "loan_id",
    "survivor_id",
    "product_id",
    "state",
    "fund_id",
    "district_code",
    "principal_azn",
    "disbursed_azn",
    "repaid_principal_azn",
    "outstanding_principal_azn",
    "written_off_azn",
    "recovered_azn",
    "days_past_due",
    "bucket",
    "principal_minor",
    "outstanding_principal_minor",
    "close_date",
)


async def loans(
    stub: lending_grpc.LendingServiceStub,
    state: lending_pb.LoanState.ValueType,
    district: str,
    rpc_timeout: float,
) -> AsyncIterator[list[str]]:
    def fetch(token: str) -> Awaitable[lending_pb.ListLoansResponse]:
        request = lending_pb.ListLoansRequest(
            page_size=PAGE, page_token=token, state=state, district_code=district
        )
        return stub.ListLoans(request, timeout=rpc_timeout)  # type: ignore[no-any-return]

    async for page in pages(fetch):
        for loan in page.loans:
            yield [
                loan.loan_id,
                loan.survivor_id,
                loan.product_id,
                loan_status(loan),
                loan.fund_id,
                loan.district_code,
                azn(loan.principal_minor),
                azn(loan.disbursed_minor),
                azn(loan.repaid_principal_minor),
                azn(loan.outstanding_principal_minor),
                azn(loan.written_off_minor),
                azn(loan.recovered_minor),
                str(loan.days_past_due),
                _bucket(loan.bucket),
                str(loan.principal_minor),
                str(loan.outstanding_principal_minor),
                str(from_proto_date(loan.close_date)) if loan.HasField("close_date") else "",
            ]


TRANSACTION_COLUMNS = (
    "loan_id",
    "value_date",
    "kind",
    "amount_azn",
    "principal_change_azn",
    "outstanding_after_azn",
    "recorded_by",
    "memo",
    "transaction_id",
    "reverses_transaction_id",
    "reversed_by_transaction_id",
    "record_time",
    "amount_minor",
    "principal_change_minor",
    "outstanding_after_minor",
)


async def statement(
    stub: lending_grpc.LendingServiceStub, loan_id: str, rpc_timeout: float
) -> AsyncIterator[lending_pb.LoanTransaction]:
    """A loan's ledger transactions by value date, every page."""

    def fetch(token: str) -> Awaitable[lending_pb.ListLoanTransactionsResponse]:
        request = lending_pb.ListLoanTransactionsRequest(
            loan_id=loan_id, page_size=PAGE, page_token=token
        )
        return stub.ListLoanTransactions(request, timeout=rpc_timeout)  # type: ignore[no-any-return]

    async for page in pages(fetch):
        for t in page.transactions:
            yield t


def transaction_kind(t: lending_pb.LoanTransaction) -> str:
    return lending_pb.LoanTransactionKind.Name(t.kind).removeprefix("LOAN_TRANSACTION_KIND_")


def transaction_row(loan_id: str, t: lending_pb.LoanTransaction) -> list[str]:
    return [
        loan_id,
        from_proto_date(t.value_date).isoformat(),
        transaction_kind(t),
        azn(t.amount_minor),
        azn(t.principal_change_minor),
        azn(t.outstanding_after_minor),
        spreadsheet_text(t.recorded_by),
        spreadsheet_text(t.memo),
        t.transaction_id,
        t.reverses_transaction_id,
        t.reversed_by_transaction_id,
        t.record_time.ToDatetime(UTC).isoformat(),
        str(t.amount_minor),
        str(t.principal_change_minor),
        str(t.outstanding_after_minor),
    ]


def _bucket(bucket: lending_pb.DelinquencyBucket.ValueType) -> str:
    """A loan being repaid has a bucket; any other (closed, written off) none: empty."""
    if bucket == lending_pb.DELINQUENCY_BUCKET_UNSPECIFIED:
        return ""
    return lending_pb.DelinquencyBucket.Name(bucket).removeprefix("DELINQUENCY_BUCKET_")


PORTFOLIO_COLUMNS = (
    "as_of",
    "breakdown",
    "key",
    "active_loans",
    "outstanding_principal_azn",
    "par30_outstanding_azn",
    "par30_percent",
    "repayment_rate_percent",
    "outstanding_principal_minor",
    "par30_outstanding_minor",
)


def portfolio_rows(report: lending_pb.PortfolioReport, as_of: date) -> Iterable[list[str]]:
    groups: list[tuple[str, list[tuple[str, lending_pb.PortfolioFigures]]]] = [
        ("total", [("all", report.total)]),
        ("district", [(b.key, b.figures) for b in report.by_district]),
        ("sex", [(b.key, b.figures) for b in report.by_sex]),
        ("product", [(b.key, b.figures) for b in report.by_product]),
    ]
    for breakdown, rows in groups:
        for key, f in rows:
            yield [
                as_of.isoformat(),
                breakdown,
                key,
                str(f.active_loans),
                azn(f.outstanding_principal_minor),
                azn(f.par30_outstanding_minor),
                f"{f.par30_basis_points / 100:.2f}",
                f"{f.repayment_rate_basis_points / 100:.2f}",
                str(f.outstanding_principal_minor),
                str(f.par30_outstanding_minor),
            ]


async def portfolio(
    stub: lending_grpc.LendingServiceStub, as_of: date, fund_id: str, rpc_timeout: float
) -> list[list[str]]:
    response = await stub.GetPortfolioReport(
        lending_pb.GetPortfolioReportRequest(as_of=proto_date(as_of), fund_id=fund_id),
        timeout=rpc_timeout,
    )
    return list(portfolio_rows(response.report, as_of))


ASSESSMENT_COLUMNS = (
    "assessment_id",
    "survivor_id",
    "assessment_date",
    "rule_set_id",
    "rule_set_version",
    "district_code",
    "programme_id",
    "outcome",
    "failed_rules",
    "missing_data",
    "priority_score",
    "reassessment_reason",
)


async def assessments(
    stub: eligibility_grpc.EligibilityServiceStub,
    survivor_id: str,
    district: str,
    rpc_timeout: float,
    from_date: date | None = None,
    to_date: date | None = None,
) -> AsyncIterator[list[str]]:
    def fetch(token: str) -> Awaitable[eligibility_pb.ListAssessmentsResponse]:
        request = eligibility_pb.ListAssessmentsRequest(
            page_size=PAGE, page_token=token, survivor_id=survivor_id, district_code=district
        )
        if from_date is not None:
            request.from_date.CopyFrom(proto_date(from_date))
        if to_date is not None:
            request.to_date.CopyFrom(proto_date(to_date))
        return stub.ListAssessments(request, timeout=rpc_timeout)  # type: ignore[no-any-return]

    async for page in pages(fetch):
        for a in page.assessments:
            day = from_proto_date(a.assessment_date).isoformat()
            for d in a.decisions:
                yield [
                    a.assessment_id,
                    a.survivor_id,
                    day,
                    a.rule_set_id,
                    str(a.rule_set_version),
                    a.district_code,
                    d.programme_id,
                    eligibility_pb.Outcome.Name(d.outcome).removeprefix("OUTCOME_"),
                    " ".join(r.rule_id for r in d.rule_results if not r.passed),
                    " ".join(d.missing_data),
                    str(a.priority.total),
                    spreadsheet_text(a.reassessment_reason),
                ]


def spreadsheet_text(text: str) -> str:
    """Text typed by staff, kept as text when the file is opened in a spreadsheet: a cell
    starting with =, +, -, @ or a tab would otherwise be run as a formula, and spreadsheets
    read past leading spaces to find one (" +1+2")."""
    formula = text.lstrip(" ").startswith(("=", "+", "-", "@", "\t", "\r"))
    return "'" + text if formula else text


def writer(out: IO[str], columns: Iterable[str]) -> Any:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(list(columns))
    return w
