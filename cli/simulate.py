"""`mineaction simulate`: N synthetic borrowers' loans over the three-year commitment
under Temporal time skipping, to show a programme manager how the revolving fund would
perform under stated assumptions about repayment behaviour.

Everything is the real thing, in this process and in scratch places that are removed
afterwards: a scratch PostgreSQL (embedded, or a fresh database on DATABASE_URL's
server), the lending service, the packaged time-skipping Temporal test server (never
downloaded) and a worker running BorrowerWorkflow with the journey activities. Loans
are submitted, approved and disbursed over gRPC; the borrowers repay through the same
activity that payment collection uses. Every figure shown comes from the ledger
(GetFund, GetPortfolioReport, ListLoans), never from the simulation's own counting.
"""

from __future__ import annotations

import contextlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as clock
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import WorkflowHandle
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from cli.errors import CliError
from cli.inputs import BadInput
from cli.paging import pages
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common.auth import ensure_dev_credentials
from services.common.channels import DEV_TOKEN_FILE, open_channel
from services.common.config import Settings, load_settings
from services.common.logging import configure_logging
from services.common.money import manat
from services.common.programme_time import PROGRAMME_ZONE, add_months, programme_date
from services.common.protoconv import proto_date
from services.common.server import ServiceHost
from services.lending import ledger
from services.lending.service import SPEC as LENDING
from workers.codec import data_converter, ensure_keyring
from workers.journey.activities import JourneyActivities
from workers.journey.worker import build_worker, open_outbox
from workers.simulation.workflows import Behaviour, BorrowerInput, BorrowerWorkflow

BIN = Path(sys.executable).parent
LENDING_DIR = Path(ledger.__file__).parent
FUND_ID = "simulation"
DISTRICTS = ("saatli", "aghdam", "fuzuli", "tartar", "aghjabadi")
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Assumptions:
    survivors: int
    months: int
    product_id: str
    amount_minor: int
    capital_minor: int
    on_time: float
    late: float
    default: float
    days_late: int
    default_after: int
    seed: int
    chart: Path

    def lines(self, product: dict[str, Any]) -> list[str]:
        moratorium = product.get("moratorium_months") or []
        term = (
            f" ({product['term_months']} months, {product['grace_months']} of grace"
            + (f", no instalments in months {moratorium}" if moratorium else "")
            + ")"
        )
        return [
            f"Cohort: {self.survivors} survivors, one {self.product_id} loan of "
            f"{manat(self.amount_minor)} AZN each{term}, zero interest, one tranche.",
            f"Fund: {manat(self.capital_minor)} AZN of capital, all of it available at the "
            "start; the first cohort is lent at once.",
            f"Behaviour: {self.on_time:.0%} pay every instalment on its due date; "
            f"{self.late:.0%} pay each instalment {self.days_late} days late; "
            f"{self.default:.0%} pay {self.default_after} instalment(s) and then stop "
            "(default). New borrowers behave in the same shares (random, seed "
            f"{self.seed}).",
            "Revolving: at each month end, while the fund's available balance (ledger) "
            "covers another loan of the same size, a new survivor gets one.",
            "Not modelled: write-offs and recoveries, rescheduling, hardship pauses, "
            "operating costs; defaulted loans stay outstanding.",
            f"Horizon: {self.months} months from today, under Temporal time skipping.",
        ]


@dataclass
class MonthFigures:
    month: int
    as_of: date
    loans: int  # loans made from the fund by then (ListLoans)
    active_loans: int
    disbursed_minor: int
    repaid_minor: int
    available_minor: int
    outstanding_minor: int
    written_off_minor: int
    recovered_minor: int
    par30_minor: int
    par30_basis_points: int
    repayment_rate_basis_points: int


@dataclass
class Result:
    assumptions: Assumptions
    capital_minor: int
    months: list[MonthFigures] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def revolving_loans(self) -> int:
        return self.months[-1].loans - self.assumptions.survivors if self.months else 0


