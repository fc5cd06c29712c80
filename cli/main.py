"""`mineaction`: daily work on the cluster from a terminal.

Settings are the services' own (ELIGIBILITY_ADDRESS, LENDING_ADDRESS, TEMPORAL_ADDRESS,
MINEACTION_STATE_DIR, ...). Calls carry MINEACTION_TOKEN, else `--token-file`, else the
local cluster's `<state dir>/dev-token`. Every failure is one `error: ...` line on stderr
with a non-zero exit code; bad input is refused before anything is called (exit 2).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.table import Table
from typer._click.exceptions import ClickException
from typer.core import TyperGroup
from typer.exceptions import Abort

from cli import context, inputs, render
from cli import export as csv_export
from cli.errors import calling, fail, run, temporal
from cli.inputs import BadInput, manat
from cli.requests import checked, intake_from_text
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.protoconv import proto_date
from workers.journey import search_attributes as sa
from workers.journey.model import (
    AssistancePlan,
    CommitteeDecision,
    JourneyInput,
    JourneyStatus,
    LoanRequest,
    journey_workflow_id,
)
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing argument, an unknown option) as one `error:` line too."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(
                args=args,
                prog_name=prog_name or "mineaction",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except ClickException as error:
            fail(f"{error.format_message()} (see mineaction --help)", error.exit_code)
        except Abort:
            fail("aborted", 1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="mineaction",
    help="Operate the survivor reintegration programme: survivors, journeys, loans, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
journey_app = typer.Typer(help="Start a survivor's journey, show it, record decisions.")
export_app = typer.Typer(help="Export CSV (loans, portfolio, assessments).")
app.add_typer(journey_app, name="journey")
app.add_typer(export_app, name="export")

TIMEOUT = context.CALL_TIMEOUT_SECONDS
RPC_TIMEOUT = timedelta(seconds=TIMEOUT)
_OPTIONS = context.Options()

Lang = Annotated[str, typer.Option("--lang", help="en (English) or az (Azerbaijani).")]


@app.callback()
def main(
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File holding the bearer token (default: MINEACTION_TOKEN, else "
            "<state dir>/dev-token).",
        ),
    ] = None,
) -> None:
    global _OPTIONS
    _OPTIONS = context.Options(token_file=token_file)


def _today() -> date:
    return datetime.now(UTC).date()


def _date_or_today(value: str | None, what: str) -> date:
    return inputs.iso_date(value, what) if value else _today()


# --- survivors ------------------------------------------------------------------------


@app.command()
def register(
    intake_file: Annotated[
        Path | None,
        typer.Argument(help="Intake record, YAML or JSON (the API's SurvivorIntake)."),
    ] = None,
    survivor_id: Annotated[str | None, typer.Option(help="Overrides the file's.")] = None,
    district: Annotated[str | None, typer.Option(help="District code, e.g. saatli.")] = None,
    consent_by: Annotated[
        str | None, typer.Option(help="Staff id who recorded the consent.")
    ] = None,
    consent_on: Annotated[str | None, typer.Option(help="Consent date, YYYY-MM-DD.")] = None,
    assess: Annotated[bool, typer.Option(help="Assess eligibility right after.")] = False,
    assessment_date: Annotated[
        str | None, typer.Option("--date", help="Assessment date (default today).")
    ] = None,
    lang: Lang = "en",
) -> None:
    """Register a survivor from an intake file and/or options (consent is required)."""

    async def go() -> None:
        language = inputs.language(lang)
        intake = eligibility_pb.SurvivorIntake()
        if intake_file is not None:
            path = inputs.existing_file(intake_file, "intake file")
            intake = intake_from_text(path.read_text(encoding="utf-8"), str(path))
        elif survivor_id is None:
            raise BadInput("give an intake file (YAML or JSON), see docs/cli.md")
        if survivor_id is not None:
            intake.survivor_id = inputs.identifier(survivor_id, "survivor id")
        if district is not None:
            intake.district_code = inputs.district(district)
        if consent_by is not None:
            intake.consent.recorded_by = inputs.staff(consent_by, "--consent-by")
            intake.consent.data_processing = True
        if consent_on is not None:
            intake.consent.recorded_on.CopyFrom(
                proto_date(inputs.iso_date(consent_on, "--consent-on"))
            )
        on = _date_or_today(assessment_date, "--date")
        request = checked(
            eligibility_pb.RegisterSurvivorRequest(request_id=inputs.request_id(), intake=intake)
        )
        if not intake.consent.data_processing:
            raise BadInput("the intake has no recorded consent to data processing")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.eligibility(settings, token) as stub:
            with calling("eligibility", settings.eligibility_address):
                survivor = (await stub.RegisterSurvivor(request, timeout=TIMEOUT)).survivor
            out = render.console()
            out.print(f"registered survivor {survivor.survivor_id} ({intake.district_code})")
            if assess:
                await _assess(
                    stub, settings.eligibility_address, survivor.survivor_id, on, language
                )

    run(go())


async def _assess(stub: object, address: str, survivor_id: str, on: date, lang: str) -> None:
    request = checked(
        eligibility_pb.AssessEligibilityRequest(
            request_id=inputs.request_id(), survivor_id=survivor_id, assessment_date=proto_date(on)
        )
    )
    with calling("eligibility", address):
        assessment = (await stub.AssessEligibility(request, timeout=TIMEOUT)).assessment  # type: ignore[attr-defined]
    out = render.console()
    out.print(render.assessment_table(assessment, lang))
    out.print(render.priority_line(assessment, lang))


@app.command()
def assess(
    survivor_id: Annotated[str, typer.Argument(help="The survivor's opaque id.")],
    assessment_date: Annotated[
        str | None, typer.Option("--date", help="Assessment date, YYYY-MM-DD (default today).")
    ] = None,
    lang: Lang = "en",
) -> None:
    """Assess a registered survivor's eligibility: per-programme outcome and why."""

    async def go() -> None:
        language = inputs.language(lang)
        sid = inputs.identifier(survivor_id, "survivor id")
        on = _date_or_today(assessment_date, "--date")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.eligibility(settings, token) as stub:
            await _assess(stub, settings.eligibility_address, sid, on, language)

    run(go())


