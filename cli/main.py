"""`mineaction`: daily work on the cluster from a terminal.

Settings are the services' own (ELIGIBILITY_ADDRESS, LENDING_ADDRESS, TEMPORAL_ADDRESS,
MINEACTION_STATE_DIR, ...). Calls carry MINEACTION_TOKEN, else `--token-file`, else the
local cluster's `<state dir>/dev-token`. Every failure is one `error: ...` line on stderr
with a non-zero exit code; bad input is refused before anything is called (exit 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.table import Table
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from typer._click.exceptions import ClickException
from typer.core import TyperGroup
from typer.exceptions import Abort

from cli import catalogue, context, inputs, render
from cli import export as csv_export
from cli.errors import CliError, calling, fail, one_line, run, temporal
from cli.inputs import BadInput
from cli.paging import pages
from cli.requests import checked, intake_from_text
from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.auth import AccessPolicy, AuthConfigError, Principal, TokenVerifier
from services.common.config import ConfigError, Settings
from services.common.districts import known_districts
from services.common.errors import Unauthenticated, violations_in
from services.common.identity import same_person
from services.common.money import manat
from services.common.programme_time import programme_today
from services.common.protoconv import from_proto_date, proto_date
from services.eligibility import DEFAULT_RULE_SET
from services.eligibility.intake import intake_violations
from workers.journey import search_attributes as sa
from workers.journey.activities import (
    assistance_state_of,
    following_loan,
    loan_snapshot_of,
    loan_status,
    snapshot_request,
    survivor_profile_of,
    tell_journeys,
)
from workers.journey.loan_news import LOAN_NEWS_WORKFLOW_ID
from workers.journey.lookup import JourneyRecord, journeys_of
from workers.journey.model import (
    CLOSED_LOAN_STATES,
    AssistanceAction,
    AssistancePlan,
    AssistanceRefresh,
    AssistanceState,
    CommitteeDecision,
    FollowUp,
    Hardship,
    JourneyInput,
    JourneyStatus,
    LoanChanged,
    LoanRequest,
    Stage,
    WriteOffDecision,
    WriteOffProposal,
    WriteOffWithdrawal,
    assistance_workflow_id,
    journey_of,
    journey_workflow_id,
)
from workers.journey.worker import exit_now
from workers.journey.workflows import (
    AssistanceWorkflow,
    SurvivorJourneyWorkflow,
    initial_search_attributes,
)


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
        except SystemExit as done:
            if args is None:  # the console script, not a test's CliRunner
                _exit_process(done.code)
            raise
        if not standalone_mode:
            return result
        code = result if isinstance(result, int) else 0
        if args is None:
            _exit_process(code)
        sys.exit(code)


def _exit_process(code: object) -> NoReturn:
    """End the `mineaction` process once the command is done (see `exit_now`: every
    command closes its channels, files and scratch servers itself before it returns)."""
    exit_now(code if isinstance(code, int) else (0 if code is None else 1))


app = typer.Typer(
    cls=_OneLineErrors,
    name="mineaction",
    help="Operate the survivor reintegration programme: survivors, journeys, loans, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
journey_app = typer.Typer(
    help="Start a survivor's journey, show it, and steer it: the committee's decision, "
    "hardship, write-off, impact follow-ups, a provider's step on an assistance item."
)
export_app = typer.Typer(help="Export CSV (loans, a loan's statement, portfolio, assessments).")
rules_app = typer.Typer(
    help="Eligibility rules as data: the published versions, a version's YAML, what a "
    "change would decide differently, and publishing it."
)
app.add_typer(journey_app, name="journey")
app.add_typer(export_app, name="export")
app.add_typer(rules_app, name="rules")

TIMEOUT = context.CALL_TIMEOUT_SECONDS
RPC_TIMEOUT = timedelta(seconds=TIMEOUT)
# Changes held back longer than this (a transaction normally ends in milliseconds) make
# `health` report the loan news relay as held back.
HELD_BACK_ALARM = timedelta(minutes=1)
_OPTIONS = context.Options()
T = TypeVar("T")

Lang = Annotated[str, typer.Option("--lang", help="en (English) or az (Azerbaijani).")]
RequestId = Annotated[
    str | None, typer.Option(help="Idempotency key (UUID) to retry safely; default new.")
]


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


def _date_or_today(value: str | None, what: str) -> date:
    """The date given, else today in Baku, as the services count days."""
    return programme_today() if value is None else inputs.iso_date(value, what)


def _report_day(value: str | None) -> date:
    """A portfolio report's day: one that has come (payments after today are not known
    yet; the lending service refuses such a report too)."""
    day, today = _date_or_today(value, "--as-of"), programme_today()
    if day > today:
        raise BadInput(
            f"--as-of {day} is after today ({today} in Baku): its payments are not known"
        )
    return day


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
            intake.district_code = district
        inputs.known_district(intake.district_code, "intake district_code")
        if consent_by is not None:
            intake.consent.recorded_by = inputs.staff(consent_by, "--consent-by")
            intake.consent.data_processing = True
        if consent_on is not None:
            intake.consent.recorded_on.CopyFrom(
                proto_date(inputs.iso_date(consent_on, "--consent-on"))
            )
        on = _date_or_today(assessment_date, "--date")
        # The dates against today, too: a date of birth in the future is named as such,
        # not only as an incident before the birth.
        request = checked(
            eligibility_pb.RegisterSurvivorRequest(request_id=inputs.request_id(), intake=intake),
            *[
                v
                for v in intake_violations(intake, programme_today(), "intake")
                if not v.field.endswith("district_code")  # checked above, with the list
            ],
        )
        if not intake.consent.data_processing:
            raise BadInput("the intake has no recorded consent to data processing")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.eligibility(settings, token) as stub:
            with calling("eligibility", settings.eligibility_address):
                survivor = (await stub.RegisterSurvivor(request, timeout=TIMEOUT)).survivor
            render.line(render.registered(survivor, intake.district_code, language))
            if assess:
                await _assess(
                    stub, settings.eligibility_address, survivor.survivor_id, on, language
                )

    run(go())


@app.command("withdraw-consent")
def withdraw_consent(
    survivor_id: Annotated[str, typer.Argument(help="The survivor's opaque id.")],
    on: Annotated[
        str | None,
        typer.Option("--on", help="The day the survivor withdrew consent (default today)."),
    ] = None,
    lang: Lang = "en",
) -> None:
    """Record that a survivor withdrew consent to the processing of their data.

    From then on nothing uses it: no assessment, follow-up or journey, and rule-set
    what-ifs pass over their records. What was recorded before stays. Registering them
    again, with the consent they give again and its date, restores it."""

    async def go() -> None:
        language = inputs.language(lang)
        request = checked(
            eligibility_pb.WithdrawConsentRequest(
                request_id=inputs.request_id(),
                survivor_id=inputs.identifier(survivor_id, "survivor id"),
                withdrawn_on=proto_date(_date_or_today(on, "--on")),
                recorded_by=_staff("", "the token's subject"),  # the caller records it
            )
        )
        async with _service("eligibility") as (stub, calls):
            with calls:
                survivor = (await stub.WithdrawConsent(request, timeout=TIMEOUT)).survivor
        render.line(render.consent_withdrawn(survivor, language))

    run(go())


async def _assess(
    stub: Any, address: str, survivor_id: str, on: date, lang: str, reason: str = ""
) -> None:
    """Assess, then show the assessment. A re-assessment under the latest version is
    asked for with its `reason`."""
    request = checked(
        eligibility_pb.AssessEligibilityRequest(
            request_id=inputs.request_id(),
            survivor_id=survivor_id,
            assessment_date=proto_date(on),
            reassess_under_latest=bool(reason),
            reassessment_reason=reason,
        )
    )
    with calling("eligibility", address):
        assessment = (await stub.AssessEligibility(request, timeout=TIMEOUT)).assessment
    # The assessment is stored: from here on nothing fails the command, so a retry never
    # makes a second one.
    await _show_assessment(stub, address, assessment, lang)


async def _show_assessment(
    stub: Any, address: str, assessment: eligibility_pb.Assessment, lang: str
) -> None:
    """The decisions named as the deciding rule-set version names its programmes (by
    their ids when the rule set cannot be read), the priority score, and a word when a
    newer version is published."""
    decided: eligibility_pb.RuleSet | None = None
    latest: eligibility_pb.RuleSet | None = None
    try:
        with calling("eligibility", address):
            latest, decided = await _rule_sets(stub, assessment)
    except CliError as error:
        render.line(f"{render.label('rule_set_unread', lang)}: {error}")
    out = render.console()
    out.print(render.assessment_table(assessment, lang, decided))
    for text in render.priority_lines(assessment, lang):
        render.line(text)
    if latest is not None and latest.version > assessment.rule_set_version:
        render.line(render.older_rule_set(assessment, latest.version, lang))


async def _rule_sets(
    stub: Any, assessment: eligibility_pb.Assessment
) -> tuple[eligibility_pb.RuleSet, eligibility_pb.RuleSet]:
    """The latest published version of the assessment's rule set, and the version that
    decided it."""

    async def version(number: int) -> eligibility_pb.RuleSet:
        request = eligibility_pb.GetRuleSetRequest(
            rule_set_id=assessment.rule_set_id, version=number
        )
        response = await stub.GetRuleSet(request, timeout=TIMEOUT)
        return response.rule_set  # type: ignore[no-any-return]

    latest = await version(0)
    if latest.version == assessment.rule_set_version:
        return latest, latest
    return latest, await version(assessment.rule_set_version)


@app.command()
def assess(
    survivor_id: Annotated[str, typer.Argument(help="The survivor's opaque id.")],
    assessment_date: Annotated[
        str | None, typer.Option("--date", help="Assessment date, YYYY-MM-DD (default today).")
    ] = None,
    reassess_under_latest: Annotated[
        bool,
        typer.Option(
            "--reassess-under-latest",
            help="Assess under the latest published rule-set version, not the one the "
            "survivor is pinned to (their first assessment's); needs --reason. The survivor "
            "stays on the latest version from then on.",
        ),
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option(help="Why the survivor is re-assessed under the latest version (kept)."),
    ] = None,
    lang: Lang = "en",
) -> None:
    """Assess a registered survivor's eligibility: per-programme outcome and why.

    A survivor is assessed under the rule-set version of their first assessment; when a
    newer version is published, the output says so."""

    async def go() -> None:
        language = inputs.language(lang)
        sid = inputs.identifier(survivor_id, "survivor id")
        on = _date_or_today(assessment_date, "--date")
        why = ""
        if reassess_under_latest:
            if reason is None or not reason.strip():
                raise BadInput(
                    "--reassess-under-latest needs --reason: say why the survivor is "
                    "re-assessed under the latest rules (it is kept with the assessment)"
                )
            why = inputs.text(reason, "--reason", 500)
        elif reason is not None:
            raise BadInput("--reason goes with --reassess-under-latest")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.eligibility(settings, token) as stub:
            await _assess(stub, settings.eligibility_address, sid, on, language, why)

    run(go())


@app.command()
def assessment(
    survivor_id: Annotated[str, typer.Argument(help="The survivor's opaque id.")],
    assessment_id: Annotated[
        str | None,
        typer.Option("--id", help="One of the survivor's assessments (default: the latest)."),
    ] = None,
    lang: Lang = "en",
) -> None:
    """Show a survivor's stored assessment, the latest or the one named: per-programme
    outcome and why. Nothing is assessed and nothing is stored."""

    async def go() -> None:
        language = inputs.language(lang)
        sid = inputs.identifier(survivor_id, "survivor id")
        wanted = inputs.identifier(assessment_id, "--id") if assessment_id is not None else ""
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        address = settings.eligibility_address
        async with context.eligibility(settings, token) as stub:
            with calling("eligibility", address):
                shown, count = await _stored_assessment(stub, sid, wanted)
            render.line(render.assessments_on_record(sid, count, shown, language))
            await _show_assessment(stub, address, shown, language)

    run(go())


async def _stored_assessment(
    stub: Any, survivor_id: str, wanted: str
) -> tuple[eligibility_pb.Assessment, int]:
    """The survivor's assessment named `wanted`, or their latest (by assessment date,
    then the time it was made), with how many they have."""

    def fetch(token: str) -> Awaitable[eligibility_pb.ListAssessmentsResponse]:
        request = eligibility_pb.ListAssessmentsRequest(
            survivor_id=survivor_id, page_size=200, page_token=token
        )
        return stub.ListAssessments(request, timeout=TIMEOUT)  # type: ignore[no-any-return]

    on_record = [a async for page in pages(fetch) for a in page.assessments]
    if not on_record:
        try:  # one never registered is told so, not sent to assess them
            await stub.GetSurvivor(
                eligibility_pb.GetSurvivorRequest(survivor_id=survivor_id), timeout=TIMEOUT
            )
        except grpc.aio.AioRpcError as error:  # not allowed to read it: as before
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise CliError(
                    f"survivor {survivor_id} is not registered: `mineaction register` them first"
                ) from None
        raise CliError(
            f"survivor {survivor_id} has no assessment on record: "
            f"`mineaction assess {survivor_id}` makes one"
        )
    if not wanted:
        latest = max(
            on_record,
            key=lambda a: (
                (a.assessment_date.year, a.assessment_date.month, a.assessment_date.day),
                a.create_time.ToNanoseconds(),
            ),
        )
        return latest, len(on_record)
    for candidate in on_record:
        if candidate.assessment_id == wanted:
            return candidate, len(on_record)
    raise CliError(f"survivor {survivor_id} has no assessment {wanted}")


# --- rules ----------------------------------------------------------------------------

RuleSetId = Annotated[str, typer.Argument(help="The rule set.")]


def _rule_set_source(path: Path) -> str:
    """A rule-set file's text; YAML is checked by the service, which says where it is
    wrong."""
    source = inputs.existing_file(path, "rule-set file")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"rule-set file {str(path)!r} is not UTF-8 text") from None
    if not text.strip():
        raise BadInput(f"rule-set file {str(path)!r} is empty")
    return text


async def _rules_call(rpc: str, request: Message, path: Path) -> Any:
    """An eligibility call that sends a rule set: when the service refuses its source,
    each problem (the rule and the line and column) is printed on its own line, like a
    compiler's, before the one error line."""
    checked(request)
    async with _service("eligibility") as (stub, calls):
        with calls:
            try:
                return await getattr(stub, rpc)(request, timeout=TIMEOUT)
            except grpc.aio.AioRpcError as error:
                problems = [v.description for v in violations_in(error) if v.field == "source_yaml"]
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not problems:
                    raise
                for problem in problems:
                    render.line(f"{path}: {problem}")
                raise CliError(
                    f"the eligibility service refused {path}: {len(problems)} problem(s), "
                    "listed above; nothing was published"
                ) from None


