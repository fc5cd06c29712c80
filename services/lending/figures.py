"""Loan figures as of a date, set-based in PostgreSQL: the same SQL serves one loan
(GetLoan, responses), a page of loans (ListLoans) and the whole portfolio (the report).

Per loan, as of date D, from postings with value date <= D:

- disbursed, repaid, written off, recovered; outstanding = the receivable's balance;
- the schedule revision in force: the latest with effective_date <= D;
- the oldest instalment of that revision due before D and not covered by the principal
  repaid against it (oldest due first), and so days past due, less paused days;
- principal fallen due by D, for the repayment rate.

services/lending/arrears.py holds the per-instalment version of the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg

from services.common.db import Connection

_FIGURES = """
WITH bal AS (
    -- Loans with nothing dated after $1: their position row (migration 005) is their
    -- balance as of $1.
    SELECT lp.loan_id, lp.disbursed, lp.repaid, lp.written_off, lp.recovered
    FROM loan_positions lp
    WHERE {positions} AND lp.last_value_date <= $1
    UNION ALL
    -- The others: their postings dated by $1.
    SELECT p.loan_id,
        coalesce(sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'DISBURSEMENT'), 0)::bigint,
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE'
              AND p.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')), 0)::bigint,
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'WRITE_OFF'), 0)::bigint,
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'RECOVERY_INCOME'), 0)::bigint
    FROM postings p
    JOIN loan_positions later ON later.loan_id = p.loan_id AND later.last_value_date > $1
    WHERE {postings} AND p.value_date <= $1
      AND p.account IN ('LOANS_RECEIVABLE', 'RECOVERY_INCOME')
      -- Tested once, before any posting is read: when none of the loans has anything
      -- dated after $1, their postings are not scanned at all (a loan's history grows).
      AND EXISTS (SELECT FROM loan_positions lp WHERE {positions} AND lp.last_value_date > $1)
    GROUP BY p.loan_id
),
rev AS (  -- the revision in force: the latest one effective by $1
    SELECT r.loan_id, r.base_repaid_minor, r.due_dates, r.cumulative_minor
    FROM (SELECT n.loan_id, max(n.revision) AS revision FROM schedule_revisions n
          WHERE {revisions} AND n.effective_date <= $1 GROUP BY n.loan_id) latest
    JOIN schedule_revisions r ON r.loan_id = latest.loan_id AND r.revision = latest.revision
),
pz AS (
    SELECT d.loan_id, range_agg(daterange(d.start_date, d.end_date, '[]')) AS paused
    FROM delinquency_pauses d
    WHERE {pauses} AND d.start_date <= $1
    GROUP BY d.loan_id
),
sched AS (  -- what the revision in force says as of $1, narrow: no arrays past here
    SELECT bal.loan_id, bal.disbursed, bal.repaid, bal.written_off, bal.recovered,
        rev.base_repaid_minor,
        -- Principal fallen due by $1 (instalments due by then, cumulated).
        rev.cumulative_minor[width_bucket($1::date, rev.due_dates)] AS fallen_due,
        -- The oldest instalment not covered by the principal repaid against the revision
        -- (oldest due first): one past the instalments fully paid.
        rev.due_dates[width_bucket(bal.repaid::bigint - rev.base_repaid_minor,
            rev.cumulative_minor) + 1] AS oldest_unpaid_due
    FROM bal LEFT JOIN rev ON rev.loan_id = bal.loan_id
),
pos AS (
    SELECT l.loan_id, l.fund_id, l.product_id, l.district_code, l.borrower_sex,
        coalesce(s.disbursed, 0)::bigint AS disbursed,
        coalesce(s.repaid, 0)::bigint AS repaid,
        coalesce(s.written_off, 0)::bigint AS written_off,
        coalesce(s.recovered, 0)::bigint AS recovered,
        -- The receivable moves only by these three kinds (and their reversals).
        coalesce(s.disbursed - s.repaid - s.written_off, 0)::bigint AS outstanding,
        coalesce(s.base_repaid_minor, 0)::bigint AS base_repaid,
        coalesce(s.fallen_due, 0)::bigint AS fallen_due,
        s.oldest_unpaid_due,
        pz.paused
    FROM loans l
    LEFT JOIN sched s ON s.loan_id = l.loan_id
    LEFT JOIN pz ON pz.loan_id = l.loan_id
    WHERE {loans}
),
figures AS (
    SELECT pos.*,
        CASE WHEN outstanding > 0 AND oldest_unpaid_due < $1 THEN
            ($1 - oldest_unpaid_due) - coalesce((
                SELECT sum(upper(r) - lower(r)) FROM unnest(paused * datemultirange(
                    daterange(oldest_unpaid_due, $1, '(]'))) r
            ), 0)
        ELSE 0 END::integer AS dpd
    FROM pos
)
"""

# A loan's tranches as a JSON array (an expression over `l`, the loans row).
TRANCHES_JSON = """(SELECT coalesce(json_agg(json_build_object(
        'sequence', t.sequence, 'amount_minor', t.amount_minor, 'kind', t.kind,
        'description', t.description, 'disbursement_date', t.disbursement_date,
        'transaction_id', t.transaction_id) ORDER BY t.sequence), '[]')
     FROM tranches t WHERE t.loan_id = l.loan_id)"""

# The day a closed loan closed: the latest value date on its receivable, from which on its
# balance as of any date is zero (the repayment that brought it there, or the write-off; a
# recovery posts to RECOVERY_INCOME; a reversal that reopens a loan makes it ACTIVE again).
# Only transactions that stand count: a payment reversed and its reversal cancel out, and
# their date is no closing (migration 021's function, which the repayment's answer uses).
CLOSE_DATE = """(CASE WHEN l.state IN ('CLOSED_OBLIGATIONS_MET', 'CLOSED_WRITTEN_OFF')
    THEN lending_close_date(l.loan_id) END)"""

_LOAN_VIEW_SELECT = f"""
SELECT l.*, f.disbursed, f.repaid, f.written_off, f.recovered, f.outstanding, f.dpd,
    {TRANCHES_JSON} AS tranches, {CLOSE_DATE} AS close_date