# --- journeys -------------------------------------------------------------------------


def _assistance_plan(spec: str) -> AssistancePlan:
    """TYPE[:PROVIDER[:POOL]], e.g. wheelchair:baku-mobility-aids:stock-wheelchairs-baku."""
    parts = spec.split(":")
    if len(parts) > 3:
        raise BadInput(f"--assistance {spec!r}: use TYPE[:PROVIDER[:POOL]]")
    type_id = inputs.code(parts[0], "assistance type")
    provider = inputs.identifier(parts[1], "provider id") if len(parts) > 1 and parts[1] else ""
    pool = inputs.identifier(parts[2], "capacity pool id") if len(parts) > 2 and parts[2] else ""
    return AssistancePlan(type_id, provider_id=provider, capacity_pool_id=pool)


@journey_app.command("start")
def journey_start(
    survivor_id: Annotated[str, typer.Argument(help="A registered survivor's id.")],
    case_worker: Annotated[str, typer.Option(help="The case worker's staff id.")],
    product: Annotated[
        str | None, typer.Option(help="Loan product, e.g. fish_farming (none: no loan).")
    ] = None,
    amount: Annotated[
        str | None, typer.Option(help="Loan amount in manat, e.g. 5000 or 5000.00.")
    ] = None,
    purpose: Annotated[str, typer.Option(help="What the loan is for.")] = "",
    assistance: Annotated[
        list[str] | None,
        typer.Option(help="Assistance TYPE[:PROVIDER[:POOL]]; repeat for several."),
    ] = None,
    programme_year: Annotated[int, typer.Option(help="Programme year, 1-3.")] = 1,
) -> None:
    """Start a survivor's journey (a SurvivorJourneyWorkflow keyed by the survivor id)."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        worker = inputs.staff(case_worker, "--case-worker")
        inputs.count(programme_year, "--programme-year", 1, 3)
        loan = None
        if (product is None) != (amount is None):
            raise BadInput("a loan needs both --product and --amount")
        if product is not None and amount is not None:
            if len(purpose) > 500:
                raise BadInput("--purpose is longer than 500 characters")
            loan = LoanRequest(
                inputs.code(product, "product"),
                inputs.amount_minor(amount, "--amount"),
                purpose.strip() or "start-up loan",
            )
        plans = [_assistance_plan(s) for s in assistance or []]
        if not loan and not plans:
            raise BadInput("a journey needs a loan (--product, --amount) or --assistance")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        # Only a registered survivor gets a journey.
        async with context.eligibility(settings, token) as stub:
            with calling("eligibility", settings.eligibility_address):
                await stub.GetSurvivor(
                    eligibility_pb.GetSurvivorRequest(survivor_id=sid), timeout=TIMEOUT
                )
        client = await context.temporal_client(settings)
        workflow_id = journey_workflow_id(sid)
        with temporal(settings.effective_temporal_address, f"the journey {workflow_id}"):
            await client.start_workflow(
                SurvivorJourneyWorkflow.run,
                JourneyInput(
                    survivor_id=sid,
                    case_worker_id=worker,
                    loan=loan,
                    assistance=plans,
                    programme_year=programme_year,
                ),
                id=workflow_id,
                task_queue=settings.journey_task_queue,
                search_attributes=initial_search_attributes(programme_year),
                rpc_timeout=RPC_TIMEOUT,
            )
        render.console().print(
            f"started journey {workflow_id} on task queue {settings.journey_task_queue}"
        )

    run(go())


@journey_app.command("status")
def journey_status(
    survivor_id: Annotated[str, typer.Argument(help="The survivor's id.")],
    lang: Lang = "en",
) -> None:
    """Show where a journey is (the workflow's status query)."""

    async def go() -> None:
        language = inputs.language(lang)
        sid = inputs.identifier(survivor_id, "survivor id")
        settings = context.settings()
        client = await context.temporal_client(settings)
        workflow_id = journey_workflow_id(sid)
        handle = client.get_workflow_handle_for(SurvivorJourneyWorkflow.run, workflow_id)
        with temporal(settings.effective_temporal_address, f"the journey {workflow_id}"):
            described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
            status: JourneyStatus = await handle.query(
                SurvivorJourneyWorkflow.status, rpc_timeout=RPC_TIMEOUT
            )
        state = described.status.name if described.status else "UNKNOWN"
        render.console().print(render.journey_table(status, workflow_id, state, language))

    run(go())


@journey_app.command("decide")
def journey_decide(
    survivor_id: Annotated[str, typer.Argument(help="The survivor whose loan was decided.")],
    member: Annotated[str, typer.Option(help="Committee member's staff id.")],
    ref: Annotated[str, typer.Option(help="The committee minute, e.g. CM-2026-014.")],
    approve: Annotated[
        bool | None, typer.Option("--approve/--reject", help="The committee's decision.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (required for a rejection).")] = "",
) -> None:
    """Record the credit committee's decision on the journey's loan (a workflow update)."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        if approve is None:
            raise BadInput("say --approve or --reject")
        member_id = inputs.staff(member, "--member")
        decision_ref = inputs.staff(ref, "--ref")
        if len(decision_ref) > 128 or len(reason) > 1000:
            raise BadInput("--ref is at most 128 characters and --reason 1000")
        if not approve and not reason.strip():
            raise BadInput("a rejection needs --reason")
        settings = context.settings()
        client = await context.temporal_client(settings)
        workflow_id = journey_workflow_id(sid)
        handle = client.get_workflow_handle_for(SurvivorJourneyWorkflow.run, workflow_id)
        with temporal(settings.effective_temporal_address, f"the journey {workflow_id}"):
            status = await handle.execute_update(
                SurvivorJourneyWorkflow.record_committee_decision,
                CommitteeDecision(approve, member_id, decision_ref, reason.strip()),
                rpc_timeout=RPC_TIMEOUT,
            )
        verb = "approved" if approve else "rejected"
        render.console().print(
            f"loan {status.loan_id} {verb} by {member_id} ({decision_ref}); "
            f"loan status {status.loan_status}, stage {status.stage}"
        )

    run(go())


# --- repayments -----------------------------------------------------------------------


@app.command(context_settings={"ignore_unknown_options": True})
def repay(
    loan_id: Annotated[str, typer.Argument(help="The loan.")],
    amount: Annotated[str, typer.Argument(help="Amount received, in manat (e.g. 208.35).")],
    payment_date: Annotated[
        str | None, typer.Option("--date", help="Payment date, YYYY-MM-DD (default today).")
    ] = None,
    received_by: Annotated[str, typer.Option(help="Who received it.")] = "cli",
    channel: Annotated[str, typer.Option(help="How it was paid, e.g. cash, bank.")] = "cli",
    request_id: Annotated[
        str | None,
        typer.Option(help="Idempotency key (UUID) to retry a repayment safely; default new."),
    ] = None,
) -> None:
    """Record a repayment on a loan (allocated to the oldest instalment first)."""

    async def go() -> None:
        request = lending_pb.RecordRepaymentRequest(
            request_id=request_id or inputs.request_id(),
            loan_id=inputs.identifier(loan_id, "loan id"),
            amount_minor=inputs.amount_minor(amount),
            currency_code="AZN",
            payment_date=proto_date(_date_or_today(payment_date, "--date")),
            received_by=inputs.staff(received_by, "--received-by"),
            channel=channel,
        )
        checked(request)
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.lending(settings, token) as stub:
            with calling("lending", settings.lending_address):
                response = await stub.RecordRepayment(request, timeout=TIMEOUT)
        loan, repayment = response.loan, response.repayment
        allocated = ", ".join(
            f"#{a.instalment_number} {manat(a.principal_minor)}" for a in repayment.allocations
        )
        kind = "recovery" if repayment.recovery else "repayment"
        render.console().print(
            f"recorded {kind} of {manat(repayment.amount_minor)} AZN on {loan.loan_id} "
            f"(transaction {repayment.transaction_id}); "
            + (f"allocated {allocated}; " if allocated else "")
            + f"outstanding {manat(loan.outstanding_principal_minor)} AZN, "
            f"{loan.days_past_due} days past due, "
            f"{lending_pb.LoanState.Name(loan.state).removeprefix('LOAN_STATE_')}"
        )

    run(go())


# --- arrears --------------------------------------------------------------------------


@app.command()
def arrears(
    min_days: Annotated[int, typer.Option(help="At least this many days past due.")] = 1,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many journeys.")] = 200,
) -> None:
    """List running journeys in arrears (Temporal visibility on DaysPastDue)."""

    async def go() -> None:
        inputs.count(min_days, "--min-days", 1, 100_000)
        inputs.count(limit, "--limit", 1, 10_000)
        query = (
            "WorkflowType = 'SurvivorJourneyWorkflow' AND ExecutionStatus = 'Running' "
            f"AND {sa.DAYS_PAST_DUE.name} >= {min_days}"
        )
        if district is not None:
            query += f" AND {sa.DISTRICT_CODE.name} = '{inputs.district(district)}'"
        settings = context.settings()
        client = await context.temporal_client(settings)
        rows: list[tuple[int, str, str, str, str]] = []
        with temporal(settings.effective_temporal_address, "the journeys"):
            async for wf in client.list_workflows(query, limit=limit, rpc_timeout=RPC_TIMEOUT):
                attrs = wf.typed_search_attributes
                rows.append(
                    (
                        attrs.get(sa.DAYS_PAST_DUE) or 0,
                        wf.id.removeprefix("journey-"),
                        attrs.get(sa.STAGE) or "",
                        attrs.get(sa.LOAN_STATUS) or "",
                        attrs.get(sa.DISTRICT_CODE) or "",
                    )
                )
        rows.sort(key=lambda r: (-r[0], r[1]))
        table = Table(title=f"Journeys at least {min_days} day(s) past due: {len(rows)}")
        for column in ("Survivor", "Days past due", "Stage", "Loan status", "District"):
            table.add_column(column, justify="right" if column == "Days past due" else "left")
        for dpd, survivor, stage, loan_status, district_code in rows:
            table.add_row(survivor, str(dpd), stage, loan_status, district_code)
        render.console().print(table)

    run(go())


# --- reports --------------------------------------------------------------------------


@app.command()
def portfolio(
    as_of: Annotated[str | None, typer.Option(help="Report date (default today).")] = None,
    fund: Annotated[str, typer.Option(help="Only this fund's loans ('' for all).")] = "",
) -> None:
    """The portfolio report: outstanding, PAR30 and repayment rate, disaggregated."""

    async def go() -> None:
        day = _date_or_today(as_of, "--as-of")
        fund_id = inputs.identifier(fund, "fund id") if fund else ""
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.lending(settings, token) as stub:
            with calling("lending", settings.lending_address):
                report = (
                    await stub.GetPortfolioReport(
                        lending_pb.GetPortfolioReportRequest(
                            as_of=proto_date(day), fund_id=fund_id
                        ),
                        timeout=TIMEOUT,
                    )
                ).report
        out = render.console()
        out.print(render.portfolio_table(f"Portfolio as of {day}", [("Total", report.total)]))
        out.print(render.buckets_table(report.total))
        for title, rows in (
            ("By district", report.by_district),
            ("By sex", report.by_sex),
            ("By product", report.by_product),
        ):
            out.print(render.portfolio_table(title, [(r.key, r.figures) for r in rows]))

    run(go())


@app.command()
def fund(
    fund_id: Annotated[str, typer.Argument(help="The fund.")] = "main",
    lang: Lang = "en",
) -> None:
    """The revolving fund's capital figures, every one a sum of ledger postings."""

    async def go() -> None:
        language = inputs.language(lang)
        fid = inputs.identifier(fund_id, "fund id")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.lending(settings, token) as stub:
            with calling("lending", settings.lending_address):
                f = (
                    await stub.GetFund(lending_pb.GetFundRequest(fund_id=fid), timeout=TIMEOUT)
                ).fund
        render.console().print(render.fund_table(f, language))

    run(go())


# --- CSV exports ----------------------------------------------------------------------

Output = Annotated[Path, typer.Option("--output", "-o", help="CSV file to write; '-' for stdout.")]


def _check_output(path: Path) -> None:
    """Checked before any call: an export never fetches what it cannot write."""
    if str(path) == "-":
        return
    if path.is_dir():
        raise BadInput(f"--output {str(path)!r} is a directory")
    if not path.parent.is_dir():
        raise BadInput(f"--output: the folder {str(path.parent)!r} does not exist")


@contextlib.contextmanager
def _output(path: Path) -> Iterator[IO[str]]:
    if str(path) == "-":
        yield sys.stdout
        return
    _check_output(path)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="") as out:
        yield out
    partial.replace(path)  # a failed export leaves no half-written file behind