# --- the scratch infrastructure ------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def scratch_database(settings: Settings, folder: Path) -> AsyncIterator[str]:
    """A fresh database on DATABASE_URL's server (dropped afterwards), else an embedded
    PostgreSQL in `folder` (deleted afterwards)."""
    if settings.database_url:
        name = f"mineaction_sim_{uuid.uuid4().hex[:10]}"
        try:
            admin = await asyncpg.connect(settings.database_url, timeout=10)
        except (OSError, asyncpg.PostgresError) as error:
            raise CliError(
                f"cannot reach PostgreSQL at DATABASE_URL to make a scratch database: {error}"
            ) from None
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        try:
            yield _with_database(settings.database_url, name)
        finally:
            admin = await asyncpg.connect(settings.database_url, timeout=10)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            finally:
                await admin.close()
        return
    import warnings

    with warnings.catch_warnings():  # platformdirs' XDG_RUNTIME_DIR notice
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(folder / "postgres", cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


# --- the simulation --------------------------------------------------------------------


def behaviours(a: Assumptions, rng: random.Random) -> list[str]:
    """The first cohort's behaviours in exactly the stated shares (largest remainder)."""
    shares = {"on_time": a.on_time, "late": a.late, "default": a.default}
    exact = {k: v * a.survivors for k, v in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True):
        if sum(counts.values()) >= a.survivors:
            break
        counts[k] += 1
    cohort = [k for k, n in counts.items() for _ in range(n)]
    rng.shuffle(cohort)
    return cohort


def draw(a: Assumptions, rng: random.Random) -> str:
    return rng.choices(["on_time", "late", "default"], [a.on_time, a.late, a.default])[0]


def behaviour_of(kind: str, a: Assumptions) -> Behaviour | None:
    """None: the borrower never pays anything."""
    if kind == "late":
        return Behaviour(days_late=a.days_late)
    if kind == "default":
        return Behaviour(stop_after=a.default_after) if a.default_after else None
    return Behaviour()


class Programme:
    """The loan officer and the committee of the simulation, over gRPC."""

    def __init__(
        self,
        a: Assumptions,
        lending: lending_grpc.LendingServiceStub,
        env: WorkflowEnvironment,
        task_queue: str,
    ) -> None:
        self.a = a
        self.lending = lending
        self.env = env
        self.task_queue = task_queue
        self.rng = random.Random(a.seed)
        self.issued = 0
        self.borrowers: list[WorkflowHandle[BorrowerWorkflow, int]] = []

    async def lend(self, kind: str, on: date) -> None:
        """Submit, approve and disburse one loan, then let its borrower repay it."""
        self.issued += 1
        number = self.issued
        survivor_id = f"sim-{number:04d}"
        loan = (
            await self.lending.SubmitLoanApplication(
                lending_pb.SubmitLoanApplicationRequest(
                    request_id=str(uuid.uuid4()),
                    survivor_id=survivor_id,
                    product_id=self.a.product_id,
                    amount_minor=self.a.amount_minor,
                    currency_code="AZN",
                    district_code=DISTRICTS[number % len(DISTRICTS)],
                    borrower_sex=(sex_pb2.SEX_FEMALE, sex_pb2.SEX_MALE)[number % 2],
                    borrower_age_band=age_band_pb2.AGE_BAND_35_59,
                    purpose="simulated loan",
                    submitted_by="sim-case-worker",
                    fund_id=FUND_ID,
                ),
                timeout=CALL_TIMEOUT,
            )
        ).loan
        await self.lending.ApproveLoan(
            lending_pb.ApproveLoanRequest(
                request_id=str(uuid.uuid4()),
                loan_id=loan.loan_id,
                approved_by="sim-committee",
                committee_decision_ref=f"SIM-{number:04d}",
            ),
            timeout=CALL_TIMEOUT,
        )
        await self.lending.DisburseTranche(
            lending_pb.DisburseTrancheRequest(
                request_id=str(uuid.uuid4()),
                loan_id=loan.loan_id,
                amount_minor=self.a.amount_minor,
                currency_code="AZN",
                kind=lending_pb.DISBURSEMENT_KIND_CASH,
                description="simulated loan",
                disbursement_date=proto_date(on),
                disbursed_by="sim-loan-officer",
            ),
            timeout=CALL_TIMEOUT,
        )
        behaviour = behaviour_of(kind, self.a)
        if behaviour is not None:
            self.borrowers.append(
                await self.env.client.start_workflow(
                    BorrowerWorkflow.run,
                    BorrowerInput(loan.loan_id, behaviour),
                    id=f"borrower-{loan.loan_id}",
                    task_queue=self.task_queue,
                )
            )

    async def fund(self) -> lending_pb.Fund:
        response = await self.lending.GetFund(
            lending_pb.GetFundRequest(fund_id=FUND_ID), timeout=CALL_TIMEOUT
        )
        fund: lending_pb.Fund = response.fund
        return fund

    async def loans(self) -> int:
        def fetch(token: str) -> Awaitable[lending_pb.ListLoansResponse]:
            request = lending_pb.ListLoansRequest(page_size=500, page_token=token)
            return self.lending.ListLoans(request, timeout=CALL_TIMEOUT)  # type: ignore[no-any-return]

        return sum(
            [1 async for page in pages(fetch) for loan in page.loans if loan.fund_id == FUND_ID]
        )

    async def figures(self, month: int, as_of: date) -> MonthFigures:
        f = await self.fund()
        report = (
            await self.lending.GetPortfolioReport(
                lending_pb.GetPortfolioReportRequest(as_of=proto_date(as_of), fund_id=FUND_ID),
                timeout=CALL_TIMEOUT,
            )
        ).report
        t = report.total
        return MonthFigures(
            month=month,
            as_of=as_of,
            loans=await self.loans(),
            active_loans=t.active_loans,
            disbursed_minor=f.disbursed_minor,
            repaid_minor=f.repaid_principal_minor,
            available_minor=f.available_minor,
            outstanding_minor=f.outstanding_principal_minor,
            written_off_minor=f.written_off_minor,
            recovered_minor=f.recovered_minor,
            par30_minor=t.par30_outstanding_minor,
            par30_basis_points=t.par30_basis_points,
            repayment_rate_basis_points=t.repayment_rate_basis_points,
        )


async def run_simulation(
    a: Assumptions, settings: Settings, progress: Progress | None = None
) -> Result:
    """Start the scratch parts, run the months, return the ledger's figures."""
    started = time.perf_counter()
    result = Result(a, a.capital_minor)
    with tempfile.TemporaryDirectory(prefix="mineaction-sim-") as scratch:
        folder = Path(scratch)
        task = progress.add_task("starting PostgreSQL", total=a.months) if progress else None

        def say(text: str) -> None:
            if progress is not None and task is not None:
                progress.update(task, description=text)

        async with scratch_database(settings, folder) as url:
            local = load_settings(
                DATABASE_URL=url,
                MINEACTION_STATE_DIR=str(folder),
                LOG_LEVEL="error",
                LOG_FORMAT="json",
                SHUTDOWN_GRACE_SECONDS=1,
                METRICS_PORT=0,
                LENDING_ACCEPT_FUTURE_DATES=True,  # the simulation's clock runs ahead
                ELIGIBILITY_ACCEPT_FUTURE_DATES=True,
            )
            configure_logging(local, process="simulate")
            # Scratch credentials, as `make run` makes them: signing key, JWKS, dev-token,
            # service-token; and a scratch keyring for the Temporal payloads.
            ensure_dev_credentials(local)
            ensure_keyring(local.effective_payload_keys_file)
            say("starting the lending service")
            host = ServiceHost(LENDING, local, address="127.0.0.1:0")
            await host.start()
            try:
                lending_address = f"127.0.0.1:{host.port}"
                local = load_settings(
                    DATABASE_URL=url,
                    MINEACTION_STATE_DIR=str(folder),
                    LOG_LEVEL="error",
                    LOG_FORMAT="json",
                    LENDING_ADDRESS=lending_address,
                    METRICS_PORT=0,
                )
                await _run(a, local, host, result, progress, task, say)
            finally:
                await host.stop(grace=1)
    result.wall_seconds = time.perf_counter() - started
    return result


async def _open_fund(host: ServiceHost, a: Assumptions, on: date) -> None:
    """The simulated fund, opened in the scratch ledger by the ledger's own code, as the
    service opens the funds of products.yaml."""
    assert host.db is not None
    async with host.db.pool.acquire() as conn, conn.transaction():
        await ledger.open_fund(
            conn,
            fund_id=FUND_ID,
            name_en="Simulated revolving fund",
            name_az="Simulyasiya dövriyyə fondu",
            committed_capital_minor=a.capital_minor,
            committed_on=on,
        )


async def _run(
    a: Assumptions,
    settings: Settings,
    host: ServiceHost,
    result: Result,
    progress: Progress | None,
    task: object,
    say: object,
) -> None:
    announce = say if callable(say) else (lambda text: None)
    announce("starting Temporal (time skipping)")
    box = await open_outbox(settings)
    activities = JourneyActivities.from_settings(settings, box)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=data_converter(settings),
        runtime=_quiet_runtime(),
    )
    # The scratch cluster's own dev token (never the operator's MINEACTION_TOKEN).
    token = (settings.state_dir / DEV_TOKEN_FILE).read_text(encoding="utf-8").strip()
    channel = open_channel(settings.lending_address, token)
    try:
        lending = lending_grpc.LendingServiceStub(channel)
        task_queue = f"simulate-{uuid.uuid4()}"
        async with build_worker(env.client, activities, task_queue):
            start_at = await env.get_current_time()
            start = programme_date(start_at)
            await _open_fund(host, a, start)
            programme = Programme(a, lending, env, task_queue)
            announce(f"lending to the first {a.survivors} survivors")
            for kind in behaviours(a, programme.rng):
                await programme.lend(kind, start)
            result.months.append(await programme.figures(0, start))
            for month in range(1, a.months + 1):
                announce(f"month {month} of {a.months}")
                target = add_months(start, month)
                wake = datetime.combine(target, clock(), tzinfo=PROGRAMME_ZONE)
                now = await env.get_current_time()
                if wake > now:
                    await env.sleep(wake - now)
                # The revolving part: lend again while the ledger's available cash allows.
                while (await programme.fund()).available_minor >= a.amount_minor:
                    await programme.lend(draw(a, programme.rng), target)
                result.months.append(await programme.figures(month, target))
                if progress is not None:
                    progress.advance(task)  # type: ignore[arg-type]
            for handle in programme.borrowers:  # one at a time: never gathered here
                with contextlib.suppress(Exception):
                    await handle.terminate("the simulation is over")
    finally:
        await channel.close()
        await env.shutdown()
        await activities.close()
        await box.db.close()