FROM loans l JOIN figures f ON f.loan_id = l.loan_id
"""


def loan_figures(condition: str) -> str:
    """The figures CTEs restricted to the loans `condition` (over {column}) selects."""
    return _FIGURES.format(
        positions=condition.format(column="lp.loan_id"),
        postings=condition.format(column="p.loan_id"),
        revisions=condition.format(column="n.loan_id"),
        pauses=condition.format(column="d.loan_id"),
        loans=condition.format(column="l.loan_id"),
    )


def _loan_view(condition: str) -> str:
    return loan_figures(condition) + _LOAN_VIEW_SELECT


# The loan rows, their figures and their tranches in one round trip: $1 the date, $2 an
# array of loan ids.
LOAN_VIEW = _loan_view("{column} = ANY($2::text[])")
# The same for one loan ($2 its id). With a scalar id PostgreSQL settles on a generic
# plan of the prepared statement after five runs; with an array it re-plans every call,
# and planning costs ten times the execution.
ONE_LOAN = "{column} = $2::text"
LOAN_VIEW_ONE = _loan_view(ONE_LOAN)


@dataclass(frozen=True)
class LoanFigures:
    disbursed_minor: int = 0
    repaid_minor: int = 0
    written_off_minor: int = 0
    recovered_minor: int = 0
    outstanding_minor: int = 0
    days_past_due: int = 0

    @classmethod
    def of(cls, row: Mapping[str, Any] | asyncpg.Record) -> LoanFigures:
        return cls(
            disbursed_minor=row["disbursed"],
            repaid_minor=row["repaid"],
            written_off_minor=row["written_off"],
            recovered_minor=row["recovered"],
            outstanding_minor=row["outstanding"],
            days_past_due=row["dpd"],
        )


# Buckets by days past due; CURRENT is an active loan with nothing overdue.
BUCKET_BOUNDS = (
    ("CURRENT", 0, 0),
    ("1_30", 1, 30),
    ("31_60", 31, 60),
    ("61_90", 61, 90),
    ("OVER_90", 91, 2_000_000_000),
)

# Each report figure: its name and its per-loan aggregate over `figures`.
_CELL_COLUMNS = [
    ("active_loans", "count(*) FILTER (WHERE outstanding > 0)"),
    ("outstanding", "sum(outstanding) FILTER (WHERE outstanding > 0)"),
    ("par30", "sum(outstanding) FILTER (WHERE outstanding > 0 AND dpd > 30)"),
    # Written-off loans leave the repayment rate: their losses show as write-offs instead.
    (
        "repaid_against_due",
        "sum(LEAST(GREATEST(repaid - base_repaid, 0), fallen_due)) FILTER (WHERE written_off = 0)",
    ),
    ("fallen_due", "sum(fallen_due) FILTER (WHERE written_off = 0)"),
]
for _name, _lo, _hi in BUCKET_BOUNDS:
    _where = f"outstanding > 0 AND dpd BETWEEN {_lo} AND {_hi}"
    _CELL_COLUMNS += [
        (f"n_{_name}", f"count(*) FILTER (WHERE {_where})"),
        (f"o_{_name}", f"sum(outstanding) FILTER (WHERE {_where})"),
    ]

# Every figure is a sum, so the loans are first summed into cells of one district, sex
# and product (a hash aggregate into a few dozen rows), and the grouping sets then roll
# up the cells instead of sorting every loan.
_REPORT_SELECT = f"""
, cells AS (
    SELECT district_code, borrower_sex, product_id,
        {", ".join(f"coalesce({expr}, 0)::bigint AS {name}" for name, expr in _CELL_COLUMNS)}
    -- OFFSET 0 keeps the subquery: days past due are computed once per loan, not once
    -- per aggregate that reads them.
    FROM (SELECT * FROM figures WHERE disbursed > 0 OFFSET 0) f
    GROUP BY district_code, borrower_sex, product_id
)
SELECT district_code, borrower_sex, product_id,
    GROUPING(district_code, borrower_sex, product_id) AS grouping_mask,
    {", ".join(f"coalesce(sum({name}), 0)::bigint AS {name}" for name, _ in _CELL_COLUMNS)}
