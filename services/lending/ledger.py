"""The double-entry ledger: transactions of postings that sum to zero, append-only.

Accounts (debit positive, credit negative), each kept per fund:

- FUND_CASH          the fund's money; its balance is the available balance
- FUND_CAPITAL       donors' committed capital (credit)
- LOANS_RECEIVABLE   principal owed, kept per loan
- WRITE_OFF_EXPENSE  principal written off (debit)
- RECOVERY_INCOME    money recovered after a write-off (credit)

Every balance is a sum of postings; nothing stores a running total. The database checks
that each transaction balances and refuses UPDATE and DELETE (migration 002).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from services.common.db import Connection, fetch_one
from services.common.errors import NotFound

FUND_CASH = "FUND_CASH"
FUND_CAPITAL = "FUND_CAPITAL"
LOANS_RECEIVABLE = "LOANS_RECEIVABLE"
WRITE_OFF_EXPENSE = "WRITE_OFF_EXPENSE"
RECOVERY_INCOME = "RECOVERY_INCOME"

REVERSAL_OF = {"REPAYMENT": "REPAYMENT_REVERSAL", "RECOVERY": "RECOVERY_REVERSAL"}


@dataclass(frozen=True)
class Posting:
    account: str
    amount_minor: int
    loan_id: str | None = None


def new_transaction_id() -> str:
    return f"txn-{uuid.uuid4().hex[:24]}"


async def post(
    conn: Connection,
    *,
    fund_id: str,
    loan_id: str | None,
    kind: str,
    value_date: date,
    recorded_by: str,
    postings: Sequence[Posting],
    memo: str = "",
    reverses: str | None = None,
    transaction_id: str | None = None,
) -> str:
    """Write one balanced transaction in a single round trip; returns its id."""
    if sum(p.amount_minor for p in postings) != 0:
        raise ValueError("postings must sum to zero")  # the database checks it too
    txn_id = transaction_id or new_transaction_id()
    await conn.execute(
        """WITH txn AS (
               INSERT INTO ledger_transactions (transaction_id, fund_id, loan_id, kind,
                   value_date, recorded_by, memo, reverses)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8))
           INSERT INTO postings (transaction_id, fund_id, account, loan_id, amount_minor, kind,
               value_date)
           SELECT $1, $2, a, l, m, $4, $5
           FROM unnest($9::text[], $10::text[], $11::bigint[]) AS x(a, l, m)""",
        txn_id,
        fund_id,
        loan_id,
        kind,
        value_date,
        recorded_by,
        memo,
        reverses,
        [p.account for p in postings],
        [p.loan_id for p in postings],
        [p.amount_minor for p in postings],
    )
    return txn_id


async def write_off(
    conn: Connection,
    *,
    fund_id: str,
    loan_id: str,
    amount_minor: int,
    value_date: date,
    recorded_by: str,
    memo: str,
) -> str:
    """Write off principal a loan owes: an expense of the fund; returns the transaction."""
    return await post(
        conn,
        fund_id=fund_id,
        loan_id=loan_id,
        kind="WRITE_OFF",
        value_date=value_date,
        recorded_by=recorded_by,
        memo=memo,
        postings=[
            Posting(WRITE_OFF_EXPENSE, amount_minor, loan_id),
            Posting(LOANS_RECEIVABLE, -amount_minor, loan_id),
        ],
    )


async def reverse(conn: Connection, original_id: str, *, recorded_by: str, memo: str) -> str:
    """Cancel a transaction with its mirror image, on the same value date."""
    original = await fetch_one(
        conn, "SELECT * FROM ledger_transactions WHERE transaction_id = $1", original_id
    )
    lines = await conn.fetch(
        "SELECT account, loan_id, amount_minor FROM postings WHERE transaction_id = $1",
        original_id,
    )
    return await post(
        conn,
        fund_id=original["fund_id"],
        loan_id=original["loan_id"],
        kind=REVERSAL_OF[original["kind"]],
        value_date=original["value_date"],
        recorded_by=recorded_by,
        memo=memo,
        reverses=original_id,
        postings=[Posting(r["account"], -r["amount_minor"], r["loan_id"]) for r in lines],
    )


async def open_fund(
    conn: Connection,
    *,
    fund_id: str,
    name_en: str,
    name_az: str,
    committed_capital_minor: int,
    committed_on: date,
) -> bool:
    """Create a fund and post its committed capital into its cash; False if it exists."""
    created = await conn.fetchval(
        """INSERT INTO funds (fund_id, name_en, name_az, committed_capital_minor)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
        fund_id,
        name_en,
        name_az,
        committed_capital_minor,
    )
    if created and committed_capital_minor > 0:
        await post(
            conn,
            fund_id=fund_id,
            loan_id=None,
            kind="CAPITAL",
            value_date=committed_on,
            recorded_by="programme",
            memo="committed capital",
            postings=[
                Posting(FUND_CASH, committed_capital_minor),
                Posting(FUND_CAPITAL, -committed_capital_minor),
            ],
        )
    return bool(created)