def _quiet_runtime() -> Runtime:
    """A Temporal runtime that keeps the SDK core's warnings off the operator's screen."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


# --- output ----------------------------------------------------------------------------


def table(result: Result) -> Table:
    t = Table(title="The revolving fund, month by month (figures from the ledger, AZN)")
    for name in (
        "Month",
        "Date",
        "Loans",
        "Active",
        "Disbursed",
        "Repaid",
        "Available",
        "Outstanding",
        "PAR30",
        "PAR30 %",
        "Repayment rate",
    ):
        t.add_column(name, justify="left" if name == "Date" else "right")
    for m in result.months:
        t.add_row(
            str(m.month),
            m.as_of.isoformat(),
            str(m.loans),
            str(m.active_loans),
            manat(m.disbursed_minor),
            manat(m.repaid_minor),
            manat(m.available_minor),
            manat(m.outstanding_minor),
            manat(m.par30_minor),
            f"{m.par30_basis_points / 100:.2f}",
            f"{m.repayment_rate_basis_points / 100:.2f}",
        )
    return t


def summary(result: Result) -> list[str]:
    a, first, last = result.assumptions, result.months[0], result.months[-1]
    revolved = result.revolving_loans
    identity = last.available_minor + last.outstanding_minor
    expected = result.capital_minor - last.written_off_minor + last.recovered_minor
    peak = max(result.months, key=lambda m: m.par30_basis_points)
    return [
        f"Loans: {first.loans} to the first cohort, {revolved} more financed by repayments "
        f"({manat(revolved * a.amount_minor)} AZN relent), {last.loans} in all.",
        f"After {a.months} months: repaid {manat(last.repaid_minor)} AZN of "
        f"{manat(last.disbursed_minor)} AZN disbursed; outstanding "
        f"{manat(last.outstanding_minor)} AZN; available {manat(last.available_minor)} AZN.",
        f"PAR30: {last.par30_basis_points / 100:.2f}% at the end "
        f"(peak {peak.par30_basis_points / 100:.2f}% in month {peak.month}); repayment rate "
        f"{last.repayment_rate_basis_points / 100:.2f}%.",
        f"Check: available + outstanding = {manat(identity)} AZN = capital "
        f"{manat(result.capital_minor)} - written off {manat(last.written_off_minor)} + "
        f"recovered {manat(last.recovered_minor)}"
        + (" ✓" if identity == expected else f" ✗ (expected {manat(expected)})"),
    ]


def write_chart(result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = [m.month for m in result.months]
    fig, left = plt.subplots(figsize=(10, 5.5), dpi=110)
    left.plot(months, [m.available_minor / 100 for m in result.months], label="Available balance")
    left.plot(
        months, [m.outstanding_minor / 100 for m in result.months], label="Outstanding principal"
    )
    left.set_xlabel("Month of the three-year commitment")
    left.set_ylabel("AZN")
    left.grid(True, alpha=0.3)
    right = left.twinx()
    right.plot(
        months,
        [m.par30_basis_points / 100 for m in result.months],
        color="tab:red",
        linestyle="--",
        label="PAR30 (%)",
    )
    right.set_ylabel("PAR30 (%)")
    right.set_ylim(bottom=0)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    a = result.assumptions
    fig.suptitle(
        f"Revolving fund: {a.survivors} survivors, {a.product_id} loans of "
        f"{manat(a.amount_minor)} AZN; {a.on_time:.0%} on time, {a.late:.0%} late, "
        f"{a.default:.0%} default"
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def product_terms(a: Assumptions) -> dict[str, Any]:
    """The loan product from the lending service's products.yaml (the data the scratch
    service loads), checked against the assumptions before anything starts."""
    data = yaml.safe_load((LENDING_DIR / "products.yaml").read_text(encoding="utf-8"))
    products = {p["product_id"]: p for p in data["products"]}
    product = products.get(a.product_id)
    if product is None:
        raise BadInput(f"unknown loan product {a.product_id!r}: use one of {', '.join(products)}")
    low, high = product["min_amount_minor"], product["max_amount_minor"]
    if not low <= a.amount_minor <= high:
        raise BadInput(
            f"--amount {manat(a.amount_minor)} is outside the {a.product_id} product's range "
            f"of {manat(low)} to {manat(high)} AZN"
        )
    if a.capital_minor < a.amount_minor:
        raise BadInput("--capital must cover at least one loan")
    instalments = product["term_months"] - product["grace_months"]  # at most
    if a.default and a.default_after >= instalments:
        raise BadInput(
            f"--default-after {a.default_after}: a {a.product_id} loan has at most "
            f"{instalments} instalments, so such a borrower repays in full; give fewer"
        )
    return dict(product)


async def simulate(a: Assumptions, out: Console) -> Result:
    from cli.context import settings as load

    product = product_terms(a)
    settings = load()
    out.print("[bold]Simulation assumptions[/bold]")
    for line in a.lines(product):
        out.print(f"  • {line}")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    ) as progress:
        result = await run_simulation(a, settings, progress)
    out.print(table(result))
    for line in summary(result):
        out.print(line)
    write_chart(result, a.chart)
    out.print(
        f"Chart: {a.chart} (available balance, outstanding principal and PAR30 by month); "
        f"the run took {result.wall_seconds:.1f} s."
    )
    return result