@rules_app.command("versions")
def rules_versions(rule_set_id: RuleSetId = DEFAULT_RULE_SET, lang: Lang = "en") -> None:
    """Every published version of a rule set: when, by whom and why. Reads only."""

    async def go() -> None:
        language = inputs.language(lang)
        rid = inputs.identifier(rule_set_id, "rule set id")
        async with _service("eligibility") as (stub, calls):

            def fetch(token: str) -> Awaitable[eligibility_pb.ListRuleSetsResponse]:
                request = eligibility_pb.ListRuleSetsRequest(
                    rule_set_id=rid, page_size=100, page_token=token
                )
                return stub.ListRuleSets(request, timeout=TIMEOUT)  # type: ignore[no-any-return]

            with calls:
                versions = [v async for page in pages(fetch) for v in page.rule_sets]
        if not versions:
            raise CliError(f"not found: no version of rule set {rid!r} is published")
        render.console().print(render.rule_set_versions_table(rid, versions, language))

    run(go())


@rules_app.command("show")
def rules_show(
    rule_set_id: RuleSetId = DEFAULT_RULE_SET,
    version: Annotated[int, typer.Option(help="The version; 0 (default) is the latest.")] = 0,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File to write; '-' for stdout.")
    ] = Path("-"),
) -> None:
    """A version's YAML exactly as published: the file to edit for a change."""

    async def go() -> None:
        rid = inputs.identifier(rule_set_id, "rule set id")
        number = inputs.count(version, "--version", 0, 1_000_000)
        _check_output(output)
        async with _service("eligibility") as (stub, calls):
            with calls:
                found = await stub.GetRuleSet(
                    eligibility_pb.GetRuleSetRequest(rule_set_id=rid, version=number),
                    timeout=TIMEOUT,
                )
        with _output(output) as out:
            out.write(found.rule_set.source_yaml)
        if str(output) != "-":
            print(
                f"wrote {rid} v{found.rule_set.version} to {output}: edit it, then "
                f"`mineaction rules what-if {output}`",
                file=sys.stderr,
            )

    run(go())


@rules_app.command("what-if")
def rules_what_if(
    rule_set_file: Annotated[Path, typer.Argument(help="The changed rule set, YAML.")],
    examples: Annotated[int, typer.Option(help="Example assessments per programme.")] = 5,
    lang: Lang = "en",
) -> None:
    """What a changed rule set would decide differently: every stored assessment decided
    again under it, the changes counted per programme with examples. Publishes nothing."""

    async def go() -> None:
        language = inputs.language(lang)
        wanted = inputs.count(examples, "--examples", 0, 100)
        request = eligibility_pb.SimulateRuleSetRequest(
            source_yaml=_rule_set_source(rule_set_file),
            max_examples=wanted or 1,  # 0 asks the service for its default, five
        )
        report = await _rules_call("SimulateRuleSet", request, rule_set_file)
        if not wanted:  # the counts alone, as asked
            for change in report.changes:
                del change.examples[:]
        render.console().print(render.what_if_table(report, language))

    run(go())


@rules_app.command("publish")
def rules_publish(
    rule_set_file: Annotated[Path, typer.Argument(help="The rule set to publish, YAML.")],
    note: Annotated[str, typer.Option(help="Why it is published (kept with the version).")],
    by: Annotated[
        str, typer.Option(help="Who publishes it (default: the token's own identity).")
    ] = "",
    request_id: RequestId = None,
) -> None:
    """Publish a rule set as its next version, once its own test cases pass. Published
    versions never change; survivors stay on the version of their first assessment."""

    async def go() -> None:
        request = eligibility_pb.PublishRuleSetRequest(
            request_id=request_id or inputs.request_id(),
            source_yaml=_rule_set_source(rule_set_file),
            published_by=_staff(by, "--by"),
            change_note=inputs.text(note, "--note", 500),
        )
        published = await _rules_call("PublishRuleSet", request, rule_set_file)
        r = published.rule_set
        render.line(
            f"published {r.rule_set_id} v{r.version} by {r.published_by} ({r.change_note}); "
            f"{len(published.test_results)} test case(s) passed"
        )

    run(go())


# --- journeys -------------------------------------------------------------------------


def _assistance_plans(specs: list[str], data_specs: list[str]) -> list[AssistancePlan]:
    """TYPE[:PROVIDER[:POOL]], e.g. wheelchair:baku-mobility-aids:stock-wheelchairs-baku,
    and each item's request data as TYPE:KEY=VALUE (wheelchair:seat_width_cm=44)."""
    data: dict[str, list[str]] = {}
    for spec in data_specs:
        type_part, sep, pair = spec.partition(":")
        if not sep:
            raise BadInput(f"--data {spec!r}: use TYPE:KEY=VALUE, e.g. wheelchair:seat_width_cm=44")
        data.setdefault(inputs.code(type_part, "--data assistance type"), []).append(pair)
    plans: list[AssistancePlan] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) > 3:
            raise BadInput(f"--assistance {spec!r}: use TYPE[:PROVIDER[:POOL]]")
        type_id = inputs.code(parts[0], "assistance type")
        if any(p.type_id == type_id for p in plans):
            raise BadInput(f"--assistance {type_id} is given twice: one item per type")
        provider = inputs.identifier(parts[1], "provider id") if len(parts) > 1 and parts[1] else ""
        pool = (
            inputs.identifier(parts[2], "capacity pool id") if len(parts) > 2 and parts[2] else ""
        )
        item_data = inputs.data_pairs(data.pop(type_id, []), f"--data {type_id}")
        plans.append(AssistancePlan(type_id, provider, pool, data=item_data))
    if data:
        raise BadInput(f"--data for {', '.join(sorted(data))}, which has no --assistance")
    return plans