@dataclass(frozen=True)
class FundCash:
    available_minor: int
    committed_on: date | None  # the day its capital was committed; None without capital


async def lock_fund(conn: Connection, fund_id: str) -> None:
    """Lock the fund row: whatever takes money out of its cash takes turns."""
    locked = await conn.fetchval("SELECT 1 FROM funds WHERE fund_id = $1 FOR UPDATE", fund_id)
    if locked is None:
        raise NotFound(f"fund {fund_id} does not exist")


async def lock_fund_available(conn: Connection, fund_id: str) -> FundCash:
    """Lock the fund row (disbursements take turns) and return its cash balance."""
    await lock_fund(conn, fund_id)
    row = await conn.fetchrow(
        """SELECT coalesce(sum(amount_minor), 0)::bigint AS available,
                  min(value_date) FILTER (WHERE kind = 'CAPITAL') AS committed_on
           FROM postings WHERE fund_id = $1 AND account = 'FUND_CASH'""",
        fund_id,
    )
    assert row is not None  # an aggregate always returns its row
    return FundCash(row["available"], row["committed_on"])


@dataclass(frozen=True)
class FundStatement:
    fund_id: str
    name_en: str
    name_az: str
    currency_code: str
    committed_capital_minor: int
    disbursed_minor: int
    repaid_principal_minor: int
    written_off_minor: int
    recovered_minor: int
    available_minor: int
    outstanding_principal_minor: int


async def fund_statement(conn: Connection, fund_id: str) -> FundStatement:
    """The fund's figures, every one a sum of postings."""
    row = await conn.fetchrow(
        """SELECT f.*, s.* FROM funds f CROSS JOIN LATERAL (
               SELECT
                 coalesce(sum(p.amount_minor) FILTER (
                     WHERE p.account = 'FUND_CAPITAL'), 0)::bigint AS capital_balance,
                 coalesce(sum(p.amount_minor) FILTER (
                     WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'DISBURSEMENT'),
                     0)::bigint AS disbursed,
                 coalesce(-sum(p.amount_minor) FILTER (
                     WHERE p.account = 'LOANS_RECEIVABLE'
                       AND p.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')), 0)::bigint AS repaid,
                 coalesce(sum(p.amount_minor) FILTER (
                     WHERE p.account = 'WRITE_OFF_EXPENSE'), 0)::bigint AS written_off,
                 coalesce(-sum(p.amount_minor) FILTER (
                     WHERE p.account = 'RECOVERY_INCOME'), 0)::bigint AS recovered,
                 coalesce(sum(p.amount_minor) FILTER (
                     WHERE p.account = 'FUND_CASH'), 0)::bigint AS available,
                 coalesce(sum(p.amount_minor) FILTER (
                     WHERE p.account = 'LOANS_RECEIVABLE'), 0)::bigint AS outstanding
               FROM postings p WHERE p.fund_id = f.fund_id) s
           WHERE f.fund_id = $1""",
        fund_id,
    )
    if row is None:
        raise NotFound(f"fund {fund_id} does not exist")
    return FundStatement(
        fund_id=row["fund_id"],
        name_en=row["name_en"],
        name_az=row["name_az"],
        currency_code=row["currency_code"],
        committed_capital_minor=row["committed_capital_minor"],
        disbursed_minor=row["disbursed"],
        repaid_principal_minor=row["repaid"],
        written_off_minor=row["written_off"],
        recovered_minor=row["recovered"],
        available_minor=row["available"],
        outstanding_principal_minor=row["outstanding"],
    )