FROM cells
GROUP BY GROUPING SETS ((), (district_code), (borrower_sex), (product_id))
"""

REPORT_ALL_FUNDS = (
    _FIGURES.format(
        positions="$2::text = ''",
        postings="p.loan_id IS NOT NULL AND $2::text = ''",
        revisions="TRUE",
        pauses="TRUE",
        loans="TRUE",
    )
    + _REPORT_SELECT
)
REPORT_ONE_FUND = (
    _FIGURES.format(
        positions="TRUE",  # other funds' loans find no row in `pos`
        postings="p.loan_id IS NOT NULL AND p.fund_id = $2",
        revisions="TRUE",
        pauses="TRUE",
        loans="l.fund_id = $2",
    )
    + _REPORT_SELECT
)


@dataclass(frozen=True)
class PortfolioRow:
    """One grouping set's figures; `key` is None for the whole portfolio."""

    dimension: str  # "total", "district", "sex" or "product"
    key: str | int | None
    active_loans: int
    outstanding_minor: int
    par30_minor: int
    repaid_against_due_minor: int
    fallen_due_minor: int
    buckets: dict[str, tuple[int, int]]  # name -> (loans, outstanding)

    @property
    def par30_basis_points(self) -> int:
        if self.outstanding_minor == 0:
            return 0
        return basis_points(self.par30_minor, self.outstanding_minor)

    @property
    def repayment_rate_basis_points(self) -> int:
        if self.fallen_due_minor == 0:
            return 10_000
        return basis_points(self.repaid_against_due_minor, self.fallen_due_minor)


def basis_points(part: int, whole: int) -> int:
    """part / whole in hundredths of a percent, rounded half up, in integers."""
    return (part * 20_000 + whole) // (2 * whole)


_DIMENSIONS = {
    0b111: ("total", None),
    0b011: ("district", "district_code"),
    0b101: ("sex", "borrower_sex"),
    0b110: ("product", "product_id"),
}


async def portfolio(conn: Connection, as_of: date, fund_id: str) -> list[PortfolioRow]:
    query = REPORT_ONE_FUND if fund_id else REPORT_ALL_FUNDS
    async with conn.transaction(readonly=True):
        # The hash joins and the grouping sets of 100,000 loans fit in memory with this,
        # instead of spilling to disk (4 MB by default); for this one query only.
        await conn.execute("SET LOCAL work_mem = '64MB'")
        rows = await conn.fetch(query, as_of, fund_id)
    result = []
    for r in rows:
        dimension, column = _DIMENSIONS[r["grouping_mask"]]
        result.append(
            PortfolioRow(
                dimension=dimension,
                key=r[column] if column else None,
                active_loans=r["active_loans"],
                outstanding_minor=r["outstanding"],
                par30_minor=r["par30"],
                repaid_against_due_minor=r["repaid_against_due"],
                fallen_due_minor=r["fallen_due"],
                buckets={
                    name: (r[f"n_{name.lower()}"], r[f"o_{name.lower()}"])
                    for name, _, _ in BUCKET_BOUNDS
                },
            )
        )
    return result
