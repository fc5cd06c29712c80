"""A loan's statement as the CLI prints it: on an 80-column terminal, dates, amounts and
transaction ids (what `reverse` takes) are whole; only the descriptions wrap."""

from __future__ import annotations

from datetime import date

from rich.console import Console

from cli.render import revision_reason, transactions_table
from mineaction.lending.v1 import lending_service_pb2 as pb
from services.common.protoconv import proto_date


def test_an_80_column_statement_keeps_dates_amounts_and_ids_whole() -> None:
    ids = [f"txn-{n:024x}" for n in (1, 2)]
    lines = [
        pb.LoanTransaction(
            transaction_id=ids[0],
            kind=pb.LOAN_TRANSACTION_KIND_DISBURSEMENT,
            value_date=proto_date(date(2026, 1, 15)),
            amount_minor=123_456_789,
            outstanding_after_minor=123_456_789,
            recorded_by="lo-03",
            memo="tranche 1: " + "fingerlings and feed for the restored lake " * 3,
        ),
        pb.LoanTransaction(
            transaction_id=ids[1],
            kind=pb.LOAN_TRANSACTION_KIND_REPAYMENT,
            value_date=proto_date(date(2026, 9, 15)),
            amount_minor=60_000,
            outstanding_after_minor=123_396_789,
            recorded_by="cashier-saatli-district-office",
            memo="bank_transfer",
            reversed_by_transaction_id=ids[0],
        ),
    ]
    for lang, amounts in (
        ("en", ("1,234,567.89", "600.00", "1,233,967.89")),
        ("az", ("1.234.567,89", "600,00", "1.233.967,89")),
    ):
        console = Console(width=80, record=True)
        console.print(transactions_table("loan-3dd8b5c97bde4f7d81e3", lines, lang))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 80
        for whole in (*ids, "2026-01-15", "2026-09-15", *amounts):
            assert whole in text, (whole, text)
        assert "…" not in text


def test_a_schedule_revision_says_why_in_azerbaijani() -> None:
    """`loan --lang az` titled a schedule "versiya 2 (rescheduled: ...)": lending's own
    words are translated; what staff wrote stays as they wrote it."""
    assert revision_reason("initial", "az") == "ilkin"
    assert revision_reason("tranche 2 disbursed", "az") == "tranş №2 verildi"
    assert revision_reason("rescheduled: göl daşdı", "az") == "yenidən planlaşdırıldı: göl daşdı"
    assert revision_reason("rescheduled: the lake flooded", "en") == "rescheduled: the lake flooded"