_STATES = {
    n.removeprefix("LOAN_STATE_").lower(): v
    for n, v in lending_pb.LoanState.items()
    if v != lending_pb.LOAN_STATE_UNSPECIFIED
}


@export_app.command("loans")
def export_loans(
    output: Output = Path("-"),
    state: Annotated[
        str | None, typer.Option(help="Only loans in this state, e.g. active.")
    ] = None,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
) -> None:
    """Every loan (or a state's, a district's) with its balances as of today."""

    async def go() -> None:
        _check_output(output)
        state_value = lending_pb.LOAN_STATE_UNSPECIFIED
        if state is not None:
            if state.lower() not in _STATES:
                raise BadInput(f"unknown loan state {state!r}: use one of {', '.join(_STATES)}")
            state_value = _STATES[state.lower()]
        district_code = inputs.district(district) if district is not None else ""
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.lending(settings, token) as stub:
            rows = []
            with calling("lending", settings.lending_address):
                async for row in csv_export.loans(stub, state_value, district_code, TIMEOUT):
                    rows.append(row)
        _write(output, csv_export.LOAN_COLUMNS, rows, "loans")

    run(go())


@export_app.command("portfolio")
def export_portfolio(
    output: Output = Path("-"),
    as_of: Annotated[str | None, typer.Option(help="Report date (default today).")] = None,
    fund: Annotated[str, typer.Option(help="Only this fund's loans ('' for all).")] = "",
) -> None:
    """The portfolio report, one row per total, district, sex and product."""

    async def go() -> None:
        _check_output(output)
        day = _date_or_today(as_of, "--as-of")
        fund_id = inputs.identifier(fund, "fund id") if fund else ""
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.lending(settings, token) as stub:
            with calling("lending", settings.lending_address):
                rows = await csv_export.portfolio(stub, day, fund_id, TIMEOUT)
        _write(output, csv_export.PORTFOLIO_COLUMNS, rows, "rows")

    run(go())


