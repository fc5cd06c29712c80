"""Lending benchmarks; prints the figures that docs/benchmarks.md records.

    .venv/bin/python -m bench.lending_bench [--seconds 3] [--rounds 10] [--concurrency 32]
                                            [--loans 100000]

- RecordRepayment over gRPC with durable commits (synchronous_commit on), sustained rate,
  and the same postings written by a bare asyncpg transaction in the same run;
- generating a 36-month schedule;
- GetPortfolioReport over a synthetic portfolio bulk-loaded with COPY.

Uses DATABASE_URL when set, else an embedded PostgreSQL (pgserver) in a temporary folder;
either way in a fresh database that is dropped at the end. The service runs as its own
process (`python -m services.lending`, as deployed) on a free port; the load generator and
the bare asyncpg comparison run in the bench's process, each with a pool of `--pool`
connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
import timeit
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import grpc
from google.type import date_pb2

from bench.common import (
    CpuMeter,
    bearer_metadata,
    bench_token,
    postgres_pids,
    process,
    quiet_collector,
    service,
)
from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common.channels import open_channel
from services.common.db import keep_session
from services.lending import ledger
from services.lending.ledger import FUND_CASH, LOANS_RECEIVABLE, Posting
from services.lending.schedule import build_schedule
from services.lending.service import SPEC

DISTRICTS = ["saatli", "tartar", "aghdam", "fuzuli", "jabrayil", "goranboy", "aghjabadi"]
PRODUCTS = {  # product_id: (term, grace, moratorium, max amount)
    "fish_farming": (24, 8, (), 800_000),
    "livestock": (24, 4, (1, 2), 700_000),
    "carpet_weaving": (18, 3, (), 500_000),
    "small_trade": (12, 1, (), 400_000),
    "business_expansion": (36, 2, (), 800_000),
}
REPORT_DATE = date(2026, 10, 31)  # a day that has come: a report after today is refused
LOANS_PER_WORKER = 16


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


def bench_schedule() -> float:
    """Microseconds per 36-month schedule (best of 5 runs of 2,000)."""
    runs = timeit.repeat(
        lambda: build_schedule(800_000, date(2026, 1, 31), 36, 2, (1, 2)), number=2_000, repeat=5
    )
    return min(runs) / 2_000 * 1e6


async def _sustained(
    seconds: float,
    concurrency: int,
    one: Callable[[int], Awaitable[None]],
    meter: CpuMeter | None = None,
    pool: asyncpg.Pool | None = None,
) -> float:
    """Operations per second with `concurrency` workers for `seconds`; with a meter,
    also prints the CPU each party used per operation, and with the pool how many
    operations each commit carried."""
    quiet_collector()
    deadline = time.perf_counter() + seconds
    done = [0] * concurrency

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            await one(index)
            done[index] += 1

    commits_before = await _commits(pool) if pool else 0
    before = meter.sample() if meter else None
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    if meter and before:
        print("  " + meter.per_operation(before, meter.sample(), sum(done)))
    if pool:
        committed = await _commits(pool) - commits_before - 1  # less the first count's own
        print(f"  {sum(done) / max(committed, 1):.1f} operations per commit")
    return sum(done) / elapsed


async def _commits(pool: asyncpg.Pool) -> int:
    """Transactions committed in the database so far. Each backend reports its counts
    within a second of going idle, hence the wait."""
    await asyncio.sleep(1.1)
    return int(
        await pool.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def bench_repayments(
    pool: asyncpg.Pool,
    stubs: list[pb_grpc.LendingServiceStub],
    fast_stubs: list[pb_grpc.LendingServiceStub],
    seconds: float,
    concurrency: int,
    meter: CpuMeter,
    rounds: int,
) -> tuple[list[float], list[float]]:
    """`fast_stubs` carry no client interceptor: the load loop passes the token itself."""
    stub = stubs[0]
    auth = bearer_metadata()
    fund_id = "bench-fund"
    async with pool.acquire() as conn, conn.transaction():
        await ledger.open_fund(
            conn,
            fund_id=fund_id,
            name_en="Bench fund",
            name_az="Sınaq fondu",
            committed_capital_minor=10_000_000_000,
            committed_on=date(2025, 1, 1),
        )

    async def new_loan(_: int) -> str:
        submitted = await stub.SubmitLoanApplication(
            pb.SubmitLoanApplicationRequest(
                request_id=str(uuid.uuid4()),
                survivor_id=f"srv-{uuid.uuid4().hex[:10]}",
                product_id="business_expansion",
                amount_minor=800_000,
                currency_code="AZN",
                district_code="saatli",
                borrower_sex=sex_pb2.SEX_MALE,
                borrower_age_band=age_band_pb2.AGE_BAND_35_59,
                submitted_by="cw-01",
                fund_id=fund_id,
            )
        )
        loan_id: str = submitted.loan.loan_id
        await stub.ApproveLoan(
            pb.ApproveLoanRequest(
                request_id=str(uuid.uuid4()),
                loan_id=loan_id,
                approved_by="cm-02",
                committee_decision_ref="CM-BENCH",
            )
        )
        await stub.DisburseTranche(
            pb.DisburseTrancheRequest(
                request_id=str(uuid.uuid4()),
                loan_id=loan_id,
                amount_minor=800_000,
                currency_code="AZN",
                kind=pb.DISBURSEMENT_KIND_CASH,
                description="bench",
                disbursement_date=date_pb2.Date(year=2026, month=1, day=15),
                disbursed_by="lo-03",
            )
        )
        return loan_id

    # Enough loans that none gets more repayments than a real 36-month loan would, and
    # one set for each side: a repayment's answer reads its loan's history (its cost grows
    # with it), a bare insert does not, so shared loans would flatter the bare side.
    per_worker = LOANS_PER_WORKER * rounds

    async def loan_set() -> list[str]:
        loans: list[str] = []
        for _ in range(per_worker):
            loans += await asyncio.gather(*(new_loan(i) for i in range(concurrency)))
        return loans

    loan_sets = {"grpc": await loan_set(), "bare": await loan_set()}
    turns = {side: [0] * concurrency for side in loan_sets}

    def next_loan(side: str, index: int) -> str:
        turns[side][index] += 1
        return loan_sets[side][(turns[side][index] % per_worker) * concurrency + index]

    async def repay(index: int) -> None:
        await fast_stubs[index % len(fast_stubs)].RecordRepayment(
            pb.RecordRepaymentRequest(
                request_id=str(uuid.uuid4()),
                loan_id=next_loan("grpc", index),
                amount_minor=1,
                currency_code="AZN",
                payment_date=date_pb2.Date(year=2026, month=6, day=1),
                received_by="cashier-01",
                channel="bank_transfer",
            ),
            metadata=auth,
        )

    async def bare(index: int) -> None:
        # The same transaction and postings as a repayment, in one statement, with no
        # checks, no idempotency key and no response.
        loan_id = next_loan("bare", index)
        async with pool.acquire() as conn, conn.transaction():
            await ledger.post(
                conn,
                fund_id=fund_id,
                loan_id=loan_id,
                kind="REPAYMENT",
                value_date=date(2026, 6, 1),
                recorded_by="cashier-01",
                postings=[
                    Posting(FUND_CASH, 1, loan_id),
                    Posting(LOANS_RECEIVABLE, -1, loan_id),
                ],
            )

    await _sustained(1.0, concurrency, repay)  # warm-up
    await _sustained(1.0, concurrency, bare)
    meter.postgres_pids = await postgres_pids(pool)
    # Rounds in alternating order (gRPC then bare, bare then gRPC, ...), so that the
    # machine's speed drifting during the run weighs on both sides alike.
    grpc_rates: list[float] = []
    bare_rates: list[float] = []
    for number in range(rounds):
        phases = [
            ("RecordRepayment over gRPC", repay, grpc_rates),
            ("bare asyncpg", bare, bare_rates),
        ]
        for label, load, rates in phases if number % 2 == 0 else reversed(phases):
            print(f"round {number + 1}, {label}:")
            rates.append(await _sustained(seconds, concurrency, load, meter, pool))
        print(
            f"  round {number + 1}: {grpc_rates[-1]:.0f}/s against {bare_rates[-1]:.0f}/s = "
            f"{grpc_rates[-1] / bare_rates[-1]:.0%}"
        )
    return grpc_rates, bare_rates


async def load_portfolio(conn: asyncpg.Connection, loans: int) -> None:
    """COPY a synthetic portfolio: loans, disbursements, schedules, repayments, pauses."""
    rng = random.Random(42)
    await conn.execute(
        """INSERT INTO funds (fund_id, name_en, name_az, committed_capital_minor)
           VALUES ('synthetic', 'Synthetic', 'Sintetik', 0)"""
    )
    loan_rows, txn_rows, posting_rows, revision_rows, instalment_rows, pause_rows = (
        [],
        [],
        [],
        [],
        [],
        [],
    )
    for n in range(loans):
        loan_id = f"syn-{n:07d}"
        product_id = rng.choice(list(PRODUCTS))
        term, grace, moratorium, high = PRODUCTS[product_id]
        principal = rng.randrange(100_000, high + 1, 100)
        anchor = date(2025, 1, 1) + timedelta(days=rng.randrange(0, 600))
        loan_rows.append(
            (
                loan_id,
                f"srv-{n:07d}",
                product_id,
                1,
                "synthetic",
                "ACTIVE",
                principal,
                "AZN",
                rng.choice(DISTRICTS),
                rng.choice((1, 2)),
                rng.randint(1, 4),
                "cw-01",
                "cm-02",
            )
        )
        disbursement = f"syn-d-{n:07d}"
        txn_rows.append((disbursement, "synthetic", loan_id, "DISBURSEMENT", anchor, "bench"))
        posting_rows += [
            (
                disbursement,
                "synthetic",
                LOANS_RECEIVABLE,
                loan_id,
                principal,
                "DISBURSEMENT",
                anchor,
            ),
            (disbursement, "synthetic", FUND_CASH, loan_id, -principal, "DISBURSEMENT", anchor),
        ]
        schedule = build_schedule(principal, anchor, term, grace, moratorium)
        revision_rows.append(
            (
                loan_id,
                1,
                anchor,
                principal,
                0,
                "initial",
                "bench",
                [i.due_date for i in schedule],
                [i.cumulative_minor for i in schedule],
            )
        )
        instalment_rows += [
            (loan_id, 1, i.number, i.due_date, i.principal_minor, i.cumulative_minor)
            for i in schedule
        ]
        due = [i for i in schedule if i.due_date <= REPORT_DATE]
        if due:  # most pay what fell due, some fall behind by 1 to 6 instalments
            behind = 0 if rng.random() < 0.7 else rng.randint(1, 6)
            kept = due[: max(len(due) - behind, 0)]
            if kept:
                paid = kept[-1].cumulative_minor
                repayment = f"syn-r-{n:07d}"
                paid_on = kept[-1].due_date
                txn_rows.append((repayment, "synthetic", loan_id, "REPAYMENT", paid_on, "bench"))
                posting_rows += [
                    (repayment, "synthetic", FUND_CASH, loan_id, paid, "REPAYMENT", paid_on),
                    (
                        repayment,
                        "synthetic",
                        LOANS_RECEIVABLE,
                        loan_id,
                        -paid,
                        "REPAYMENT",
                        paid_on,
                    ),
                ]
        if rng.random() < 0.02:
            start = REPORT_DATE - timedelta(days=rng.randint(10, 120))
            pause_rows.append((loan_id, start, start + timedelta(days=60), "hospital", "cw-01"))

    async with conn.transaction():
        await conn.copy_records_to_table(
            "loans",
            records=loan_rows,
            columns=[
                "loan_id",
                "survivor_id",
                "product_id",
                "product_version",
                "fund_id",
                "state",
                "principal_minor",
                "currency_code",
                "district_code",
                "borrower_sex",
                "borrower_age_band",
                "submitted_by",
                "approved_by",
            ],
        )
        await conn.copy_records_to_table(
            "ledger_transactions",
            records=txn_rows,
            columns=["transaction_id", "fund_id", "loan_id", "kind", "value_date", "recorded_by"],
        )
        await conn.copy_records_to_table(
            "postings",
            records=posting_rows,
            columns=[
                "transaction_id",
                "fund_id",
                "account",
                "loan_id",
                "amount_minor",
                "kind",
                "value_date",
            ],
        )
        await conn.copy_records_to_table(
            "schedule_revisions",
            records=revision_rows,
            columns=[
                "loan_id",
                "revision",
                "effective_date",
                "principal_minor",
                "base_repaid_minor",
                "reason",
                "created_by",
                "due_dates",
                "cumulative_minor",
            ],
        )
        await conn.copy_records_to_table(
            "instalments",
            records=instalment_rows,
            columns=[
                "loan_id",
                "revision",
                "number",
                "due_date",
                "principal_minor",
                "cumulative_minor",
            ],
        )
        await conn.copy_records_to_table(
            "delinquency_pauses",
            records=pause_rows,
            columns=["loan_id", "start_date", "end_date", "reason", "requested_by"],
        )
        # Fresh statistics before commit, when the deferred balance checks plan their
        # lookups: without them each check would scan the whole postings table.
        await conn.execute("ANALYZE")


async def bench_report(
    stub: pb_grpc.LendingServiceStub, fund_id: str
) -> tuple[float, pb.PortfolioReport]:
    request = pb.GetPortfolioReportRequest(
        as_of=date_pb2.Date(year=REPORT_DATE.year, month=REPORT_DATE.month, day=REPORT_DATE.day),
        fund_id=fund_id,
    )
    await stub.GetPortfolioReport(request)  # warm caches
    times = []
    report = pb.PortfolioReport()
    for _ in range(5):
        started = time.perf_counter()
        report = (await stub.GetPortfolioReport(request)).report
        times.append(time.perf_counter() - started)
    return statistics.median(times), report


async def main(args: argparse.Namespace) -> None:
    server_url = os.environ.get("DATABASE_URL")
    state = Path(tempfile.mkdtemp(prefix="lending-bench-"))
    embedded = None
    if not server_url:
        import pgserver

        embedded = pgserver.get_server(state / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
        server_url = str(embedded.get_uri())
    name = f"lending_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f"CREATE DATABASE {name}")
    url = _with_database(server_url, name)
    try:
        with contextlib.ExitStack() as replicas:
            ports: list[int] = []
            pids: list[int] = []
            for _ in range(args.replicas):  # behind client-side round robin
                argv, env, port = service("services.lending", "LENDING_ADDRESS", url)
                env |= {"DB_POOL_MAX_SIZE": str(args.pool // args.replicas), "LOG_FORMAT": "json"}
                pids.append(replicas.enter_context(process(argv, env, port)).pid)
                ports.append(port)
            await _run(args, url, ports, CpuMeter(pids))
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
        if embedded is not None:
            embedded.cleanup()


async def _run(args: argparse.Namespace, url: str, ports: list[int], meter: CpuMeter) -> None:
    channels = [open_channel(f"127.0.0.1:{port}", bench_token()) for port in ports]
    stubs = [pb_grpc.LendingServiceStub(channel) for channel in channels]
    plain = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    fast_stubs = [pb_grpc.LendingServiceStub(channel) for channel in plain]
    settings = {"search_path": SPEC.name}
    # The bare client gets the service's pool settings, its release without a session
    # reset included (services/common/db.py keep_session): like for like.
    pool = await asyncpg.create_pool(
        url, min_size=args.pool, max_size=args.pool, server_settings=settings, reset=keep_session
    )
    probe = await asyncpg.connect(url, server_settings=settings)
    try:
        durability = {
            k: await probe.fetchval(f"SHOW {k}")
            for k in ("fsync", "synchronous_commit", "wal_sync_method", "server_version")
        }
        print(
            f"PostgreSQL: {durability}; {os.cpu_count()} CPU(s); {args.replicas} service "
            f"process(es) sharing {args.pool} connections; bare asyncpg pool {args.pool}"
        )
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        micros = bench_schedule()
        print(f"36-month schedule generation: {micros:.1f} µs (target <= 100 µs)")

        grpc_rates, bare_rates = await bench_repayments(
            pool, stubs, fast_stubs, args.seconds, args.concurrency, meter, args.rounds
        )
        ratios = [g / b for g, b in zip(grpc_rates, bare_rates, strict=True)]
        print(
            f"RecordRepayment over gRPC: {statistics.median(grpc_rates):.0f}/s sustained "
            f"(median of {args.rounds} rounds of {args.seconds:.0f} s), {args.concurrency} "
            f"concurrent (target >= 500/s)"
        )
        print(
            "bare asyncpg transaction of the same postings: "
            f"{statistics.median(bare_rates):.0f}/s; "
            f"ratio per round {', '.join(f'{r:.0%}' for r in ratios)}, median "
            f"{statistics.median(ratios):.0%} (target >= 50%)"
        )

        if not args.loans:
            return
        started = time.perf_counter()
        await load_portfolio(probe, args.loans)
        loaded_in = time.perf_counter() - started
        print(f"loaded {args.loans} synthetic loans with COPY in {loaded_in:.1f} s")
        elapsed, report = await bench_report(stubs[0], "synthetic")
        total = report.total
        print(
            f"GetPortfolioReport over {args.loans} loans: {elapsed * 1000:.0f} ms median of 5 "
            f"(target <= 1000 ms); active {total.active_loans}, PAR30 "
            f"{total.par30_basis_points / 100:.2f}%, repayment rate "
            f"{total.repayment_rate_basis_points / 100:.2f}%"
        )
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        await probe.close()
        await pool.close()
        for channel in channels + plain:
            await channel.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Ten short rounds, not three long ones: the machine's commit rate drifts within a
    # minute, and the median of many alternating rounds moves far less with it.
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="alternating gRPC/bare rounds")
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--loans", type=int, default=100_000, help="0: no report")
    parser.add_argument("--replicas", type=int, default=1, help="service processes")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