@journey_app.command("start")
def journey_start(
    survivor_id: Annotated[str, typer.Argument(help="A registered survivor's id.")],
    case_worker: Annotated[
        str, typer.Option(help="The case worker (default: the token's own identity).")
    ] = "",
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
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="An assistance item's request data, TYPE:KEY=VALUE (e.g. "
            "wheelchair:seat_width_cm=44); repeat for several.",
        ),
    ] = None,
    programme_year: Annotated[int, typer.Option(help="Programme year, 1-3.")] = 1,
    follow_loan: Annotated[
        str | None,
        typer.Option(
            "--follow-loan",
            help="Follow this ACTIVE loan of the survivor's to its closure instead of "
            "applying for one (a loan made outside a journey, or reopened after the "
            "survivor's journey ended).",
        ),
    ] = None,
) -> None:
    """Start a survivor's journey (a SurvivorJourneyWorkflow keyed by the survivor id);
    a later one once the survivor's previous journey has ended."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        inputs.count(programme_year, "--programme-year", 1, 3)
        followed = inputs.identifier(follow_loan, "loan id") if follow_loan is not None else ""
        if followed and (product or amount or assistance):
            raise BadInput(
                "--follow-loan takes no --product, --amount or --assistance: the journey "
                "follows that loan's repayment"
            )
        loan = None
        if (product is None) != (amount is None):
            raise BadInput("a loan needs both --product and --amount")
        if product is not None and amount is not None:
            loan = LoanRequest(
                inputs.code(product, "product"),
                inputs.amount_minor(amount, "--amount"),
                inputs.text(purpose, "--purpose", 500) if purpose else "start-up loan",
            )
        plans = _assistance_plans(assistance or [], data or [])
        if not loan and not plans and not followed:
            raise BadInput(
                "a journey needs a loan (--product, --amount), --assistance, or --follow-loan"
            )
        # The journey applies and requests in the case worker's name: the caller must be
        # allowed those calls, and staff start journeys as themselves (a committee member
        # naming a case worker could otherwise approve the loan they submitted).
        worker = _staff(case_worker, "--case-worker")
        for method in (["SubmitLoanApplication"] if loan else []) + (
            ["RecordNeed", "RequestAssistance"] if plans else []
        ):
            service = _LENDING if method == "SubmitLoanApplication" else _ASSISTANCE
            _acting(service + method, worker)
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        # Only a registered survivor, whose consent stands, gets a journey.
        survivor = await _consenting_survivor(sid, "no journey is started")
        resume = None
        if followed:
            resume = following_loan(
                await _loan_to_follow(sid, followed),
                survivor_profile_of(survivor),
                programme_today(),
            )
        if loan is not None:  # a loan lending would refuse is refused here
            async with context.lending(settings, token) as lend:
                with calling("lending", settings.lending_address):
                    products = await _loan_products(lend)
            _check_loan(loan, products)
        if plans:  # a plan the assistance service would refuse is refused here
            async with context.assistance(settings, token) as assist:
                with calling("assistance", settings.assistance_address):
                    known = await catalogue.load(assist, TIMEOUT)
                for plan in plans:
                    known.check_plan(
                        plan.type_id, plan.data, plan.provider_id, plan.capacity_pool_id
                    )
        client = await context.temporal_client(settings)
        earlier = await _journeys_of(client, sid, settings.effective_temporal_address)
        if earlier and earlier[-1].state == "RUNNING":
            raise CliError(f"the journey {earlier[-1].workflow_id} is already running")
        if plans:  # no second item beside one still under way
            async with context.assistance(settings, token) as assist:
                await _no_item_under_way(assist, known, sid, {p.type_id for p in plans})
        if earlier or loan is not None or followed:  # no second loan beside an open one
            await _no_open_loan(sid, earlier[-1] if earlier else None, followed)
        if resume is not None:  # follow-ups an earlier journey recorded for it are done
            recorded = await _follow_ups_recorded(client, earlier, followed)
            resume = dataclasses.replace(resume, follow_ups_recorded=recorded)
        number = earlier[-1].number + 1 if earlier else 1
        workflow_id = journey_workflow_id(sid, number)
        with temporal(settings.effective_temporal_address, f"the journey {workflow_id}"):
            try:
                await client.start_workflow(
                    SurvivorJourneyWorkflow.run,
                    JourneyInput(
                        survivor_id=sid,
                        case_worker_id=worker,
                        loan=loan,
                        assistance=plans,
                        programme_year=programme_year,
                        resume=resume,
                    ),
                    id=workflow_id,
                    task_queue=settings.journey_task_queue,
                    search_attributes=initial_search_attributes(programme_year, resume),
                    # Each journey has its own id, never reused: its steps' request ids
                    # are made from it, so a second run under it would get the first
                    # run's answers back. Two starts at once race for the same id, and
                    # the second is refused.
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    rpc_timeout=RPC_TIMEOUT,
                )
            except WorkflowAlreadyStartedError:
                raise await _started_meanwhile(client.get_workflow_handle(workflow_id)) from None
        render.line(
            f"started journey {workflow_id} on task queue {settings.journey_task_queue}"
            + (f", following loan {followed}" if followed else "")
        )
        if earlier:
            before = "; ".join(f"{j.workflow_id} {j.ended()}" for j in earlier)
            render.line(f"this is survivor {sid}'s {_ordinal(number)} journey (before: {before})")

    run(go())


async def _loan_products(stub: Any) -> dict[str, lending_pb.LoanProduct]:
    def fetch(token: str) -> Awaitable[lending_pb.ListLoanProductsResponse]:
        request = lending_pb.ListLoanProductsRequest(page_size=500, page_token=token)
        return stub.ListLoanProducts(request, timeout=TIMEOUT)  # type: ignore[no-any-return]

    return {p.product_id: p async for page in pages(fetch) for p in page.loan_products}


def _check_loan(loan: LoanRequest, products: dict[str, lending_pb.LoanProduct]) -> None:
    """What lending would refuse when the journey applies, refused before it starts."""
    product = products.get(loan.product_id)
    if product is None:
        raise BadInput(
            f"unknown loan product {loan.product_id!r}; the products are "
            + ", ".join(sorted(products))
        )
    if not product.min_amount_minor <= loan.amount_minor <= product.max_amount_minor:
        raise BadInput(
            f"--amount for {loan.product_id} must be from {manat(product.min_amount_minor)}"
            f" to {manat(product.max_amount_minor)} AZN"
        )


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
        client, latest, earlier = await _latest_journey(sid)
        workflow_id = latest.workflow_id
        handle = client.get_workflow_handle_for(SurvivorJourneyWorkflow.run, workflow_id)
        with temporal(settings.effective_temporal_address, f"the journey {workflow_id}"):
            described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
            status: JourneyStatus = await handle.query(
                SurvivorJourneyWorkflow.status, rpc_timeout=RPC_TIMEOUT
            )
        state = described.status.name if described.status else "UNKNOWN"
        status = await _with_ledger_figures(status, language)
        status, known = await _with_live_assistance(status, language)
        rule_set = await _deciding_rule_set(status, language)
        render.console().print(
            render.journey_table(
                status,
                workflow_id,
                state,
                language,
                known,
                earlier=[(j.workflow_id, j.state, j.stage) for j in earlier],
                rule_set=rule_set,
            )
        )
        if state == "FAILED":  # why, decrypted: the Web UI shows it only through the codec
            render.line(f"why it failed: {await _failure_of(handle)}")

    run(go())


async def _failure_of(handle: WorkflowHandle[Any, Any]) -> str:
    """A failed journey's failure, as its type and message."""
    try:
        await handle.result(follow_runs=False, rpc_timeout=RPC_TIMEOUT)
    except WorkflowFailureError as error:
        cause = error.cause
        message = cause.message if isinstance(cause, FailureError) else str(cause)
        kind = getattr(cause, "type", "") or ""
        return f"{kind}: {message}" if kind else message
    except RPCError as error:
        return f"not read ({error.message})"
    return "not read"


async def _deciding_rule_set(status: JourneyStatus, language: str) -> eligibility_pb.RuleSet | None:
    """The rule-set version of the journey's assessment, whose names show the eligible
    programmes in the user's language; None, said so, when it cannot be read."""
    if not status.assessment_id or not status.eligible_programmes:
        return None

    async def read() -> eligibility_pb.RuleSet:
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.eligibility(settings, token) as stub:
            with calling("eligibility", settings.eligibility_address):
                request = eligibility_pb.GetAssessmentRequest(assessment_id=status.assessment_id)
                assessment = (await stub.GetAssessment(request, timeout=TIMEOUT)).assessment
                return (await _rule_sets(stub, assessment))[1]

    return await _read_or_say("rule_set_unread", language, read())


async def _journeys_of(client: Client, survivor_id: str, address: str) -> list[JourneyRecord]:
    with temporal(address, f"the journeys of {survivor_id}"):
        return await journeys_of(client, survivor_id, RPC_TIMEOUT)


async def _latest_journey(survivor_id: str) -> tuple[Client, JourneyRecord, list[JourneyRecord]]:
    """The survivor's current journey (the latest) and the earlier ones; the first
    journey's id "was not found" when the survivor has none."""
    settings = context.settings()
    client = await context.temporal_client(settings)
    journeys = await _journeys_of(client, survivor_id, settings.effective_temporal_address)
    if not journeys:
        raise CliError(f"the journey {journey_workflow_id(survivor_id)} was not found")
    return client, journeys[-1], journeys[:-1]


async def _latest_status(
    survivor_id: str, *, running: bool = False
) -> tuple[WorkflowHandle[Any, Any], JourneyStatus]:
    """The survivor's current journey and its status query's answer; with `running`, a
    journey that has ended is refused, as its updates and signals would be."""
    client, latest, _ = await _latest_journey(survivor_id)
    if running and latest.state != "RUNNING":
        raise _has_ended(f"the journey {latest.workflow_id}", latest.state.lower(), latest.stage)
    handle = client.get_workflow_handle(latest.workflow_id)
    address = context.settings().effective_temporal_address
    with temporal(address, f"the journey {latest.workflow_id}"):
        status: JourneyStatus = await handle.query(
            SurvivorJourneyWorkflow.status, rpc_timeout=RPC_TIMEOUT
        )
    return handle, status


async def _no_open_loan(
    survivor_id: str, previous: JourneyRecord | None, followed: str = ""
) -> None:
    """A journey is refused while a loan of the survivor is still open in the ledger: a
    later journey's `previous` one may have been terminated while its loan was being
    repaid (the new journey would apply for another while nobody follows that one), and a
    first journey's loan would stand beside one made outside any journey. The eligibility
    rule on active loans reads what the intake declares; this reads the ledger. The loan a
    journey is started to follow (`followed`) is the one open loan allowed."""
    answer = await call_lending(
        "ListLoans",
        lending_pb.ListLoansRequest(survivor_id=survivor_id, page_size=500),
        lending_pb.ListLoansResponse,
    )
    still_open = [
        loan
        for loan in answer.loans
        if loan_status(loan) in ("SUBMITTED", "APPROVED", "ACTIVE") and loan.loan_id != followed
    ]
    if still_open:
        loans = ", ".join(f"{loan.loan_id} ({loan_status(loan)})" for loan in still_open)
        before = (
            f"survivor {survivor_id}'s last journey {previous.workflow_id} has ended "
            f"{previous.ended()}, but loan {loans} is still open"
            if previous is not None
            else f"survivor {survivor_id} already has loan {loans} open in the ledger"
        )
        raise CliError(
            f"{before}: a new journey is started once it is closed (repaid, written off, "
            "rejected or withdrawn), or to follow an ACTIVE one (--follow-loan); see "
            "docs/cli.md"
        )


async def _no_item_under_way(
    assist: Any, known: catalogue.Catalogue, survivor_id: str, types: set[str]
) -> None:
    """A journey is refused an assistance type the survivor already has an item of under
    way: one an earlier journey left running when it ended (terminated, failed), or one
    requested outside any journey. The new journey would record a second need and reserve
    a second place or unit for the same survivor."""

    def fetch(token: str) -> Awaitable[assistance_pb.ListAssistanceResponse]:
        request = assistance_pb.ListAssistanceRequest(
            survivor_id=survivor_id, page_size=500, page_token=token
        )
        return assist.ListAssistance(request, timeout=TIMEOUT)  # type: ignore[no-any-return]

    with calling("assistance", context.settings().assistance_address):
        under_way = [
            item
            async for page in pages(fetch)
            for item in page.assistance
            if item.type_id in types and not known.is_terminal(item.type_id, item.state)
        ]
    if under_way:
        items = ", ".join(f"{i.type_id} {i.assistance_id} ({i.state})" for i in under_way)
        raise CliError(
            f"survivor {survivor_id} already has {items} under way: a new journey requests "
            "it once that item has ended; take its steps, or cancel it, with `mineaction "
            f"journey assist {survivor_id} TYPE ACTION` (an earlier journey's item), or "
            "AdvanceAssistance with action cancel (one requested outside any journey; "
            "docs/assistance.md)"
        )


async def _follow_ups_recorded(
    client: Client, earlier: Sequence[JourneyRecord], loan_id: str
) -> list[int]:
    """The follow-ups (+6, +12 months) the survivor's completed journeys recorded for this
    loan: a journey following it again asks only for the others (eligibility keeps one
    of each per loan, and refuses a second)."""
    recorded: set[int] = set()
    for journey in earlier:
        if journey.state != "COMPLETED":
            continue
        handle = client.get_workflow_handle(journey.workflow_id, result_type=JourneyStatus)
        with temporal(context.settings().effective_temporal_address, journey.workflow_id):
            ended = await handle.result(rpc_timeout=RPC_TIMEOUT)
        if ended.loan_id == loan_id:
            recorded.update(ended.follow_ups_recorded)
    return sorted(recorded)