@export_app.command("assessments")
def export_assessments(
    output: Output = Path("-"),
    survivor_id: Annotated[str | None, typer.Option(help="Only this survivor's.")] = None,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
) -> None:
    """Every assessment, one row per programme decision."""

    async def go() -> None:
        _check_output(output)
        sid = inputs.identifier(survivor_id, "survivor id") if survivor_id else ""
        district_code = inputs.district(district) if district is not None else ""
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.eligibility(settings, token) as stub:
            rows = []
            with calling("eligibility", settings.eligibility_address):
                async for row in csv_export.assessments(stub, sid, district_code, TIMEOUT):
                    rows.append(row)
        _write(output, csv_export.ASSESSMENT_COLUMNS, rows, "rows")

    run(go())


def _write(output: Path, columns: tuple[str, ...], rows: list[list[str]], what: str) -> None:
    with _output(output) as out:
        w = csv_export.writer(out, columns)
        w.writerows(rows)
    if str(output) != "-":
        print(f"wrote {len(rows)} {what} to {output}", file=sys.stderr)


# --- simulate -------------------------------------------------------------------------


@app.command()
def simulate(
    survivors: Annotated[int, typer.Option(help="Survivors in the first cohort (N).")] = 10,
    months: Annotated[int, typer.Option(help="Months to run: the three-year commitment.")] = 36,
    product: Annotated[str, typer.Option(help="Loan product of every loan.")] = "carpet_weaving",
    amount: Annotated[str, typer.Option(help="Each loan, in manat.")] = "3000",
    capital: Annotated[
        str | None,
        typer.Option(help="The simulated fund's capital in manat (default N x amount)."),
    ] = None,
    on_time: Annotated[float, typer.Option(help="Share of borrowers who pay on time.")] = 0.7,
    late: Annotated[float, typer.Option(help="Share who pay every instalment late.")] = 0.2,
    default: Annotated[float, typer.Option(help="Share who stop paying (default).")] = 0.1,
    days_late: Annotated[int, typer.Option(help="How late the late payers pay, in days.")] = 45,
    default_after: Annotated[
        int, typer.Option(help="Instalments a defaulter pays before stopping.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Random seed for who behaves how.")] = 1,
    chart: Annotated[Path, typer.Option(help="Where to write the PNG chart.")] = Path(
        "simulation.png"
    ),
) -> None:
    """Run N synthetic borrowers' loans for 36 months under Temporal time skipping and
    show how the revolving fund performs (ledger figures), month by month."""
    from cli import simulate as sim

    def go_assumptions() -> sim.Assumptions:
        inputs.count(survivors, "--survivors", 1, 200)
        inputs.count(months, "--months", 1, 120)
        inputs.count(days_late, "--days-late", 1, 365)
        inputs.count(default_after, "--default-after", 0, 120)
        for value, what in ((on_time, "--on-time"), (late, "--late"), (default, "--default")):
            inputs.share(value, what)
        if abs(on_time + late + default - 1.0) > 1e-9:
            raise BadInput(
                f"--on-time, --late and --default must add up to 1, got "
                f"{on_time + late + default:g}"
            )
        loan_minor = inputs.amount_minor(amount, "--amount")
        capital_minor = (
            inputs.amount_minor(capital, "--capital") if capital else loan_minor * survivors
        )
        if chart.is_dir() or not chart.parent.is_dir():
            raise BadInput(f"--chart {str(chart)!r}: not a file in an existing folder")
        if chart.suffix.lower() != ".png":
            raise BadInput(f"--chart {str(chart)!r} must end in .png")
        return sim.Assumptions(
            survivors=survivors,
            months=months,
            product_id=inputs.code(product, "--product"),
            amount_minor=loan_minor,
            capital_minor=capital_minor,
            on_time=on_time,
            late=late,
            default=default,
            days_late=days_late,
            default_after=default_after,
            seed=seed,
            chart=chart,
        )

    async def go() -> None:
        await sim.simulate(go_assumptions(), render.console())

    run(go())