async def _loan_to_follow(survivor_id: str, loan_id: str) -> lending_pb.GetLoanResponse:
    """The survivor's own loan, being repaid, with its schedule today: what `journey start
    --follow-loan` follows."""
    request = snapshot_request(loan_id, programme_today().isoformat())
    answer = await call_lending("GetLoan", request, lending_pb.GetLoanResponse)
    loan = answer.loan
    if loan.survivor_id != survivor_id:
        raise CliError(f"loan {loan_id} is not survivor {survivor_id}'s")
    if loan.state != lending_pb.LOAN_STATE_ACTIVE:
        raise CliError(
            f"loan {loan_id} is {loan_status(loan)}: a journey follows a loan being repaid "
            "(ACTIVE); one not yet disbursed is followed by the journey that applied for it"
        )
    return answer


async def _started_meanwhile(handle: WorkflowHandle[Any, Any]) -> CliError:
    """Another start took this journey's id a moment before this one."""
    described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    state = described.status.name if described.status else "UNKNOWN"
    if state == "RUNNING":
        return CliError(f"the journey {handle.id} is already running")
    return CliError(
        f"the journey {handle.id} was started meanwhile and has ended ({state}): "
        "see mineaction journey status, then start again"
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


async def _read_or_say(note: str, language: str, read: Awaitable[T]) -> T | None:
    """A live read for `journey status`. When the service or the token cannot be used, a
    first line says, in the user's language, that the journey's own figures are shown
    (`note`: the label that says which), and why; None then."""
    try:
        return await read
    except (CliError, BadInput) as error:
        render.line(f"{render.label(note, language)}: {error}")
        return None


async def _with_ledger_figures(status: JourneyStatus, language: str) -> JourneyStatus:
    """The loan's state, outstanding principal, days past due and next instalment as the
    ledger says them now: the journey reads them at its own steps (monthly), so a
    repayment made since at the cashier's desk shows here at once. The journey's own
    figures, said so, when the lending service cannot answer."""
    if not status.loan_id:
        return status
    today = programme_today()
    answer = await _read_or_say(
        "journey_figures",
        language,
        call_lending(
            "GetLoan",
            snapshot_request(status.loan_id, today.isoformat()),
            lending_pb.GetLoanResponse,
        ),
    )
    if answer is None:
        return status
    snap = loan_snapshot_of(answer, today)
    # On an instalment's own due day the journey already looks to the next one; whoever
    # reads this (a case worker on the phone) needs the one due today.
    due_today = next(
        (
            i
            for i in answer.schedule.instalments
            if from_proto_date(i.due_date) == today
            and i.principal_due_minor > i.principal_paid_minor
        ),
        None,
    )
    if due_today is not None:
        snap = dataclasses.replace(
            snap,
            next_due_date=today.isoformat(),
            next_due_minor=due_today.principal_due_minor - due_today.principal_paid_minor,
        )
    # A write-off proposed straight with lending, when the journey holds none.
    proposal = (
        answer.write_off_proposal
        if answer.HasField("write_off_proposal") and not status.write_off_proposed_by
        else None
    )
    return dataclasses.replace(
        status,
        loan_status=snap.status,
        outstanding_minor=snap.outstanding_minor,
        days_past_due=snap.days_past_due,
        overdue_minor=snap.overdue_minor,
        next_due_date=snap.next_due_date,
        next_due_minor=snap.next_due_minor,
        closed_on=snap.closed_on,
        write_off_proposed_by=proposal.proposed_by if proposal else status.write_off_proposed_by,
        write_off_reason=proposal.reason if proposal else status.write_off_reason,
    )


async def _with_live_assistance(
    status: JourneyStatus, language: str
) -> tuple[JourneyStatus, catalogue.Catalogue | None]:
    """Each assistance item's state and waitlist place as the assistance service says them
    now: the journey hears of an item only at its own steps, so a survivor promoted off a
    waitlist (a place freed, capacity added) shows here at once. With the catalogue, whose
    names show each item in the user's language. The journey's own view, said so, when the
    assistance service cannot answer."""
    if not status.assistance:
        return status, None

    async def read() -> tuple[catalogue.Catalogue, list[AssistanceState]]:
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.assistance(settings, token) as stub:
            with calling("assistance", settings.assistance_address):
                known = await catalogue.load(stub, TIMEOUT)
                items = []
                for item in status.assistance:
                    if item.assistance_id:  # requested: the service has its record
                        request = checked(
                            assistance_pb.GetAssistanceRequest(assistance_id=item.assistance_id)
                        )
                        now = (await stub.GetAssistance(request, timeout=TIMEOUT)).assistance
                        item = assistance_state_of(
                            item.type_id,
                            item.need_id,
                            now,
                            known.is_terminal(now.type_id, now.state),
                        )
                    items.append(item)
        return known, items

    answer = await _read_or_say("journey_assistance", language, read())
    if answer is None:
        return status, None
    known, items = answer
    return dataclasses.replace(status, assistance=items), known


@journey_app.command("decide")
def journey_decide(
    survivor_id: Annotated[str, typer.Argument(help="The survivor whose loan was decided.")],
    ref: Annotated[str, typer.Option(help="The committee minute, e.g. CM-2026-014.")],
    member: Annotated[
        str, typer.Option(help="Committee member's staff id (default: the token's own).")
    ] = "",
    approve: Annotated[bool, typer.Option("--approve", help="The committee approved.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="The committee rejected.")] = False,
    reason: Annotated[str, typer.Option(help="Why (required for a rejection).")] = "",
) -> None:
    """Record the credit committee's decision on the journey's loan (a workflow update)."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        if approve == reject:  # neither, or both: a decision is never guessed
            raise BadInput("say either --approve or --reject")
        member_id = _staff(member, "--member")
        decision_ref = inputs.text(ref, "--ref", 128)
        if len(reason) > 1000:
            raise BadInput("--reason is at most 1000 characters")
        if not approve and not reason.strip():
            raise BadInput("a rejection needs --reason")
        _acting(_LENDING + ("ApproveLoan" if approve else "RejectLoan"), member_id)
        status = await _update_journey(
            sid,
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve, member_id, decision_ref, reason.strip()),
        )
        verb, then = (
            ("approved", "the journey goes on from here")
            if approve
            else ("rejected", "the journey closes as rejected once any assistance it follows ends")
        )
        render.line(
            f"loan {status.loan_id} {verb} by {member_id} ({decision_ref}); "
            f"loan status {status.loan_status}; {then} (mineaction journey status {sid})"
        )

    run(go())


_LENDING = "/mineaction.lending.v1.LendingService/"
_ELIGIBILITY = "/mineaction.eligibility.v1.EligibilityService/"
_ASSISTANCE = "/mineaction.assistance.v1.AssistanceService/"


def _staff(named: str, option: str) -> str:
    """The staff member an option names, or the token's own identity when it names none."""
    return inputs.staff(named or _caller().subject, option)


def _caller() -> Principal:
    """Who the token says the caller is, checked as the services check it."""
    settings = context.settings()
    token = context.token(_OPTIONS, settings)
    try:
        return TokenVerifier.from_settings(settings).verify(token)
    except Unauthenticated as error:
        raise CliError(f"the token is not accepted: {error.message}") from None
    except AuthConfigError as error:
        raise CliError(f"the token cannot be checked: {error}") from None


def _acting(method: str, *named: str) -> None:
    """The caller may cause `method`: a journey's update reaches Temporal, not the
    service, and the journey relays it under the worker's own identity, so the CLI checks
    the token first as the service would: valid, a role the access policy allows for
    `method`, and, for staff, their own identity among the people `named` (a service
    token may name others). Access to Temporal itself is the deployment's to restrict
    (docs/security.md)."""
    principal = _caller()
    rule = AccessPolicy.load().rule(method)
    allowed = rule.roles if rule is not None else frozenset()
    if not principal.roles & allowed:
        raise CliError(
            f"{method.rsplit('/', 1)[-1]} needs one of the roles {', '.join(sorted(allowed))}; "
            f"the token ({principal.subject}) has {', '.join(sorted(principal.roles)) or 'none'}"
        )
    if named and not principal.relays and not any(same_person(n, principal.subject) for n in named):
        raise CliError(
            f"you ({principal.subject}) cannot act as {' or '.join(named)}: staff act as themselves"
        )


async def _update_journey(survivor_id: str, update: Any, arg: Any) -> JourneyStatus:
    """Send one of the journey's updates; its validator's refusal, or the service's
    refusal of the step, comes back as one line (exit 1) and nothing is recorded."""
    settings = context.settings()
    client, latest, _ = await _latest_journey(survivor_id)
    workflow_id = latest.workflow_id
    handle = client.get_workflow_handle(workflow_id)
    status: JourneyStatus = await _send_update(
        handle, update, arg, settings.effective_temporal_address, f"the journey {workflow_id}"
    )
    return status


async def _send_update(
    handle: WorkflowHandle[Any, Any],
    update: Any,
    arg: Any,
    address: str,
    what: str,
    refuser: str = "the journey",
) -> Any:
    """An update, with a workflow that has ended told apart from one that never was."""
    with temporal(address, what, refuser):
        try:
            return await handle.execute_update(update, arg, rpc_timeout=RPC_TIMEOUT)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            described = await handle.describe(rpc_timeout=RPC_TIMEOUT)  # NOT_FOUND: never was
        state = described.status.name.lower() if described.status else "closed"
        raise _has_ended(what, state, described.typed_search_attributes.get(sa.STAGE))


def _has_ended(what: str, state: str, stage: str | None) -> CliError:
    return CliError(
        f"{what} has ended ({state}{', stage ' + stage if stage else ''}): "
        "it takes no more decisions"
    )


def _loan_line(status: JourneyStatus) -> str:
    """The update's answer is the journey before it re-reads the ledger: the loan's state
    is new, its schedule not yet, so no instalment is shown here."""
    then = (
        "nothing more falls due"
        if status.loan_status in CLOSED_LOAN_STATES
        else "the journey re-reads the schedule from the ledger now"
    )
    return (
        f"loan {status.loan_id} {status.loan_status}; {then} "
        f"(mineaction journey status {status.survivor_id})"
    )


@journey_app.command("hardship")
def journey_hardship(
    survivor_id: Annotated[str, typer.Argument(help="The survivor whose loan it is.")],
    reason: Annotated[str, typer.Option(help="Why, e.g. hospitalised.")],
    requested_by: Annotated[
        str, typer.Option(help="Staff id who asks for it (default: the token's own).")
    ] = "",
    pause_days: Annotated[
        int | None, typer.Option(help="Pause delinquency for this many days (1-365).")
    ] = None,
    new_term_months: Annotated[
        int | None, typer.Option(help="Reschedule: the new remaining term (1-120 months).")
    ] = None,
    grace_months: Annotated[
        int, typer.Option(help="Reschedule: extra grace months before it (0-24).")
    ] = 0,
) -> None:
    """Hardship on a loan being repaid: a pause of delinquency (--pause-days) or a
    reschedule (--new-term-months, --grace-months); the journey's request_hardship."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        why = inputs.text(reason, "--reason", 1000)
        who = _staff(requested_by, "--requested-by")
        if (pause_days is None) == (new_term_months is None):
            raise BadInput(
                "say either --pause-days N (a pause) or --new-term-months N (a reschedule)"
            )
        if pause_days is not None:
            if grace_months:
                raise BadInput("--grace-months goes with a reschedule, not a pause")
            inputs.count(pause_days, "--pause-days", 1, 365)
            hardship = Hardship("pause", why, who, pause_days=pause_days)
        else:
            assert new_term_months is not None
            inputs.count(new_term_months, "--new-term-months", 1, 120)
            inputs.count(grace_months, "--grace-months", 0, 24)
            if grace_months >= new_term_months:  # the term counts the grace months too
                raise BadInput(
                    f"--grace-months ({grace_months}) must be fewer than --new-term-months "
                    f"({new_term_months}): the new term includes its grace"
                )
            hardship = Hardship(
                "reschedule",
                why,
                who,
                new_term_months=new_term_months,
                additional_grace_months=grace_months,
            )
        _acting(
            _LENDING + ("PauseDelinquency" if pause_days is not None else "RescheduleLoan"), who
        )
        status = await _update_journey(sid, SurvivorJourneyWorkflow.request_hardship, hardship)
        done = (
            f"delinquency paused for {pause_days} day{'' if pause_days == 1 else 's'}, "
            "today included"
            if pause_days is not None
            # The new schedule starts today, its grace counted from now; the journey
            # lengthens both where the old schedule's next instalment was later.
            else f"rescheduled from today over at least {new_term_months} months"
            + (f", at least the first {grace_months} without instalments" if grace_months else "")
        )
        render.line(f"{done} (asked by {who}); {_loan_line(status)}")

    run(go())


@journey_app.command("write-off")
def journey_write_off(
    survivor_id: Annotated[str, typer.Argument(help="The survivor whose loan it is.")],
    reason: Annotated[
        str | None, typer.Option(help="Propose it: why the loan cannot be recovered.")
    ] = None,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="Confirm the write-off someone else proposed.")
    ] = False,
    withdraw: Annotated[
        bool, typer.Option("--withdraw", help="Withdraw the proposal held (with --reason).")
    ] = False,
    withdrawn_by: Annotated[
        str, typer.Option(help="Who withdraws it (default: the token's own identity).")
    ] = "",
    proposed_by: Annotated[
        str, typer.Option(help="Who proposes it (default: the token's own identity).")
    ] = "",
    confirmed_by: Annotated[
        str, typer.Option(help="Who confirms it (default: the token's own identity).")
    ] = "",
    proposal_by: Annotated[
        str,
        typer.Option(
            help="Confirm only the proposal this person made, as `journey status` showed it "
            "(refused if another is open now)."
        ),
    ] = "",
    proposal_reason: Annotated[
        str,
        typer.Option(
            help="With --proposal-by: and only if its reason is this, as `journey status` "
            "showed it (the same person may have proposed again, for another reason)."
        ),
    ] = "",
) -> None:
    """Write off the journey's loan, four eyes: one person proposes it (`--reason`: a loan
    officer or programme manager), a different person confirms it (`--confirm`: a
    programme manager), each with their own token; then it is posted to the ledger. A
    proposal made by mistake is withdrawn with `--withdraw --reason`."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        if confirm and (withdraw or reason is not None):
            raise BadInput("--confirm takes no --reason or --withdraw: it confirms the proposal")
        if not confirm and reason is None:
            raise BadInput(
                "say --reason to propose a write-off (or, with --withdraw, to withdraw the "
                "one proposed), or --confirm to confirm it"
            )
        # Each step names only its own person: a name for another step is a mistake (the
        # one-command form of before would otherwise propose and seem to write off).
        for given, option, step in (
            (proposed_by, "--proposed-by", not confirm and not withdraw),
            (confirmed_by, "--confirmed-by", confirm),
            (withdrawn_by, "--withdrawn-by", withdraw),
            (proposal_by, "--proposal-by", confirm),
            (proposal_reason, "--proposal-reason", confirm),
        ):
            if given and not step:
                raise BadInput(
                    f"{option} does not go with this step: propose (--reason), confirm "
                    "(--confirm) and withdraw (--withdraw --reason) are separate commands"
                )
        principal = _caller()
        if withdraw:
            why = inputs.text(reason or "", "--reason", 1000)
            by = inputs.staff(withdrawn_by or principal.subject, "--withdrawn-by")
            _acting(_LENDING + "WithdrawLoanWriteOff", by)
            latest, held = await _latest_status(sid, running=True)
            if held.write_off_proposed_by:
                await _update_journey(
                    sid,
                    SurvivorJourneyWorkflow.withdraw_write_off_proposal,
                    WriteOffWithdrawal(why, by),
                )
            else:  # proposed straight with lending, not read by the journey yet
                seen = await _lendings_proposal(latest.id, held)
                await call_lending(
                    "WithdrawLoanWriteOff",
                    lending_pb.WithdrawLoanWriteOffRequest(
                        request_id=inputs.request_id(),
                        loan_id=held.loan_id,
                        reason=why,
                        withdrawn_by=by,
                        proposed_by=seen.proposed_by,
                        proposal_reason=seen.reason,
                    ),
                    lending_pb.WithdrawLoanWriteOffResponse,
                )
                await _tell_journey(sid, held.loan_id, "the withdrawal")
            render.line(f"write-off proposal withdrawn by {by} ({why}); the loan stays ACTIVE")
            return
        if reason is not None:
            why = inputs.text(reason, "--reason", 1000)
            proposer = inputs.staff(proposed_by or principal.subject, "--proposed-by")
            _acting(_LENDING + "ProposeLoanWriteOff", proposer)
            await _update_journey(
                sid, SurvivorJourneyWorkflow.propose_write_off, WriteOffProposal(why, proposer)
            )
            render.line(
                f"write-off proposed by {proposer} ({why}); someone else confirms it: "
                f"mineaction journey write-off {sid} --confirm"
            )
            return
        confirmer = inputs.staff(confirmed_by or principal.subject, "--confirmed-by")
        _acting(_LENDING + "ConfirmLoanWriteOff", confirmer)
        latest, held = await _latest_status(sid, running=True)
        # A proposal made straight with lending that the journey has not read yet is
        # confirmed with lending itself, and the journey told.
        in_lending = (
            None if held.write_off_proposed_by else await _lendings_proposal(latest.id, held)
        )
        proposer = in_lending.proposed_by if in_lending else held.write_off_proposed_by
        reason_held = in_lending.reason if in_lending else held.write_off_reason
        if proposal_reason and not proposal_by:
            raise BadInput("--proposal-reason goes with --proposal-by: name whose proposal")
        if (proposal_by and not same_person(proposer, proposal_by)) or (
            proposal_reason and proposal_reason.strip() != reason_held.strip()
        ):
            pinned = f"{proposal_by.strip()}'s" + (
                f" ({proposal_reason.strip()})" if proposal_reason else ""
            )
            raise CliError(
                f"the write-off proposed now is {proposer}'s ({reason_held}), not {pinned}: "
                f"read `mineaction journey status {sid}` again"
            )
        # The lending service compares identities case-insensitively.
        if same_person(proposer, confirmer):
            raise CliError(
                f"four eyes: {proposer} proposed this write-off; someone else confirms it"
            )
        if in_lending is None:
            status = await _update_journey(
                sid,
                SurvivorJourneyWorkflow.record_write_off,
                WriteOffDecision(held.write_off_reason, proposer, confirmer),
            )
            then = _loan_line(status)
        else:
            confirmed = await call_lending(
                "ConfirmLoanWriteOff",
                lending_pb.ConfirmLoanWriteOffRequest(
                    request_id=inputs.request_id(),
                    loan_id=held.loan_id,
                    confirmed_by=confirmer,
                    proposed_by=in_lending.proposed_by,
                    proposal_reason=in_lending.reason,
                ),
                lending_pb.ConfirmLoanWriteOffResponse,
            )
            await _tell_journey(sid, held.loan_id, "the write-off")
            proposer = f"{proposer} with lending ({in_lending.reason})"
            then = (
                f"loan {held.loan_id} {loan_status(confirmed.loan)} "
                f"(mineaction journey status {sid})"
            )
        render.line(f"written off: proposed by {proposer}, confirmed by {confirmer}; {then}")

    run(go())


async def _lendings_proposal(
    journey_id: str, status: JourneyStatus
) -> lending_pb.LoanWriteOffProposal:
    """The write-off proposal lending holds for the journey's loan; CliError when there is
    none anywhere."""
    found = (
        await call_lending(
            "GetLoan", lending_pb.GetLoanRequest(loan_id=status.loan_id), lending_pb.GetLoanResponse
        )
        if status.loan_id
        else None
    )
    if found is None or not found.HasField("write_off_proposal"):
        raise CliError(
            f"no write-off is proposed for {journey_id}'s loan: one person proposes "
            f"it first (mineaction journey write-off {status.survivor_id} --reason ...)"
        )
    return found.write_off_proposal


@journey_app.command("withdraw")
def journey_withdraw(
    survivor_id: Annotated[str, typer.Argument(help="The survivor whose application it is.")],
    reason: Annotated[str, typer.Option(help="Why the survivor withdraws the application.")],
    withdrawn_by: Annotated[
        str, typer.Option(help="Who records it (default: the token's own identity).")
    ] = "",
) -> None:
    """Withdraw the loan application the committee has not decided yet, at the survivor's
    wish (lending's WithdrawLoan); the journey, told, closes as CLOSED_WITHDRAWN once its
    assistance items end."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        why = inputs.text(reason, "--reason", 1000)
        who = _staff(withdrawn_by, "--withdrawn-by")
        _acting(_LENDING + "WithdrawLoan", who)
        latest, status = await _latest_status(sid, running=True)
        if status.stage != "COMMITTEE_REVIEW" or status.loan_status != "SUBMITTED":
            raise CliError(
                f"{latest.id} has no application awaiting the committee to withdraw "
                f"(stage {status.stage}, loan {status.loan_status or 'none'})"
            )
        await call_lending(
            "WithdrawLoan",
            lending_pb.WithdrawLoanRequest(
                request_id=inputs.request_id(),
                loan_id=status.loan_id,
                withdrawn_by=who,
                reason=why,
            ),
            lending_pb.WithdrawLoanResponse,
        )
        await _tell_journey(sid, status.loan_id, "the withdrawal")
        render.line(
            f"application {status.loan_id} withdrawn by {who} ({why}); the journey closes "
            f"as CLOSED_WITHDRAWN once its assistance items end (mineaction journey status "
            f"{sid})"
        )

    run(go())


@journey_app.command("refresh")
def journey_refresh(
    survivor_id: Annotated[str, typer.Argument(help="The survivor whose journey it is.")],
) -> None:
    """Make the journey read its loan from the ledger now (signal `loan_changed`), as the
    worker's loan news relay does within seconds of any change recorded through the API:
    for when the relay is not running or is held back (see `health`)."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        _acting(_LENDING + "GetLoan")
        latest, status = await _latest_status(sid, running=True)
        if not status.loan_id:
            raise CliError(f"the journey {latest.id} has no loan to read")
        with temporal(context.settings().effective_temporal_address, f"the journey {latest.id}"):
            await latest.signal(
                SurvivorJourneyWorkflow.loan_changed,
                LoanChanged(status.loan_id),
                rpc_timeout=RPC_TIMEOUT,
            )
        render.line(
            f"the journey {latest.id} reads loan {status.loan_id} from the ledger now "
            f"(mineaction journey status {sid})"
        )

    run(go())


async def _consenting_survivor(survivor_id: str, refused: str) -> eligibility_pb.Survivor:
    """The survivor's record; CliError, saying what is `refused`, when their consent to
    data processing stands withdrawn."""
    async with _service("eligibility") as (stub, calls):
        with calls:
            response = await stub.GetSurvivor(
                eligibility_pb.GetSurvivorRequest(survivor_id=survivor_id), timeout=TIMEOUT
            )
    if response.survivor.HasField("consent_withdrawal"):
        raise CliError(f"{render.consent_withdrawn(response.survivor, 'en')}: {refused}")
    return response.survivor  # type: ignore[no-any-return]


@journey_app.command("follow-up")
def journey_follow_up(
    survivor_id: Annotated[str, typer.Argument(help="The survivor followed up.")],
    income: Annotated[
        str, typer.Option(help="Monthly household income now, in manat (0 allowed).")
    ],
    family_members: Annotated[
        int, typer.Option(help="Family members the survivor's work supports (0-49).")
    ],
    recorded_by: Annotated[
        str, typer.Option(help="Staff id who made the visit (default: the token's own).")
    ] = "",
    working: Annotated[
        bool | None,
        typer.Option("--working/--not-working", help="Working (employed or in business)?"),
    ] = None,
) -> None:
    """Answer the impact follow-up the journey awaits (+6 or +12 months after the last
    repayment): household income, work, family members supported."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        income_minor = inputs.amount_minor(income, "--income", allow_zero=True)
        if working is None:
            raise BadInput("say --working or --not-working")
        inputs.count(family_members, "--family-members", 0, 49)
        who = _staff(recorded_by, "--recorded-by")
        _acting(_ELIGIBILITY + "RecordFollowUp", who)
        await _consenting_survivor(sid, "no follow-up is recorded")
        status = await _update_journey(
            sid,
            SurvivorJourneyWorkflow.record_follow_up,
            FollowUp(income_minor, working, family_members, who),
        )
        months = f"+{status.follow_up_due}-month " if status.follow_up_due else ""
        render.line(
            f"recorded the {months}follow-up of {sid} by {who}: income {manat(income_minor)} "
            f"AZN a month, {'working' if working else 'not working'}, "
            f"{family_members} family member(s) supported"
        )

    run(go())


@journey_app.command("assist")
def journey_assist(
    survivor_id: Annotated[str, typer.Argument(help="The survivor.")],
    type_id: Annotated[str, typer.Argument(help="The assistance item's type, e.g. wheelchair.")],
    action: Annotated[
        str,
        typer.Argument(
            help="The lifecycle action, e.g. deliver; or refresh, to have the item read its "
            "record from the assistance service (a step sent there directly, a promotion off "
            "the waitlist)."
        ),
    ],
    actor: Annotated[
        str,
        typer.Option(help="Who takes the step: you (the default) or a provider's id."),
    ] = "",
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", help="The step's data, KEY=VALUE (e.g. serial_number=WC-1); repeatable."
        ),
    ] = None,
) -> None:
    """A provider's step on one of the journey's assistance items (the item's advance
    update), checked against the type's lifecycle before it is sent; or `refresh`: the
    item reads its record from the assistance service and the journey hears of it."""

    async def go() -> None:
        sid = inputs.identifier(survivor_id, "survivor id")
        kind = inputs.code(type_id, "assistance type")
        step = inputs.action(action)
        who = _staff(actor, "--actor")
        step_data = inputs.data_pairs(data or [], "--data")
        _acting(_ASSISTANCE + "AdvanceAssistance")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.assistance(settings, token) as assist:
            with calling("assistance", settings.assistance_address):
                known = await catalogue.load(assist, TIMEOUT)
        if who not in known.providers:  # a provider's step, by name; staff act as themselves
            _acting(_ASSISTANCE + "AdvanceAssistance", who)
        refresh = step == "refresh"
        if refresh:
            known.type(kind)
            if step_data:
                raise BadInput("refresh takes no --data")
        else:
            known.check_step(kind, step, step_data)
        client, latest, earlier = await _latest_journey(sid)
        workflow_id = await _item_under_way(client, [latest, *reversed(earlier)], kind)
        try:
            state: AssistanceState = await _send_update(
                client.get_workflow_handle(workflow_id),
                AssistanceWorkflow.refresh if refresh else AssistanceWorkflow.advance,
                AssistanceRefresh(who) if refresh else AssistanceAction(step, who, step_data),
                settings.effective_temporal_address,
                f"the {kind} item of {sid} ({workflow_id})",
                refuser=f"the {kind} item",
            )
        except CliError as error:
            if not str(error).endswith("was not found"):
                raise
            raise await _not_requested(client, latest.workflow_id, kind) or error from None
        done = "read its record again" if refresh else step
        render.line(f"{kind} of {sid}: {done} by {who}; now {render.assistance_state(state)}")

    run(go())


async def _item_under_way(client: Client, journeys: Sequence[JourneyRecord], kind: str) -> str:
    """The workflow of the survivor's `kind` item that is under way, newest journey first:
    an item outlives a journey that ended (terminated, failed) while it went on, and is
    still taken to its end from here. With none running, the current journey's."""
    address = context.settings().effective_temporal_address
    for journey in journeys:
        workflow_id = assistance_workflow_id(journey.workflow_id, kind)
        try:
            with temporal(address, f"the {kind} item {workflow_id}"):
                described = await client.get_workflow_handle(workflow_id).describe(
                    rpc_timeout=RPC_TIMEOUT
                )
        except CliError as error:
            if str(error).endswith("was not found"):
                continue
            raise
        if described.status == WorkflowExecutionStatus.RUNNING:
            return workflow_id
    return assistance_workflow_id(journeys[0].workflow_id, kind)


async def _not_requested(client: Client, journey_id: str, kind: str) -> CliError | None:
    """Why a journey has no item of `kind`, when it says: the assessment did not find the
    survivor eligible for it, so it was never requested."""
    try:
        status = await client.get_workflow_handle(journey_id).query(
            SurvivorJourneyWorkflow.status, rpc_timeout=RPC_TIMEOUT
        )
    except Exception:  # the journey cannot say: the plain "not found" stands
        return None
    held = next((a for a in status.assistance if a.type_id == kind), None)
    if held is None or held.assistance_id or not held.terminal:
        return None
    found = "not eligible" if held.state == "not_eligible" else "to need a review first"
    return CliError(
        f"the journey {journey_id} did not request {kind}: its assessment found the "
        f"survivor {found} for it"
    )


_STAGES = tuple(stage.value for stage in Stage)


def _survivor_cell(workflow_id: str) -> str:
    """The survivor a listed journey follows, and which of their journeys it is after the
    first: `srv-0001`, `srv-0001 (journey 2)`."""
    survivor_id, number = journey_of(workflow_id)
    return survivor_id if number == 1 else f"{survivor_id} (journey {number})"


@app.command()
def journeys(
    stage: Annotated[
        str | None, typer.Option(help="Only this stage, e.g. COMMITTEE_REVIEW or repayment.")
    ] = None,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    loan_status: Annotated[
        str | None, typer.Option(help="Only this loan status, e.g. ACTIVE.")
    ] = None,
    programme_year: Annotated[int | None, typer.Option(help="Only this programme year.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Closed journeys too (default: running only).")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many journeys.")] = 200,
    lang: Lang = "en",
) -> None:
    """List journeys by stage, district, loan status (the journeys' search attributes)."""

    async def go() -> None:
        language = inputs.language(lang)
        inputs.count(limit, "--limit", 1, 10_000)
        query = "WorkflowType = 'SurvivorJourneyWorkflow'"
        if not all_:
            query += " AND ExecutionStatus = 'Running'"
        if stage is not None:
            wanted = stage.strip().upper()
            if wanted not in _STAGES:
                raise BadInput(f"unknown stage {stage!r}: use one of {', '.join(_STAGES)}")
            query += f" AND {sa.STAGE.name} = '{wanted}'"
        if district is not None:
            code = inputs.known_district(district, option="--district")
            query += f" AND {sa.DISTRICT_CODE.name} = '{code}'"
        if loan_status is not None:
            wanted_status = loan_status.strip().upper()
            if wanted_status not in _LOAN_STATUSES:
                raise BadInput(
                    f"unknown loan status {loan_status!r}: use one of {', '.join(_LOAN_STATUSES)}"
                )
            query += f" AND {sa.LOAN_STATUS.name} = '{wanted_status}'"
        if programme_year is not None:
            inputs.count(programme_year, "--programme-year", 1, 3)
            query += f" AND {sa.PROGRAMME_YEAR.name} = {programme_year}"
        found = sorted(await _listed_journeys(query, limit), key=lambda wf: _survivor_cell(wf.id))
        label = functools.partial(render.label, lang=language)
        filters = ", ".join(
            f"{label(name)} {value}"
            for name, value in (  # each as the table shows it, in the reader's language
                ("stage", render.coded("stage", wanted, language) if stage else None),
                ("district", district and render.named(known_districts(), code, language)),
                (
                    "loan_status",
                    loan_status and render.coded("loan_state", wanted_status, language),
                ),
                ("programme_year", programme_year),
            )
            if value is not None
        )
        title = label("journeys" if all_ else "running_journeys") + (
            f": {filters}" if filters else ""
        )
        columns = (
            "survivor", "stage", "district", "loan_status", "days_past_due", "programme_year",
            "workflow", "started_utc",
        )  # fmt: skip
        _print_journeys(title, found, limit, columns, language)

    run(go())


async def _listed_journeys(query: str, limit: int) -> list[WorkflowExecution]:
    """The journeys a visibility query finds, at most `limit`."""
    settings = context.settings()
    client = await context.temporal_client(settings)
    with temporal(settings.effective_temporal_address, "the journeys"):
        return [
            wf async for wf in client.list_workflows(query, limit=limit, rpc_timeout=RPC_TIMEOUT)
        ]


def _print_journeys(
    title: str, found: list[WorkflowExecution], limit: int, columns: Sequence[str], lang: str
) -> None:
    """Listed journeys as a table of their search attributes, codes named in `lang`."""
    districts = known_districts()

    def cells(wf: WorkflowExecution) -> dict[str, str]:
        attrs = wf.typed_search_attributes
        loan = attrs.get(sa.LOAN_STATUS) or ""
        return {
            "survivor": _survivor_cell(wf.id),
            "stage": render.coded("stage", attrs.get(sa.STAGE) or "", lang),
            "district": render.named(districts, attrs.get(sa.DISTRICT_CODE) or "", lang),
            "loan_status": render.coded("loan_state", loan, lang) if loan else "",
            "days_past_due": str(attrs.get(sa.DAYS_PAST_DUE) or 0),
            "programme_year": str(attrs.get(sa.PROGRAMME_YEAR) or ""),
            "workflow": render.coded("workflow_state", wf.status.name, lang) if wf.status else "",
            "started_utc": wf.start_time.strftime("%Y-%m-%d %H:%M") if wf.start_time else "",
        }

    more = f" ({render.label('limit_reached', lang)})" if len(found) >= limit else ""
    table = Table(title=f"{title} — {len(found)}{more}")
    for column in columns:
        table.add_column(  # folded, never cut: a cut survivor id names no one
            render.label(column, lang),
            justify="right" if column == "days_past_due" else "left",
            overflow="fold",
        )
    for wf in found:
        row = cells(wf)
        table.add_row(*(row[column] for column in columns))
    render.console().print(table)


_NEED_STATES = {
    n.removeprefix("NEED_STATE_").lower(): v
    for n, v in assistance_pb.NeedState.items()
    if v != assistance_pb.NEED_STATE_UNSPECIFIED
}


@app.command()
def needs(
    survivor: Annotated[str | None, typer.Option(help="Only this survivor's needs.")] = None,
    type_id: Annotated[
        str | None, typer.Option("--type", help="Only needs of this type, e.g. wheelchair.")
    ] = None,
    state: Annotated[
        str | None, typer.Option(help="Only needs in this state, e.g. open or referred.")
    ] = None,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    lang: Lang = "en",
) -> None:
    """Survivors' recorded needs (assistance ListNeeds), oldest first: each with its
    state and the assistance requested for it."""

    async def go() -> None:
        language = inputs.language(lang)
        request = assistance_pb.ListNeedsRequest(page_size=500)
        if survivor is not None:
            request.survivor_id = inputs.identifier(survivor, "--survivor")
        if type_id is not None:
            request.type_id = inputs.code(type_id, "--type")
        if state is not None:
            wanted = state.strip().lower()
            if wanted not in _NEED_STATES:
                raise BadInput(f"unknown --state {state!r}: use one of {', '.join(_NEED_STATES)}")
            request.state = _NEED_STATES[wanted]
        if district is not None:
            request.district_code = inputs.known_district(district, option="--district")
        settings = context.settings()
        token = context.token(_OPTIONS, settings)
        async with context.assistance(settings, token) as stub:
            with calling("assistance", settings.assistance_address):
                known = await catalogue.load(stub, TIMEOUT)

                def fetch(page_token: str) -> Awaitable[assistance_pb.ListNeedsResponse]:
                    request.page_token = page_token
                    return stub.ListNeeds(checked(request), timeout=TIMEOUT)  # type: ignore[no-any-return]

                found = [n async for page in pages(fetch) for n in page.needs]
        render.console().print(render.needs_table(found, known, language))

    run(go())


# --- repayments -----------------------------------------------------------------------


Response = TypeVar("Response", bound=Message)


async def call_lending(rpc: str, request: Message, answer: type[Response]) -> Response:
    """One call to the lending service with the operator's token; the request is checked
    against the services' own validation rules before it is sent."""
    checked(request)
    settings = context.settings()
    token = context.token(_OPTIONS, settings)
    async with context.lending(settings, token) as stub:
        with calling("lending", settings.lending_address):
            response = await getattr(stub, rpc)(request, timeout=TIMEOUT)
    assert isinstance(response, answer), f"{rpc} answered {type(response).__name__}"
    return response


@app.command(context_settings={"ignore_unknown_options": True})
def repay(
    loan_id: Annotated[str, typer.Argument(help="The loan.")],
    amount: Annotated[str, typer.Argument(help="Amount received, in manat (e.g. 208.35).")],
    payment_date: Annotated[
        str | None, typer.Option("--date", help="Payment date, YYYY-MM-DD (default today).")
    ] = None,
    received_by: Annotated[
        str, typer.Option(help="Who received it (default: the token's own identity).")
    ] = "",
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
            payment_date=proto_date(paid_on := _date_or_today(payment_date, "--date")),
            received_by=_staff(received_by, "--received-by"),
            channel=channel,
        )
        response = await call_lending(
            "RecordRepayment", request, lending_pb.RecordRepaymentResponse
        )
        loan, repayment = response.loan, response.repayment
        allocated = ", ".join(
            f"#{a.instalment_number} {manat(a.principal_minor)}" for a in repayment.allocations
        )
        kind = "recovery" if repayment.recovery else "repayment"
        closed = f" on {from_proto_date(loan.close_date)}" if loan.HasField("close_date") else ""
        as_of = from_proto_date(loan.figures_as_of) if loan.HasField("figures_as_of") else paid_on
        render.line(
            f"recorded {kind} of {manat(repayment.amount_minor)} AZN on {loan.loan_id} "
            f"(transaction {repayment.transaction_id}); "
            + (f"allocated {allocated}; " if allocated else "")
            + f"outstanding {manat(loan.outstanding_principal_minor)} AZN, "
            f"{loan.days_past_due} days past due, "
            f"{loan_status(loan)}{closed}"
            # The answer's figures are the loan's on the payment's date, or on its latest
            # transaction's when later (a payment recorded late).
             + ("" if as_of == programme_today() else f" (as of {as_of})")
        )
        if not repayment.recovery:
            await _tell_journey(loan.survivor_id, loan.loan_id)

    run(go())


async def _tell_journey(survivor_id: str, loan_id: str, what: str = "the repayment") -> int | None:
    """The survivor's running journey re-reads the loan now (signal `loan_changed`), so a
    loan repaid early is seen closed today. The worker's loan news relay tells it too,
    within seconds; this saves the wait. `what` is recorded whatever Temporal says. How
    many running journeys were told; None when Temporal could not be asked."""
    try:
        settings = context.settings()
        client = await context.temporal_client(settings)
        with temporal(settings.effective_temporal_address, f"the journeys of {survivor_id}"):
            return await tell_journeys(client, survivor_id, loan_id)
    except Exception as error:  # whatever it is, the money is recorded: never exit 1 here
        print(
            f"note: {what} is recorded; the survivor's journey was not told "
            f"({one_line(str(error))}) and hears of it from the worker's loan news relay",
            file=sys.stderr,
        )
        return None


@app.command("withdraw-write-off")
def withdraw_write_off(
    loan_id: Annotated[str, typer.Argument(help="The loan whose write-off proposal to withdraw.")],
    reason: Annotated[str, typer.Option(help="Why the proposal is withdrawn.")],
    by: Annotated[
        str,
        typer.Option(help="Staff id who withdraws it (default: the token's own identity)."),
    ] = "",
    request_id: RequestId = None,
) -> None:
    """Withdraw a loan's open write-off proposal, with a reason (kept on record); the loan
    stays ACTIVE and a new proposal may follow. A confirmed write-off is final."""

    async def go() -> None:
        request = lending_pb.WithdrawLoanWriteOffRequest(
            request_id=request_id or inputs.request_id(),
            loan_id=inputs.identifier(loan_id, "loan id"),
            reason=inputs.text(reason, "--reason", 1000),
            withdrawn_by=inputs.staff(by, "--by") if by else "",
        )
        response = await call_lending(
            "WithdrawLoanWriteOff", request, lending_pb.WithdrawLoanWriteOffResponse
        )
        proposal = response.withdrawn
        render.line(
            f"withdrawn by {response.withdrawn_by}: the write-off of {request.loan_id} "
            f"proposed by {proposal.proposed_by} ({proposal.reason}); the loan stays ACTIVE"
        )

    run(go())


# --- health ---------------------------------------------------------------------------


@app.command()
def health() -> None:
    """Is every part of the cluster up? Each service's gRPC health, Temporal, the journey
    workers polling their task queue and the loan news relay; exit 1 when any part is
    not."""

    async def go() -> None:
        settings = context.settings()
        rows = [
            (name, address, await _service_health(settings, address))
            for name, address in (
                ("eligibility", settings.eligibility_address),
                ("lending", settings.lending_address),
                ("assistance", settings.assistance_address),
            )
        ]
        temporal_address = settings.effective_temporal_address
        notes: list[str] = []  # too long for the table
        try:
            client = await context.temporal_client(settings)
        except (CliError, ConfigError) as error:
            # No keyring here (run outside the cluster's folder): the rest is still shown.
            trouble = "not reachable" if isinstance(error, CliError) else "no payload keyring"
            rows.append(("temporal", temporal_address, trouble))
            rows.append(("journey workers", settings.journey_task_queue, "unknown (no Temporal)"))
            rows.append(("loan news relay", LOAN_NEWS_WORKFLOW_ID, "unknown (no Temporal)"))
            if isinstance(error, ConfigError):
                notes.append(str(error))
        else:
            rows.append(("temporal", temporal_address, "ok"))
            rows.append(
                (
                    "journey workers",
                    settings.journey_task_queue,
                    await _workers_polling(client, settings.journey_task_queue),
                )
            )
            relay, failure = await _relay_state(client)
            rows.append(("loan news relay", LOAN_NEWS_WORKFLOW_ID, relay))
            if failure:
                notes.append(f"loan news relay: {failure}")
        table = Table(title="Cluster health")
        for column in ("Part", "Address", "State"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        render.console().print(table)
        for note in notes:
            render.line(note)
        down = [name for name, _, state in rows if not state.startswith("ok")]
        if down:
            raise CliError(f"not healthy: {', '.join(down)}")

    run(go())


async def _service_health(settings: Settings, address: str) -> str:
    """A service's standard gRPC health check (open to any caller, no token)."""
    async with context.channel(settings, address, None) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return (
                "not reachable"
                if error.code() == grpc.StatusCode.UNAVAILABLE
                else (f"failed ({error.code().name})")
            )
    return "ok" if answer.status == health_pb2.HealthCheckResponse.SERVING else "not serving"


async def _workers_polling(client: Client, task_queue: str) -> str:
    """How many workers Temporal has seen polling the journey task queue lately."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        ),
        timeout=timedelta(seconds=5),
    )
    # Temporal keeps a poller for minutes after its worker stops: only recent ones count.
    recent = datetime.now(UTC) - timedelta(minutes=1)
    pollers = len(
        {
            poller.identity
            for poller in response.pollers
            if poller.last_access_time.ToDatetime(tzinfo=UTC) >= recent
        }
    )
    return f"ok: {pollers} polling" if pollers else "no worker polling"


async def _relay_state(client: Client) -> tuple[str, str]:
    """Whether the loan news relay runs; for a turn of it that keeps failing (the lending
    service down, the worker's token refused), the failure too."""
    try:
        described = await client.get_workflow_handle(LOAN_NEWS_WORKFLOW_ID).describe(
            rpc_timeout=RPC_TIMEOUT
        )
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return "not started (a journey worker starts it)", ""
        return "unknown", one_line(str(error))
    if described.status != WorkflowExecutionStatus.RUNNING:
        return f"not running ({described.status.name if described.status else 'UNKNOWN'})", ""
    for turn in described.raw_description.pending_activities:
        # Waiting to retry after a failure; a retry that runs again may well be fine.
        waiting = turn.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        if turn.attempt > 1 and turn.HasField("last_failure") and waiting:
            try:  # the failure's message is encrypted with the payloads
                failed = await client.data_converter.decode_failure(turn.last_failure)
                said = failed.message if isinstance(failed, FailureError) else str(failed)
            except Exception:
                said = "(the failure cannot be read with this client's payload keys)"
            return f"failing (attempt {turn.attempt})", one_line(said)
        held_back = await _held_back_since(client, turn.heartbeat_details.payloads)
        if held_back is not None and datetime.now(UTC) - held_back > HELD_BACK_ALARM:
            return (
                f"held back since {held_back:%Y-%m-%d %H:%M:%S} UTC",
                "changes to loans wait behind a transaction left open in the lending "
                "database; journeys hear of them once it ends (docs/lending.md, the loan "
                "change feed)",
            )
    return "ok: following the loan change feed", ""


async def _held_back_since(client: Client, heartbeat: Sequence[Payload]) -> datetime | None:
    """From the relay turn's last heartbeat (its cursor, then since when changes are held
    back): that time, or None when none are, or it cannot be read."""
    try:
        details = await client.data_converter.decode(heartbeat)
        return datetime.fromisoformat(details[1]) if len(details) > 1 and details[1] else None
    except Exception:
        return None


# --- arrears --------------------------------------------------------------------------


@app.command()
def arrears(
    min_days: Annotated[int, typer.Option(help="At least this many days past due.")] = 1,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many journeys.")] = 200,
    lang: Lang = "en",
) -> None:
    """List running journeys in arrears (Temporal visibility on DaysPastDue)."""

    async def go() -> None:
        language = inputs.language(lang)
        inputs.count(min_days, "--min-days", 1, 100_000)
        inputs.count(limit, "--limit", 1, 10_000)
        query = (
            "WorkflowType = 'SurvivorJourneyWorkflow' AND ExecutionStatus = 'Running' "
            f"AND {sa.DAYS_PAST_DUE.name} >= {min_days}"
        )
        if district is not None:
            code = inputs.known_district(district, option="--district")
            query += f" AND {sa.DISTRICT_CODE.name} = '{code}'"
        found = sorted(
            await _listed_journeys(query, limit),
            key=lambda wf: (
                -(wf.typed_search_attributes.get(sa.DAYS_PAST_DUE) or 0),
                _survivor_cell(wf.id),
            ),
        )
        title = render.label("in_arrears", language).format(days=min_days)
        columns = ("survivor", "days_past_due", "stage", "loan_status", "district")
        _print_journeys(title, found, limit, columns, language)

    run(go())


# --- reports --------------------------------------------------------------------------


@app.command()
def portfolio(
    as_of: Annotated[str | None, typer.Option(help="Report date (default today).")] = None,
    fund: Annotated[str, typer.Option(help="Only this fund's loans ('' for all).")] = "",
    lang: Lang = "en",
) -> None:
    """The portfolio report: outstanding, PAR30 and repayment rate, disaggregated."""

    async def go() -> None:
        language = inputs.language(lang)
        day = _report_day(as_of)
        fund_id = inputs.identifier(fund, "fund id") if fund else ""
        request = lending_pb.GetPortfolioReportRequest(as_of=proto_date(day), fund_id=fund_id)
        report = (
            await call_lending("GetPortfolioReport", request, lending_pb.GetPortfolioReportResponse)
        ).report
        out = render.console()
        label = functools.partial(render.label, lang=language)
        title = label("portfolio_as_of").format(day=day)
        out.print(render.portfolio_table(title, [(label("total"), report.total)], language))
        out.print(render.buckets_table(report.total, language))
        districts = known_districts()
        settings = context.settings()
        async with context.lending(settings, context.token(_OPTIONS, settings)) as stub:
            with calling("lending", settings.lending_address):
                products = {
                    product_id: {"en": p.name.en, "az": p.name.az}
                    for product_id, p in (await _loan_products(stub)).items()
                }
        breakdowns: tuple[tuple[str, Any, Callable[[str], str]], ...] = (
            ("by_district", report.by_district, lambda k: render.named(districts, k, language)),
            # keyed SEX_FEMALE, ...: shown as female, ... (qadın, ...)
            ("by_sex", report.by_sex, lambda k: label(f"sex:{k.removeprefix('SEX_').lower()}")),
            ("by_product", report.by_product, lambda k: render.named(products, k, language)),
        )
        for title, rows, name in breakdowns:
            keyed = [(name(r.key), r.figures) for r in rows]
            out.print(render.portfolio_table(label(title), keyed, language))

    run(go())


@app.command()
def loan(
    loan_id: Annotated[str, typer.Argument(help="The loan.")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="As of this day, YYYY-MM-DD (default today).")
    ] = None,
    lang: Lang = "en",
) -> None:
    """A loan as of a day: its state, amounts and arrears, and its repayment schedule
    then, each instalment with what is paid and how late it is. Reads only."""

    async def go() -> None:
        language = inputs.language(lang)
        lid = inputs.identifier(loan_id, "loan id")
        day = _date_or_today(as_of, "--as-of")
        request = lending_pb.GetLoanRequest(
            loan_id=lid, as_of=proto_date(day), include_schedule=True
        )
        found = await call_lending("GetLoan", request, lending_pb.GetLoanResponse)
        out = render.console()
        out.print(render.loan_table(found.loan, day.isoformat(), language))
        if found.HasField("schedule"):
            out.print(render.schedule_table(found.schedule, language))

    run(go())


@app.command()
def transactions(
    loan_id: Annotated[str, typer.Argument(help="The loan.")],
    lang: Lang = "en",
) -> None:
    """A loan's statement: every tranche, repayment, write-off, recovery and reversal by
    value date, with the principal outstanding after each and its transaction id (what
    `reverse` takes). Reads only."""

    async def go() -> None:
        language = inputs.language(lang)
        lid = inputs.identifier(loan_id, "loan id")
        async with _service("lending") as (stub, calls):
            with calls:
                lines = [t async for t in csv_export.statement(stub, lid, TIMEOUT)]
        if not lines:
            render.line(f"loan {lid} has no transactions yet: nothing has been paid out")
            return
        render.console().print(render.transactions_table(lid, lines, language))

    run(go())


@app.command()
def reverse(
    loan_id: Annotated[str, typer.Argument(help="The loan.")],
    transaction_id: Annotated[
        str, typer.Argument(help="The repayment's or recovery's transaction id (`transactions`).")
    ],
    reason: Annotated[str, typer.Option(help="Why it is reversed, e.g. the transfer bounced.")],
    by: Annotated[
        str, typer.Option(help="Who records the reversal (default: the token's own identity).")
    ] = "",
    request_id: RequestId = None,
) -> None:
    """Reverse a repayment or a recovery: a mirror transaction on the same value date; the
    original stays in the ledger. A loan the payment had closed is ACTIVE again; on a loan
    written off since, what the payment had repaid is written off with it."""

    async def go() -> None:
        request = lending_pb.ReverseRepaymentRequest(
            request_id=request_id or inputs.request_id(),
            loan_id=inputs.identifier(loan_id, "loan id"),
            transaction_id=inputs.identifier(transaction_id, "transaction id"),
            reason=inputs.text(reason, "--reason", 1000),
            reversed_by=_staff(by, "--by"),
        )
        response = await call_lending(
            "ReverseRepayment", request, lending_pb.ReverseRepaymentResponse
        )
        # The answer's figures are as of the reversed payment's day; say today's.
        today = lending_pb.GetLoanRequest(loan_id=request.loan_id)
        loan = (await call_lending("GetLoan", today, lending_pb.GetLoanResponse)).loan
        render.line(
            f"reversed {request.transaction_id} on {loan.loan_id} "
            f"(reversal {response.reversal_transaction_id}); "
            f"outstanding today {manat(loan.outstanding_principal_minor)} AZN, "
            f"{loan.days_past_due} days past due, {loan_status(loan)}"
        )
        if response.write_off_transaction_id:
            render.line(
                "the loan was written off since: what the payment had repaid is written off "
                f"with it ({response.write_off_transaction_id}); written off in all "
                f"{manat(loan.written_off_minor)} AZN"
            )
        if response.schedule_revision:
            render.line(
                "the loan was rescheduled after the payment, its schedule counting it as paid: "
                f"schedule revision {response.schedule_revision} owes it again, spread over "
                f"the instalments (`mineaction loan {loan.loan_id}`)"
            )
        told = await _tell_journey(loan.survivor_id, loan.loan_id, "the reversal")
        if told == 0 and loan.state == lending_pb.LOAN_STATE_ACTIVE:
            # A journey that has ended is not reopened: nobody is reminded of this loan.
            print(
                f"note: no running journey follows {loan.loan_id}, so no reminders or arrears "
                "review will follow: start one with `mineaction journey start "
                f"{loan.survivor_id} --follow-loan {loan.loan_id}`",
                file=sys.stderr,
            )

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
        request = lending_pb.GetFundRequest(fund_id=fid)
        f = (await call_lending("GetFund", request, lending_pb.GetFundResponse)).fund
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


_LOAN_STATUSES = tuple(
    n.removeprefix("LOAN_STATE_")
    for n, v in lending_pb.LoanState.items()
    if v != lending_pb.LOAN_STATE_UNSPECIFIED
)
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
        district_code = (
            inputs.known_district(district, option="--district") if district is not None else ""
        )
        async with _service("lending") as (stub, calls):
            with calls:
                rows = [
                    row async for row in csv_export.loans(stub, state_value, district_code, TIMEOUT)
                ]
        _write(output, csv_export.LOAN_COLUMNS, rows, "loans")

    run(go())


@export_app.command("transactions")
def export_transactions(
    loan_id: Annotated[str, typer.Argument(help="The loan.")],
    output: Output = Path("-"),
) -> None:
    """A loan's statement: every ledger transaction by value date, with the principal
    outstanding after each."""

    async def go() -> None:
        _check_output(output)
        lid = inputs.identifier(loan_id, "loan id")
        async with _service("lending") as (stub, calls):
            with calls:
                rows = [
                    csv_export.transaction_row(lid, t)
                    async for t in csv_export.statement(stub, lid, TIMEOUT)
                ]
        _write(output, csv_export.TRANSACTION_COLUMNS, rows, "transactions")

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
        day = _report_day(as_of)
        fund_id = inputs.identifier(fund, "fund id") if fund else ""
        async with _service("lending") as (stub, calls):
            with calls:
                rows = await csv_export.portfolio(stub, day, fund_id, TIMEOUT)
        _write(output, csv_export.PORTFOLIO_COLUMNS, rows, "rows")

    run(go())


@export_app.command("assessments")
def export_assessments(
    output: Output = Path("-"),
    survivor_id: Annotated[str | None, typer.Option(help="Only this survivor's.")] = None,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    from_date: Annotated[
        str | None, typer.Option("--from", help="Assessed on or after this date, YYYY-MM-DD.")
    ] = None,
    to_date: Annotated[
        str | None, typer.Option("--to", help="Assessed on or before this date, YYYY-MM-DD.")
    ] = None,
) -> None:
    """Every assessment, one row per programme decision."""

    async def go() -> None:
        _check_output(output)
        sid = inputs.identifier(survivor_id, "survivor id") if survivor_id else ""
        district_code = (
            inputs.known_district(district, option="--district") if district is not None else ""
        )
        first = inputs.iso_date(from_date, "--from") if from_date else None
        last = inputs.iso_date(to_date, "--to") if to_date else None
        if first and last and first > last:
            raise BadInput(f"--from {first} is after --to {last}")
        async with _service("eligibility") as (stub, calls):
            with calls:
                rows = [
                    row
                    async for row in csv_export.assessments(
                        stub, sid, district_code, TIMEOUT, first, last
                    )
                ]
        _write(output, csv_export.ASSESSMENT_COLUMNS, rows, "rows")

    run(go())


@contextlib.asynccontextmanager
async def _service(name: str) -> AsyncIterator[tuple[Any, contextlib.AbstractContextManager[None]]]:
    """A stub for one service with the caller's token, and the context that turns its
    gRPC errors into one clear line."""
    settings = context.settings()
    token = context.token(_OPTIONS, settings)
    opener = {"lending": context.lending, "eligibility": context.eligibility}[name]
    async with opener(settings, token) as stub:
        yield stub, calling(name, getattr(settings, f"{name}_address"))


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
    """Run N synthetic borrowers' loans for 36 months under Temporal time skipping and show how the revolving fund performs (ledger figures), month by month."""  # noqa: E501
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
