"""The `mineaction` command-line tool against the real parts: the three services
in-process (the `cluster` fixture), the Temporal dev server with a journey worker on this
test's task queue, and, for `simulate`, its own scratch lending service and time-skipping
server. The CLI runs in a thread (it has its own event loop), exactly as from a shell."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import date, timedelta
from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from cli.main import app
from cli.render import LABELS, coded
from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.channels import service_token
from services.common.config import Settings
from services.common.districts import known_districts
from services.common.money import manat
from services.common.programme_time import add_months, programme_date, programme_today
from services.common.protoconv import from_proto_date
from tests.conftest import Cluster
from tests.factories import need_request, pdate, register_survivor, request_id
from tests.journey_helpers import (
    approved_journey,
    follow_up_due,
    own_pool,
    skip_until,
    start_journey,
    status_of,
    wait_for_stage,
    wait_until,
)
from tests.lending_helpers import (
    active_loan,
    approved_loan,
    disburse,
    feed_end,
    lending_db,
    open_fund,
    propose_write_off,
    repayment,
    reschedule,
    reversal,
    statement,
    write_off,
)
from tests.ports import closed_port
from workers.journey import search_attributes as sa
from workers.journey.activities import (
    JourneyActivities,
    following_loan,
    snapshot_request,
    survivor_profile_of,
)
from workers.journey.loan_news import LOAN_NEWS_WORKFLOW_ID, LoanNewsWorkflow, start_loan_news
from workers.journey.model import (
    JourneyInput,
    LoanRequest,
    Stage,
    TranchePlan,
    WriteOffDecision,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes
from workers.notifications.outbox import Outbox

INTAKE = """\
survivor_id: {survivor_id}
date_of_birth: 1981-05-14
sex: male
district_code: saatli
incident_date: 2003-09-02
incident_type: landmine
injuries: [lower_limb_amputation]
functioning:
  - {{domain: walking, level: a_lot_of_difficulty}}
  - {{domain: cognition, level: no_difficulty}}
household_size: 5
dependants: 3
monthly_household_income_minor: 60000
languages: [azerbaijani]
preferred_language: azerbaijani
consent: {{data_processing: true, recorded_on: 2026-02-20, recorded_by: cw-01}}
"""


HARDSHIP = ["journey", "hardship", "srv-0001", "--reason", "flood", "--requested-by", "lo-01"]
WRITE_OFF = ["journey", "write-off", "srv-0001", "--reason", "closed", "--proposed-by", "lo-01"]
FOLLOW_UP = ["journey", "follow-up", "srv-0001", "--family-members", "4", "--recorded-by", "c"]


class Ran:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr

    def __repr__(self) -> str:
        return f"exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@pytest.fixture
def cli_env(
    cluster: Cluster, settings: Settings, dev_server_env: WorkflowEnvironment, task_queue: str
) -> dict[str, str]:
    """The environment an operator's shell would have, pointing at the test cluster."""
    return {
        "ELIGIBILITY_ADDRESS": cluster.address("eligibility"),
        "LENDING_ADDRESS": cluster.address("lending"),
        "ASSISTANCE_ADDRESS": cluster.address("assistance"),
        "TEMPORAL_ADDRESS": dev_server_env.client.service_client.config.target_host,
        "MINEACTION_STATE_DIR": str(settings.state_dir),  # its dev-token is the default
        "JOURNEY_TASK_QUEUE": task_queue,
        "PAYLOAD_KEYS_FILE": os.environ["PAYLOAD_KEYS_FILE"],
        "COLUMNS": "200",
    }


@pytest.fixture(autouse=True)
def _no_ambient_token() -> Iterator[None]:
    before = os.environ.pop("MINEACTION_TOKEN", None)
    yield
    if before is not None:
        os.environ["MINEACTION_TOKEN"] = before


async def mineaction(env: Mapping[str, str | None], *args: str) -> Ran:
    """`mineaction ARGS` with `env` added to the environment (None: a variable unset)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    return Ran(result.exit_code, result.stdout, result.stderr)


def table_rows(out: str) -> dict[str, str]:
    """A key-value table's rows as printed (`│ Stage │ Grace period (GRACE) │`)."""
    rows = {}
    for row in out.splitlines():
        cells = [c.strip() for c in row.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def table_cells(out: str, column: int) -> list[str]:
    """A bordered table's cells in `column` (0 first), each row's wrapped lines joined."""
    cells: list[str] = []
    current: list[str] = []
    for row in [*out.splitlines(), ""]:
        if row.startswith("│"):
            parts = row.strip().strip("│").split("│")
            if parts[column].strip():
                current.append(parts[column].strip())
        elif current:
            cells.append(" ".join(current))
            current = []
    return cells


def struct_of(**values: int | str) -> struct_pb2.Struct:
    packed = struct_pb2.Struct()
    packed.update(values)
    return packed


def one_error_line(ran: Ran) -> str:
    assert ran.exit_code != 0, ran
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ran
    assert "Traceback" not in ran.stdout + ran.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("export", "loans"), ("portfolio",)])
async def test_output_read_only_in_part_is_not_an_error(
    cli_env: dict[str, str], command: tuple[str, ...]
) -> None:
    """`mineaction export loans | head`: the reader closes the pipe before the CLI writes;
    and a table (`portfolio | head`), which exited 1, Rich's own code, with no word."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from cli.main import app; app()",
            *command,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **cli_env},
        )
    finally:
        os.close(write_end)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert (process.returncode, stderr.decode()) == (0, "")


def write_intake(folder: Path, survivor_id: str) -> Path:
    path = folder / f"{survivor_id}.yaml"
    path.write_text(INTAKE.format(survivor_id=survivor_id), encoding="utf-8")
    return path


async def test_register_and_assess_in_both_languages(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    ran = await mineaction(
        cli_env, "register", str(write_intake(tmp_path, survivor_id)), "--assess", "--lang", "az"
    )
    assert ran.exit_code == 0, ran
    assert f"sağ qalan {survivor_id} qeydiyyata alındı, Saatlı (saatli)" in ran.stdout
    assert "Uyğunluq qiymətləndirməsi" in ran.stdout and "uyğundur" in ran.stdout
    # Programmes by the rule set's Azerbaijani names (with the id), the missing data and
    # the score's parts in Azerbaijani too.
    programmes = table_cells(ran.stdout, 0)
    assert "Biznesə başlamaq üçün mikrokredit (startup_loan)" in programmes, programmes
    assert "Xalçaçılıq müəssisəsinə dəstək (carpet_weaving)" in programmes
    assert "Vaşinqton Qrupu: özünəqulluq (self_care)" in table_cells(ran.stdout, 4)
    assert "Prioritet balı: " in ran.stdout
    assert "  +15  Himayədə olanlar (hər biri 5 bal, ən çoxu 30)." in ran.stdout
    assert "dependants +15" not in ran.stdout and "│ startup_loan" not in ran.stdout

    ran = await mineaction(cli_env, "assess", survivor_id, "--date", "2026-11-26")
    assert ran.exit_code == 0, ran
    assert "Eligibility assessment" in ran.stdout and "2026-11-26" in ran.stdout

    # An intake date against today is refused before any call, the field named.
    future = write_intake(tmp_path, f"srv-{uuid.uuid4().hex[:12]}")
    future.write_text(future.read_text().replace("2003-09-02", "2099-09-02"))
    refused = await mineaction(cli_env, "register", str(future))
    assert refused.exit_code == 2, refused
    assert one_error_line(refused).endswith(
        "1 invalid field(s): intake.incident_date: must not be in the future"
    ), refused
    # A refusal only the service can make names the field at fault.
    early = await mineaction(cli_env, "assess", survivor_id, "--date", "2025-06-01")
    assert early.exit_code == 1, early
    assert one_error_line(early).endswith(
        "invalid assessment_date: the rules are in force from 2026-01-01; 2025-06-01 is before that"
    ), early
    # Why the expansion loan was refused, in English this time.
    assert "Micro-credit expansion loan (expansion_loan)" in table_cells(ran.stdout, 0)
    assert "not eligible" in ran.stdout
    assert "Washington Group: self-care (self_care)" in table_cells(ran.stdout, 4)
    assert "  +15  Dependants (5 points each, at most 30)." in ran.stdout

    out = tmp_path / "assessments.csv"
    ran = await mineaction(
        cli_env, "export", "assessments", "--survivor-id", survivor_id, "-o", str(out)
    )
    assert ran.exit_code == 0, ran
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {r["survivor_id"] for r in rows} == {survivor_id}
    assert len({r["assessment_id"] for r in rows}) == 2
    by_programme = {r["programme_id"]: r for r in rows if r["assessment_date"] == "2026-11-26"}
    assert by_programme["startup_loan"]["outcome"] == "ELIGIBLE"
    assert by_programme["expansion_loan"]["outcome"] == "NOT_ELIGIBLE"
    assert "established_business" in by_programme["expansion_loan"]["failed_rules"]
    # One day's assessments only.
    ran = await mineaction(
        cli_env, "export", "assessments", "--survivor-id", survivor_id,
        "--from", "2026-11-26", "--to", "2026-11-26",
    )  # fmt: skip
    assert ran.exit_code == 0, ran
    that_day = list(csv.DictReader(io.StringIO(ran.stdout)))
    assert {r["assessment_date"] for r in that_day} == {"2026-11-26"}
    assert len({r["assessment_id"] for r in that_day}) == 1
    backwards = ["export", "assessments", "--from", "2026-12-01", "--to", "2026-11-01"]
    refused = await mineaction(cli_env, *backwards)
    assert refused.exit_code == 2, refused
    assert one_error_line(refused) == "error: --from 2026-12-01 is after --to 2026-11-01"


async def test_consent_withdrawn_and_given_again_from_the_cli(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    intake = write_intake(tmp_path, survivor_id)  # consent given on 2026-02-20
    assert (await mineaction(cli_env, "register", str(intake))).exit_code == 0

    # Bad input is refused before any call.
    for bad, says in (
        (["--on", "2026-13-01"], "--on"),
        (["--on", "2026-11-20", "--lang", "fr"], "unknown language"),
    ):
        refused = await mineaction(cli_env, "withdraw-consent", survivor_id, *bad)
        assert refused.exit_code == 2 and says in one_error_line(refused), refused
    before_consent = await mineaction(
        cli_env, "withdraw-consent", survivor_id, "--on", "2026-02-19"
    )
    assert "withdrawn_on: is before the consent on record was given (2026-02-20)" in (
        one_error_line(before_consent)
    )

    ran = await mineaction(
        cli_env, "withdraw-consent", survivor_id, "--on", "2026-11-20", "--lang", "az"
    )
    assert ran.exit_code == 0, ran
    assert f"sağ qalan {survivor_id} 2026-11-20 tarixində məlumatlarının emalına" in ran.stdout
    # Nothing uses the survivor's data any more: no assessment, no journey.
    line = one_error_line(await mineaction(cli_env, "assess", survivor_id))
    assert "withdrew consent to data processing on 2026-11-20" in line, line
    start = [
        "journey",
        "start",
        survivor_id,
        "--case-worker",
        "cw-01",
        "--assistance",
        "wheelchair",
    ]
    line = one_error_line(await mineaction(cli_env, *start))
    assert line.endswith("their data is no longer used: no journey is started"), line
    line = one_error_line(await mineaction(cli_env, "withdraw-consent", survivor_id))
    assert "already" in line, line

    # The intake file's consent is the one withdrawn; the consent given again restores it.
    line = one_error_line(await mineaction(cli_env, "register", str(intake)))
    assert "record the consent given again, dated on or after 2026-11-20" in line, line
    again = ["register", str(intake), "--consent-by", "cw-02", "--consent-on", "2026-11-21"]
    assert (await mineaction(cli_env, *again)).exit_code == 0
    assert (await mineaction(cli_env, "assess", survivor_id)).exit_code == 0


async def test_reassessment_under_the_latest_rules_from_the_cli(
    cli_env: dict[str, str], cluster: Cluster, tmp_path: Path
) -> None:
    """A survivor stays on the rule-set version of their first assessment; the CLI says
    when a newer one is published, re-assesses under it when asked with a reason, and
    shows the version a survivor is pinned to."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    intake = write_intake(tmp_path, survivor_id)
    ran = await mineaction(cli_env, "register", str(intake), "--date", "2026-03-01", "--assess")
    assert ran.exit_code == 0, ran
    assert f"registered survivor {survivor_id}, Saatli (saatli)\n" in ran.stdout  # not pinned
    assert "is the latest" not in ran.stdout  # assessed under the latest: nothing to say
    pinned = await cluster.eligibility.GetSurvivor(
        eligibility_pb.GetSurvivorRequest(survivor_id=survivor_id)
    )
    version = pinned.survivor.pinned_rule_set_version
    assert pinned.survivor.pinned_rule_set_id == "reintegration" and version >= 1

    # A newer version is published: the same rules, another policy reference.
    latest = await cluster.eligibility.GetRuleSet(
        eligibility_pb.GetRuleSetRequest(rule_set_id="reintegration")
    )
    assert latest.rule_set.version == version
    newer = await cluster.eligibility.PublishRuleSet(
        eligibility_pb.PublishRuleSetRequest(
            request_id=request_id(),
            source_yaml=latest.rule_set.source_yaml.replace(
                'policy_ref: "', f'policy_ref: "(revised {uuid.uuid4().hex[:6]}) ', 1
            ),
            published_by="pm-01",
            change_note="policy reference revised",
        )
    )
    assert newer.rule_set.version == version + 1

    # Assessed again: still under the pinned version, and the output says a newer exists.
    command = f"mineaction assess {survivor_id} --reassess-under-latest --reason"
    for lang, says in (
        ("en", f"assessed under reintegration v{version}; v{version + 1} is the latest — "
               f're-assess with `{command} "why"` to use it'),
        ("az", f"reintegration qaydalar toplusunun v{version} versiyası ilə qiymətləndirilib; "
               f"ən son versiya v{version + 1} — ondan istifadə etmək üçün yenidən "
               f'qiymətləndirin: `{command} "səbəb"`'),
    ):  # fmt: skip
        ran = await mineaction(
            cli_env, "assess", survivor_id, "--date", "2026-03-01", "--lang", lang
        )
        assert ran.exit_code == 0, ran
        assert says in ran.stdout, ran

    # A re-assessment needs its reason; with one, it is made under the latest version.
    line = one_error_line(
        await mineaction(cli_env, "assess", survivor_id, "--reassess-under-latest")
    )
    assert "--reassess-under-latest needs --reason" in line
    ran = await mineaction(
        cli_env, "assess", survivor_id, "--date", "2026-03-01",
        "--reassess-under-latest", "--reason", "annual review under the revised manual",
    )  # fmt: skip
    assert ran.exit_code == 0, ran
    assert f"reintegration v{version + 1}" in ran.stdout
    assert "is the latest" not in ran.stdout
    assert "Micro-credit start-up loan (startup_loan)" in table_cells(ran.stdout, 0)
    # The assessment says why it was made, on screen and in the export.
    reason = "(re-assessed: annual review under the revised manual)"
    assert reason in " ".join(ran.stdout.split()), ran
    ran = await mineaction(cli_env, "export", "assessments", "--survivor-id", survivor_id)
    assert ran.exit_code == 0, ran
    reasons = {
        (r["rule_set_version"], r["reassessment_reason"])
        for r in csv.DictReader(io.StringIO(ran.stdout))
    }
    assert reasons == {
        (str(version), ""),
        (str(version + 1), "annual review under the revised manual"),
    }

    # Reading why again stores nothing: the latest assessment, or one named, as it was made.
    before = await cluster.row_counts()
    ran = await mineaction(cli_env, "assessment", survivor_id, "--lang", "az")
    assert ran.exit_code == 0, ran
    assert f"{survivor_id}: qeydə alınmış qiymətləndirmə sayı: 4; göstərilən: " in ran.stdout
    assert f"reintegration v{version + 1}" in ran.stdout
    assert "(yenidən qiymətləndirilib: annual review" in " ".join(ran.stdout.split())
    listed = await cluster.eligibility.ListAssessments(
        eligibility_pb.ListAssessmentsRequest(survivor_id=survivor_id)
    )
    first = next(a for a in listed.assessments if a.rule_set_version == version)
    ran = await mineaction(cli_env, "assessment", survivor_id, "--id", first.assessment_id)
    assert ran.exit_code == 0, ran
    assert f"shown: {first.assessment_id} (2026-03-01)" in ran.stdout
    assert f"reintegration v{version}" in ran.stdout and "re-assessed" not in ran.stdout
    assert await cluster.row_counts() == before
    line = one_error_line(await mineaction(cli_env, "assessment", survivor_id, "--id", "asm-x1"))
    assert line.endswith(f"survivor {survivor_id} has no assessment asm-x1"), line
    line = one_error_line(await mineaction(cli_env, "assessment", "srv-never-assessed"))
    # Never registered: told so (it was sent to assess them, which would be refused).
    assert "survivor srv-never-assessed is not registered" in line, line
    never_assessed = await register_survivor(cluster.eligibility)
    line = one_error_line(await mineaction(cli_env, "assessment", never_assessed))
    assert f"`mineaction assess {never_assessed}` makes one" in line, line

    # The survivor is pinned to the newer version now, as a re-registration shows.
    ran = await mineaction(cli_env, "register", str(intake))
    assert ran.exit_code == 0, ran
    assert (
        f"registered survivor {survivor_id}, Saatli (saatli); pinned to rule set reintegration "
        f"v{version + 1}"
    ) in ran.stdout


async def test_a_rule_change_shown_tried_and_published_from_the_cli(
    cli_env: dict[str, str], cluster: Cluster, tmp_path: Path
) -> None:
    """A programme manager's round: the latest rules to a file, a change tried as a
    what-if (publishing nothing), a mistake shown at its line and column, the change
    published with a note, and the versions listed."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    ran = await mineaction(
        cli_env, "register", str(write_intake(tmp_path, survivor_id)),
        "--district", "kalbajar", "--assess",
    )  # fmt: skip
    assert ran.exit_code == 0, ran
    assessed = await cluster.eligibility.ListAssessments(
        eligibility_pb.ListAssessmentsRequest(survivor_id=survivor_id)
    )
    assessment_id = assessed.assessments[0].assessment_id
    latest = (
        await cluster.eligibility.GetRuleSet(
            eligibility_pb.GetRuleSetRequest(rule_set_id="reintegration")
        )
    ).rule_set

    rules = tmp_path / "rules.yaml"
    ran = await mineaction(cli_env, "rules", "show", "--output", str(rules))
    assert ran.exit_code == 0, ran
    assert rules.read_text(encoding="utf-8") == latest.source_yaml
    assert f"wrote reintegration v{latest.version} to {rules}" in ran.stderr

    # What if Kalbajar left the programme's districts? This survivor's loans would go.
    rules.write_text(latest.source_yaml.replace(" kalbajar,", "", 1), encoding="utf-8")
    before = await cluster.row_counts()
    ran = await mineaction(cli_env, "rules", "what-if", str(rules), "--examples", "100")
    assert ran.exit_code == 0, ran
    assert await cluster.row_counts() == before  # nothing published, nothing stored
    rows = _wrapped_rows_after(ran.stdout, "What if:")
    startup = next(r for r in rows if r[0] == "startup_loan")
    assert int(startup[1]) >= 1, ran.stdout
    assert f"{assessment_id}: eligible → not eligible" in ran.stdout, ran.stdout
    # No examples asked for: the counts alone (0 gave the service's default, five).
    ran = await mineaction(cli_env, "rules", "what-if", str(rules), "--examples", "0")
    assert ran.exit_code == 0, ran
    assert "eligible → not eligible" not in ran.stdout, ran.stdout
    assert next(r for r in _wrapped_rows_after(ran.stdout, "What if:") if r[0] == "startup_loan")

    # A mistake is shown where it is, as a compiler would; nothing is published.
    rules.write_text(
        latest.source_yaml.replace("params.max_active_loans", "params.maximum_loans", 1),
        encoding="utf-8",
    )
    for command in (["what-if", str(rules)], ["publish", str(rules), "--note", "typo"]):
        ran = await mineaction(cli_env, "rules", *command)
        assert ran.exit_code == 1, ran
        assert re.search(
            rf"^{re.escape(str(rules))}: rules\[\d+\]\.expression \(line \d+, column \d+\): "
            ".*unknown parameter maximum_loans",
            ran.stdout,
            re.M,
        ), ran.stdout
        assert one_error_line(ran) == (
            f"error: the eligibility service refused {rules}: 1 problem(s), listed above; "
            "nothing was published"
        )
    assert await cluster.row_counts() == before

    # Published with a note: the next version, listed with who and why.
    rules.write_text(
        latest.source_yaml.replace('policy_ref: "', 'policy_ref: "(annex B) ', 1),
        encoding="utf-8",
    )
    ran = await mineaction(cli_env, "rules", "publish", str(rules), "--note", "annex B cited")
    assert ran.exit_code == 0, ran
    assert ran.stdout.startswith(
        f"published reintegration v{latest.version + 1} by dev (annex B cited); "
    ), ran
    assert "test case(s) passed" in ran.stdout
    ran = await mineaction(cli_env, "rules", "versions", "--lang", "az")
    assert ran.exit_code == 0, ran
    versions = _wrapped_rows_after(ran.stdout, "Qaydalar toplusunun versiyaları reintegration")
    assert [r[0] for r in versions][-1] == str(latest.version + 1)
    assert versions[-1][2:] == ["dev", "annex B cited"], ran.stdout
    line = one_error_line(
        await mineaction(cli_env, "rules", "publish", str(rules), "--note", "again")
    )
    assert line == (
        f"error: refused: rule set reintegration version {latest.version + 1} already says "
        "exactly this; nothing was published"
    )
    ran = await mineaction(cli_env, "rules", "show", "--version", "1")
    first = await cluster.eligibility.GetRuleSet(
        eligibility_pb.GetRuleSetRequest(rule_set_id="reintegration", version=1)
    )
    assert ran.exit_code == 0 and ran.stdout == first.rule_set.source_yaml, ran

    (tmp_path / "empty.yaml").write_text("\n", encoding="utf-8")
    for bad, says in (
        (["what-if", str(tmp_path / "absent.yaml")], "does not exist"),
        (["what-if", str(tmp_path / "empty.yaml")], "is empty"),
        (["what-if", str(rules), "--examples", "101"], "--examples must be from 0 to 100"),
        (["publish", str(rules), "--note", " "], "--note"),
    ):
        ran = await mineaction(cli_env, "rules", *bad)
        assert ran.exit_code == 2 and says in one_error_line(ran), ran
    line = one_error_line(await mineaction(cli_env, "rules", "versions", "nothing-here"))
    assert "no version of rule set 'nothing-here'" in line, line


def test_every_washington_group_domain_has_a_label_in_both_languages() -> None:
    """Missing data names a Washington Group domain; each is written in both languages."""
    for name, value in eligibility_pb.WashingtonGroupDomain.items():
        if value == eligibility_pb.WASHINGTON_GROUP_DOMAIN_UNSPECIFIED:
            continue
        code = name.removeprefix("WASHINGTON_GROUP_DOMAIN_").lower()
        en, az = coded("fact", code, "en"), coded("fact", code, "az")
        assert en.endswith(f" ({code})") and az.endswith(f" ({code})"), code
        assert en != az, code
    assert all(set(v) == {"en", "az"} for v in LABELS.values())


@pytest.mark.timeout(120)
async def test_a_journey_driven_from_the_cli(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    assert (
        await mineaction(cli_env, "register", str(write_intake(tmp_path, survivor_id)))
    ).exit_code == 0
    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(
            cli_env,
            "journey", "start", survivor_id,
            "--case-worker", "cw-01",
            "--product", "fish_farming",
            "--amount", "5000.00",
            "--purpose", "1,000 fingerlings and feed",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        handle = dev_client.get_workflow_handle(journey_workflow_id(survivor_id))
        await wait_for_stage(handle, "COMMITTEE_REVIEW")
        twice = await mineaction(
            cli_env, "journey", "start", survivor_id, "--case-worker", "cw-01",
            "--product", "fish_farming", "--amount", "5000.00",
        )  # fmt: skip
        assert f"the journey journey-{survivor_id} is already running" in one_error_line(twice)

        ran = await mineaction(cli_env, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        # Stages and states are named, with the code a command takes (journeys --stage).
        assert "Credit committee review (COMMITTEE_REVIEW)" in ran.stdout
        assert "Submitted, awaiting the committee (SUBMITTED)" in ran.stdout
        assert f"journey-{survivor_id}: running (RUNNING)" in ran.stdout

        # The journey's own rule (a rejection needs a reason) is checked before calling;
        # a decision the workflow refuses comes back as one line.
        refused = await mineaction(
            cli_env, "journey", "decide", survivor_id, "--reject", "--member", "cm-02",
            "--ref", "CM-1",
        )  # fmt: skip
        assert "a rejection needs --reason" in one_error_line(refused)
        # A committee member's own token names the member (no --member needed).
        cm_02 = cluster.token_for("committee_member", subject="cm-02")
        member = {**cli_env, "MINEACTION_TOKEN": cm_02}
        ran = await mineaction(
            member, "journey", "decide", survivor_id, "--approve", "--ref", "CM-2026-014"
        )
        assert ran.exit_code == 0, ran
        assert "approved by cm-02" in ran.stdout
        # Not the stage the answer had (still COMMITTEE_REVIEW): the journey goes on.
        assert (
            f"the journey goes on from here (mineaction journey status {survivor_id})"
            in (ran.stdout)
            and "stage COMMITTEE_REVIEW" not in ran.stdout
        )
        again = await mineaction(
            cli_env, "journey", "decide", survivor_id, "--approve", "--member", "cm-02",
            "--ref", "CM-2026-014",
        )  # fmt: skip
        assert "the journey refused it" in one_error_line(again)

        status = await wait_for_stage(handle, "GRACE")
        # Decided and paid out: another decision is refused as such, not as one in flight.
        later = await mineaction(
            cli_env, "journey", "decide", survivor_id, "--approve", "--member", "cm-03",
            "--ref", "CM-2026-100",
        )  # fmt: skip
        assert one_error_line(later) == (
            "error: the journey refused it: no loan awaits a committee decision (stage is GRACE)"
        )
        ran = await mineaction(cli_env, "journey", "status", survivor_id, "--lang", "az")
        assert ran.exit_code == 0, ran
        assert status.loan_id in ran.stdout and "5.000,00" in ran.stdout
        # Everything read in Azerbaijani: the stage, the loan's and the workflow's state.
        shown = table_rows(ran.stdout)
        assert shown["Mərhələ"] == "Güzəşt müddəti (GRACE)", shown
        assert shown["Kreditin vəziyyəti"] == "Aktiv (ACTIVE)", shown
        assert shown["İş axını"] == f"journey-{survivor_id}: davam edir (RUNNING)", shown
        # The programmes as the deciding rule-set version names them.
        assert shown["Uyğun proqramlar"].startswith(
            "Biznesə başlamaq üçün mikrokredit (startup_loan)"
        ), shown
        assert "Grace" not in ran.stdout and "running" not in ran.stdout
        ran = await mineaction(cli_env, "journey", "status", survivor_id, "--lang", "en")
        shown = table_rows(ran.stdout)
        assert ran.exit_code == 0, ran
        assert shown["Stage"] == "Grace period (GRACE)", shown
        assert shown["Loan status"] == "Active (ACTIVE)", shown

        today = programme_today().isoformat()
        # A loan officer's own token: the repayment is received in their name (it was
        # received by "cli", not their identity, and refused).
        officer = {
            **cli_env,
            "MINEACTION_TOKEN": cluster.token_for("loan_officer", subject="lo-03"),
        }
        ran = await mineaction(officer, "repay", status.loan_id, "125.50", "--date", today)
        assert ran.exit_code == 0, ran
        assert "recorded repayment of 125.50 AZN" in ran.stdout
        assert "outstanding 4,874.50 AZN" in ran.stdout
        # Its status shows the repayment now, from the ledger.
        ran = await mineaction(cli_env, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        assert "4,874.50" in ran.stdout and "5,000.00" not in ran.stdout
        # `repay` told the journey, which reads the loan again at once (not at its first
        # due date, a year away). Lending down: the journey's own figures, said so, exit 0.
        await wait_until(
            handle, lambda s: s.outstanding_minor == 487_450, "read the repayment", within=10
        )
        lending_down = {**cli_env, "LENDING_ADDRESS": f"127.0.0.1:{closed_port()}"}
        ran = await mineaction(lending_down, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith("Loan figures as the journey last read them: ")
        assert "not reachable" in ran.stdout and "4,874.50" in ran.stdout
        # A payment recorded through the API, as payment collection does: the journey hears
        # of it when told (`journey refresh`), not at its first due date a year away.
        await cluster.lending.RecordRepayment(
            lending_pb.RecordRepaymentRequest(
                request_id=request_id(),
                loan_id=status.loan_id,
                amount_minor=100_000,
                currency_code="AZN",
                payment_date=pdate(programme_today()),
                received_by="payment-collection",
            )
        )
        ran = await mineaction(cli_env, "journey", "refresh", survivor_id)
        assert ran.stdout.strip() == (
            f"the journey {handle.id} reads loan {status.loan_id} from the ledger now "
            f"(mineaction journey status {survivor_id})"
        ), ran
        await wait_until(
            handle, lambda s: s.outstanding_minor == 387_450, "read the payment", within=10
        )
        await handle.terminate("the test ends after the first repayment")

    # The journey ended (terminated) with its loan still being repaid: a new journey would
    # apply for another loan while nobody follows this one, so none is started.
    again = await mineaction(
        cli_env, "journey", "start", survivor_id, "--case-worker", "cw-01",
        "--product", "fish_farming", "--amount", "5000.00",
    )  # fmt: skip
    assert again.exit_code == 1, again
    line = one_error_line(again)
    assert f"last journey journey-{survivor_id} has ended (TERMINATED" in line, line
    assert f"loan {status.loan_id} (ACTIVE) is still open" in line, line
    with pytest.raises(RPCError):  # nothing was started
        await dev_client.get_workflow_handle(journey_workflow_id(survivor_id, 2)).describe()

    ran = await mineaction(cli_env, "export", "loans", "--state", "active")
    assert ran.exit_code == 0, ran
    loans = {r["loan_id"]: r for r in csv.DictReader(io.StringIO(ran.stdout))}
    row = loans[status.loan_id]
    assert row["survivor_id"] == survivor_id and row["product_id"] == "fish_farming"
    assert row["principal_azn"] == "5000.00" and row["repaid_principal_azn"] == "1125.50"
    assert row["outstanding_principal_azn"] == "3874.50"
    assert row["outstanding_principal_minor"] == "387450" and row["close_date"] == ""

    ran = await mineaction(cli_env, "portfolio")
    assert ran.exit_code == 0, ran
    assert "Portfolio as of" in ran.stdout and "saatli" in ran.stdout and "PAR30" in ran.stdout
    assert "By sex" in ran.stdout and "SEX_" not in ran.stdout  # shown as male, female
    assert "Saatli (saatli)" in ran.stdout and "Fish farming (fish_farming)" in ran.stdout
    ran = await mineaction(cli_env, "portfolio", "--lang", "az")
    assert ran.exit_code == 0, ran
    for said in (
        "Portfel, ", "Cəmi", "Gecikmə qrupları", "Rayonlar üzrə", "Saatlı (saatli)",
        "Balıqçılıq təsərrüfatı (fish_farming)", "vaxtında", "90 gündən çox",
    ):  # fmt: skip
        assert said in ran.stdout, (said, ran.stdout)
    assert "kişi" in ran.stdout or "qadın" in ran.stdout
    assert "Active loans" not in ran.stdout and "By sex" not in ran.stdout

    out = tmp_path / "portfolio.csv"
    ran = await mineaction(cli_env, "export", "portfolio", "--output", str(out))
    assert ran.exit_code == 0, ran
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    total = next(r for r in rows if r["breakdown"] == "total")
    saatli = next(r for r in rows if r["breakdown"] == "district" and r["key"] == "saatli")
    assert int(total["active_loans"]) >= 1
    assert int(total["outstanding_principal_minor"]) >= 387450
    assert int(saatli["outstanding_principal_minor"]) >= 387450

    ran = await mineaction(cli_env, "fund", "main")
    assert ran.exit_code == 0, ran
    assert "Available to lend" in ran.stdout and "200,000.00" in ran.stdout
    ran = await mineaction(cli_env, "fund", "main", "--lang", "az")
    assert ran.exit_code == 0, ran
    assert "Kredit üçün mövcud vəsait" in ran.stdout and "Available" not in ran.stdout


@pytest.mark.timeout(180)
async def test_a_later_journey_once_the_first_has_ended(
    cli_env: dict[str, str],
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """A survivor whose first journey closed not eligible (income above the ceiling) is
    registered again with a lower income: a second journey starts under an id of its own,
    is assessed afresh, applies for a loan of its own and is the one every journey command
    steers; the first stays readable; no third starts while the second runs."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    intake = write_intake(tmp_path, survivor_id)
    low_income = intake.read_text(encoding="utf-8")
    # 2,500 AZN a month for 5: 500 AZN a person, above the 300 AZN ceiling.
    intake.write_text(
        low_income.replace(
            "monthly_household_income_minor: 60000", "monthly_household_income_minor: 250000"
        ),
        encoding="utf-8",
    )
    assert (await mineaction(cli_env, "register", str(intake))).exit_code == 0
    start = [
        "journey", "start", survivor_id, "--case-worker", "cw-01",
        "--product", "fish_farming", "--amount", "5000.00",
    ]  # fmt: skip
    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(cli_env, *start)
        assert ran.exit_code == 0, ran
        assert f"started journey journey-{survivor_id} on" in ran.stdout
        assert "journey (before" not in ran.stdout  # the first says nothing of earlier ones
        first = dev_client.get_workflow_handle_for(
            SurvivorJourneyWorkflow.run, journey_workflow_id(survivor_id)
        )
        ended = await first.result()
        assert ended.stage == "CLOSED_NOT_ELIGIBLE" and not ended.loan_id, ended

        # Circumstances changed: registered again with 600 AZN a month for 5.
        intake.write_text(low_income, encoding="utf-8")
        assert (await mineaction(cli_env, "register", str(intake))).exit_code == 0
        ran = await mineaction(cli_env, *start)
        assert ran.exit_code == 0, ran
        second_id = f"journey-{survivor_id}.2"
        assert journey_workflow_id(survivor_id, 2) == second_id
        assert f"started journey {second_id} on" in ran.stdout, ran
        assert (
            f"this is survivor {survivor_id}'s 2nd journey (before: journey-{survivor_id} "
            "(COMPLETED, stage CLOSED_NOT_ELIGIBLE))"
        ) in ran.stdout, ran
        second = dev_client.get_workflow_handle_for(SurvivorJourneyWorkflow.run, second_id)
        status = await wait_for_stage(second, "COMMITTEE_REVIEW")
        # Assessed afresh (not the first journey's assessment) and a loan of its own.
        assert status.assessment_id and status.assessment_id != ended.assessment_id
        assert "startup_loan" in status.eligible_programmes, status
        assert status.loan_id and status.loan_status == "SUBMITTED", status
        ran = await mineaction(cli_env, "export", "loans")
        assert ran.exit_code == 0, ran
        loans = [
            r for r in csv.DictReader(io.StringIO(ran.stdout)) if r["survivor_id"] == survivor_id
        ]
        assert [r["loan_id"] for r in loans] == [status.loan_id], loans

        # While the second runs, no other starts.
        twice = await mineaction(cli_env, *start)
        assert f"the journey {second_id} is already running" in one_error_line(twice)
        with pytest.raises(RPCError):
            await dev_client.get_workflow_handle(journey_workflow_id(survivor_id, 3)).describe()

        # Every journey command finds the current journey; status names the earlier one.
        ran = await mineaction(cli_env, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        shown = table_rows(ran.stdout)
        assert shown["Workflow"] == f"{second_id}: running (RUNNING)", shown
        assert shown["Loan"] == status.loan_id, shown
        assert shown["Earlier journeys"].startswith(f"journey-{survivor_id}: "), shown
        assert "(COMPLETED)" in shown["Earlier journeys"], shown
        assert "(CLOSED_NOT_ELIGIBLE)" in shown["Earlier journeys"], shown
        ran = await mineaction(cli_env, "journey", "status", survivor_id, "--lang", "az")
        assert "Əvvəlki yol xəritələri" in ran.stdout, ran
        ran = await mineaction(
            cli_env, "journey", "decide", survivor_id, "--approve", "--member", "cm-02",
            "--ref", "CM-2026-101",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        assert f"loan {status.loan_id} approved by cm-02" in ran.stdout, ran
        await wait_for_stage(second, "GRACE")
        for _ in range(50):  # visibility is eventually consistent
            ran = await mineaction(cli_env, "journeys", "--stage", "grace", "--district", "saatli")
            if f"{survivor_id} (journey 2)" in ran.stdout:
                break
            await asyncio.sleep(0.2)
        assert f"{survivor_id} (journey 2)" in ran.stdout, ran
        # The operators' query for all of a survivor's journeys (docs/operators.md).
        query = (
            f'WorkflowId = "journey-{survivor_id}" '
            f'OR WorkflowId STARTS_WITH "journey-{survivor_id}."'
        )
        assert {wf.id async for wf in dev_client.list_workflows(query)} == {
            f"journey-{survivor_id}",
            second_id,
        }

        # The first journey's history is still there, and still says how it ended.
        assert (await first.describe()).status == WorkflowExecutionStatus.COMPLETED
        history = await first.fetch_history()
        assert len(history.events) > 3
        assert (await first.result()).stage == "CLOSED_NOT_ELIGIBLE"

        # Past the namespace's retention Temporal drops a closed journey: a survivor whose
        # first journey it no longer keeps, and whose second runs, is steered through the
        # second, and no journey 1 starts again beside it.
        other = f"srv-{uuid.uuid4().hex[:12]}"
        registered = await mineaction(cli_env, "register", str(write_intake(tmp_path, other)))
        assert registered.exit_code == 0, registered
        kept = await dev_client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(other, "cw-01", LoanRequest("fish_farming", 500_000, "fish")),
            id=journey_workflow_id(other, 2),
            task_queue=task_queue,
            search_attributes=initial_search_attributes(1),
        )
        query = f"WorkflowId = '{kept.id}'"
        for _ in range(50):  # the workflow list is eventually consistent
            if [wf async for wf in dev_client.list_workflows(query)]:
                break
            await asyncio.sleep(0.2)
        ran = await mineaction(cli_env, "journey", "status", other)
        assert table_rows(ran.stdout)["Workflow"] == f"{kept.id}: running (RUNNING)", ran
        twice = await mineaction(cli_env, *start[:2], other, *start[3:])
        assert f"the journey {kept.id} is already running" in one_error_line(twice), twice
        await kept.terminate("the test ends here")
        await second.terminate("the test ends once the loan is disbursed")


async def test_a_journey_started_to_follow_a_loan_already_being_repaid(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """A loan being repaid with no journey to follow it (made at lending's own desk, or
    reopened by a reversal after the survivor's journey ended): a journey is started to
    follow it, and takes it to its closure; anything else open, or a loan that is not
    the survivor's or not being repaid, is refused in one line."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    assert (
        await mineaction(cli_env, "register", str(write_intake(tmp_path, survivor_id)))
    ).exit_code == 0
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id, survivor_id=survivor_id)
    await cluster.lending.DisburseTranche(
        lending_pb.DisburseTrancheRequest(
            request_id=request_id(),
            loan_id=loan.loan_id,
            amount_minor=120_000,
            currency_code="AZN",
            kind=lending_pb.DISBURSEMENT_KIND_CASH,
            description="stock for the kiosk",
            disbursement_date=pdate(programme_today() - timedelta(days=10)),
            disbursed_by="lo-03",
        )
    )
    other = await approved_loan(cluster.lending, fund_id=fund_id)  # another's, not disbursed
    start = ["journey", "start", survivor_id, "--case-worker", "cw-01"]
    line = one_error_line(await mineaction(cli_env, *start, "--product", "small_trade",
                                           "--amount", "500"))  # fmt: skip
    assert f"already has loan {loan.loan_id} (ACTIVE) open in the ledger" in line, line
    assert "or to follow an ACTIVE one (--follow-loan)" in line, line
    for follow, says in (
        (other.loan_id, f"loan {other.loan_id} is not survivor {survivor_id}'s"),
        ("loan-nothing-like-it", "not found: loan loan-nothing-like-it does not exist"),
    ):
        line = one_error_line(await mineaction(cli_env, *start, "--follow-loan", follow))
        assert says in line, line
    refused = await mineaction(cli_env, *start, "--follow-loan", loan.loan_id, "--product", "x")
    assert refused.exit_code == 2 and "--follow-loan takes no --product" in refused.stderr

    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(cli_env, *start, "--follow-loan", loan.loan_id)
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith(
            f"started journey journey-{survivor_id} on task queue {task_queue}, "
            f"following loan {loan.loan_id}"
        ), ran
        handle = dev_client.get_workflow_handle_for(
            SurvivorJourneyWorkflow.run, journey_workflow_id(survivor_id)
        )
        status = await wait_until(
            handle, lambda s: s.loan_status == "ACTIVE", "read the followed loan"
        )
        assert status.stage in ("GRACE", "REPAYMENT"), status
        assert (status.loan_id, status.outstanding_minor) == (loan.loan_id, 120_000), status
        # Filterable as any journey from its first second: district and loan status too,
        # and its stage (in grace: paid out 10 days ago, first instalment not yet due).
        attributes = (await handle.describe()).typed_search_attributes
        assert attributes.get(sa.DISTRICT_CODE) == "saatli"
        assert status.stage == "GRACE", status
        assert attributes.get(sa.LOAN_STATUS) == "ACTIVE"
        ran = await mineaction(cli_env, "repay", loan.loan_id, "1200")
        assert ran.exit_code == 0, ran
        repaid = await wait_for_stage(handle, "REPAID")
        assert (repaid.loan_status, repaid.outstanding_minor) == ("CLOSED_OBLIGATIONS_MET", 0)
        await handle.terminate("the test ends once the followed loan is repaid")


async def test_a_loan_followed_again_is_not_followed_up_twice(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """A loan whose journey recorded its +6 and +12 month follow-ups, then reopened by a
    reversal and followed by a new journey: repaid again, it is not followed up again (the
    case worker was sent to the survivor twice, and eligibility dropped the answers)."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    registered = await mineaction(cli_env, "register", str(write_intake(tmp_path, survivor_id)))
    assert registered.exit_code == 0, registered
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id, survivor_id=survivor_id)
    await disburse(cluster.lending, loan.loan_id, 120_000, programme_today() - timedelta(days=40))
    closing = await cluster.lending.RecordRepayment(
        repayment(loan.loan_id, 120_000, programme_today() - timedelta(days=20))
    )
    survivor = await cluster.eligibility.GetSurvivor(
        eligibility_pb.GetSurvivorRequest(survivor_id=survivor_id)
    )
    repaid = await cluster.lending.GetLoan(snapshot_request(loan.loan_id, str(programme_today())))
    async with build_worker(dev_client, activities, task_queue):
        # The first journey, as one that took the loan to its end and both follow-ups.
        done = dataclasses.replace(
            following_loan(repaid, survivor_profile_of(survivor.survivor), programme_today()),
            follow_ups_recorded=[6, 12],
        )
        first = await dev_client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(survivor_id, "cw-01", resume=done),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
            search_attributes=initial_search_attributes(1),
        )
        ended = await first.result()
        assert (ended.stage, ended.follow_ups_recorded) == ("COMPLETED", [6, 12]), ended

        await cluster.lending.ReverseRepayment(
            reversal(loan.loan_id, closing.repayment.transaction_id)
        )
        start = ["journey", "start", survivor_id, "--case-worker", "cw-01"]
        ran = await mineaction(cli_env, *start, "--follow-loan", loan.loan_id)
        assert ran.exit_code == 0, ran
        second = dev_client.get_workflow_handle_for(
            SurvivorJourneyWorkflow.run, journey_workflow_id(survivor_id, 2)
        )
        status = await wait_until(second, lambda s: s.loan_status == "ACTIVE", "read the loan")
        assert status.follow_ups_recorded == [6, 12], status
        assert (await mineaction(cli_env, "repay", loan.loan_id, "1200")).exit_code == 0
        ended = await second.result()
        assert (ended.stage, ended.follow_up_due) == ("COMPLETED", 0), ended
    asked = await activities.outbox.db.pool.fetch(
        "SELECT dedupe_key FROM outbox WHERE kind = 'follow_up_due' AND dedupe_key LIKE $1",
        f"{second.id}/%",
    )
    assert asked == [], asked


async def test_journey_status_names_the_instalment_due_today(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """On an instalment's own due day the journey already looks to next month's; status
    named that one, so a case worker on the phone gave the borrower the wrong date."""
    fund_id = await open_fund(cluster, 1_000_000)
    today = programme_today()
    for months_back in (2, 1, 3):  # small_trade: one month of grace, then monthly
        survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
        registered = await mineaction(cli_env, "register", str(write_intake(tmp_path, survivor_id)))
        assert registered.exit_code == 0, registered
        loan = await approved_loan(cluster.lending, fund_id=fund_id, survivor_id=survivor_id)
        await disburse(cluster.lending, loan.loan_id, 120_000, add_months(today, -months_back))
        schedule = await cluster.lending.GetRepaymentSchedule(
            lending_pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id)
        )
        due = [i for i in schedule.schedule.instalments if from_proto_date(i.due_date) == today]
        if due:
            break
    assert due, "no instalment falls due today"
    start = ["journey", "start", survivor_id, "--case-worker", "cw-01"]
    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(cli_env, *start, "--follow-loan", loan.loan_id)
        assert ran.exit_code == 0, ran
        handle = dev_client.get_workflow_handle_for(
            SurvivorJourneyWorkflow.run, journey_workflow_id(survivor_id)
        )
        await wait_until(handle, lambda s: s.loan_status == "ACTIVE", "read the followed loan")
        ran = await mineaction(cli_env, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        shown = table_rows(ran.stdout)["Next instalment"]
        assert shown == f"{today.isoformat()}: {manat(due[0].principal_due_minor)} AZN", shown
        await handle.terminate("the test ends here")


async def test_arrears_and_journeys_by_district(
    cli_env: dict[str, str], dev_client: Client, task_queue: str
) -> None:
    """Three journeys (no worker: they only carry the attributes a journey sets), in real
    districts: in fuzuli one 45 days past due and one current, in barda one 45 days past
    due. The dev server is shared with other tests, so only this test's own journeys are
    looked for, present or absent, never a count."""
    handles = {}
    for name, district, days in (
        ("late", "fuzuli", 45),
        ("current", "fuzuli", 0),
        ("elsewhere", "barda", 45),
    ):
        survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
        handles[name] = await dev_client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(survivor_id=survivor_id, case_worker_id="cw-01"),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.STAGE, "REPAYMENT"),
                    SearchAttributePair(sa.DISTRICT_CODE, district),
                    SearchAttributePair(sa.LOAN_STATUS, "ACTIVE"),
                    SearchAttributePair(sa.DAYS_PAST_DUE, days),
                ]
            ),
        )
    ids = {name: handle.id.removeprefix("journey-") for name, handle in handles.items()}

    async def listed(*args: str) -> set[str]:
        ran = await mineaction(cli_env, *args)
        assert ran.exit_code == 0, ran
        return {name for name, survivor_id in ids.items() if survivor_id in ran.stdout}

    try:
        for _ in range(50):  # visibility is eventually consistent: until all three show
            if await listed("journeys", "--stage", "repayment") == set(ids):
                break
            await asyncio.sleep(0.2)
        assert await listed("arrears", "--min-days", "30") == {"late", "elsewhere"}
        assert await listed("arrears", "--min-days", "30", "--district", "fuzuli") == {"late"}
        assert await listed("arrears", "--min-days", "30", "--district", "barda") == {"elsewhere"}
        assert await listed("arrears", "--min-days", "46", "--district", "fuzuli") == set()
        assert await listed("journeys", "--district", "fuzuli") == {"late", "current"}
        assert await listed("journeys", "--district", "barda", "--loan-status", "active") == {
            "elsewhere"
        }
        # In Azerbaijani: the title, the headings and every code named, with the code kept.
        ran = await mineaction(cli_env, "arrears", "--min-days", "30", "--lang", "az")
        assert ran.exit_code == 0, ran
        assert "Ən azı 30 gün gecikmiş yol xəritələri" in ran.stdout, ran
        for shown in (
            "Sağ qalan", "Gecikmə günləri", "Mərhələ", "Rayon",
            coded("stage", "REPAYMENT", "az"), coded("loan_state", "ACTIVE", "az"),
            f"{known_districts()['fuzuli']['az']} (fuzuli)",
        ):  # fmt: skip
            assert shown in ran.stdout, (shown, ran.stdout)
        ran = await mineaction(cli_env, "journeys", "--district", "barda", "--lang", "az")
        assert "Davam edən yol xəritələri: Rayon Bərdə (barda)" in ran.stdout, ran
        assert coded("workflow_state", "RUNNING", "az") in ran.stdout, ran
        assert ids["elsewhere"] in ran.stdout and ids["late"] not in ran.stdout, ran
        # A district not on the programme's list is refused, not an empty list.
        for command in (["journeys"], ["arrears", "--min-days", "30"]):
            refused = await mineaction(cli_env, *command, "--district", "fuzulli")
            line = one_error_line(refused)
            assert refused.exit_code == 2, refused
            assert line.startswith(
                "error: --district: unknown district 'fuzulli'; the districts are aghdam, "
            ), line
            assert "fuzuli" in line and "barda" in line
    finally:
        for handle in handles.values():
            await handle.terminate("test over")


def test_every_stage_and_loan_state_has_a_label_in_both_languages() -> None:
    """journey status names every code it can show in English and Azerbaijani; a stage or
    loan state added without its labels is caught here."""
    codes = [("stage", stage.value) for stage in Stage] + [
        ("loan_state", name.removeprefix("LOAN_STATE_"))
        for name, value in lending_pb.LoanState.items()
        if value != lending_pb.LOAN_STATE_UNSPECIFIED
    ]
    codes += [("workflow_state", s.name) for s in WorkflowExecutionStatus]
    codes += [
        ("transaction_kind", name.removeprefix("LOAN_TRANSACTION_KIND_"))
        for name, value in lending_pb.LoanTransactionKind.items()
        if value != lending_pb.LOAN_TRANSACTION_KIND_UNSPECIFIED
    ]
    for kind, code in codes:
        en, az = coded(kind, code, "en"), coded(kind, code, "az")
        assert en.endswith(f" ({code})") and az.endswith(f" ({code})"), (kind, code)
        assert en != az, (kind, code)  # written in each language, not copied
    assert coded("stage", "GRACE", "az") == "Güzəşt müddəti (GRACE)"


async def test_bad_input_is_refused_before_any_call(
    cli_env: dict[str, str], cluster: Cluster, tmp_path: Path
) -> None:
    no_consent = tmp_path / "no-consent.yaml"
    no_consent.write_text(
        INTAKE.format(survivor_id="srv-no-consent").replace(
            "data_processing: true", "data_processing: false"
        )
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("survivor_id: [unclosed\n")
    bad_field = tmp_path / "bad-field.yaml"
    bad_field.write_text(
        INTAKE.format(survivor_id="srv-bad-field").replace("household_size: 5", "household_size: 0")
    )
    unknown_district = tmp_path / "unknown-district.yaml"
    unknown_district.write_text(
        INTAKE.format(survivor_id="srv-district").replace("saatli", "saatly")
    )
    impossible_birth = tmp_path / "impossible-birth.yaml"
    impossible_birth.write_text(
        INTAKE.format(survivor_id="srv-birth").replace("1981-05-14", "1981-02-30")
    )
    future_birth = tmp_path / "future-birth.yaml"
    future_birth.write_text(
        INTAKE.format(survivor_id="srv-future").replace("1981-05-14", "2099-05-14")
    )
    two_lines = tmp_path / "two-line-token"
    two_lines.write_text("first-part\nsecond-part\n")
    cases: list[tuple[list[str], str]] = [
        (["register", str(unknown_district)], "unknown intake district_code 'saatly'"),
        (["register", str(impossible_birth)], "date_of_birth '1981-02-30' is not a real"),
        (["register", str(future_birth)], "intake.date_of_birth: must not be in the future"),
        (["register", "--survivor-id", "srv-0001", "--district", "saatly"], "'saatly'"),
        (["export", "loans", "--district", "saatly"], "--district: unknown district 'saatly'"),
        (["--token-file", str(two_lines), "fund"], "one token on one line"),
        (["journey", "decide", "srv-0001", "--member", "cm-02", "--ref", "CM-1", "--approve",
          "--reject", "--reason", "why"], "say either --approve or --reject"),
        (["repay", "loan-0001", "-5"], "must be positive"),
        (["repay", "loan-0001", "12.345"], "more than 2 decimals"),
        (["repay", "loan-0001", "abc"], "not an amount"),
        (["repay", "loan-0001", "0"], "must be positive"),
        (["repay", "bad id!", "10"], "not a valid id"),
        (["repay", "loan-0001", "10", "--date", "2026-02-30"], "not a real calendar date"),
        (["repay", "loan-0001", "10", "--date", "26/11/2026"], "YYYY-MM-DD"),
        (["assess", "srv-0001", "--lang", "fr"], "unknown language"),
        (["assess", "srv-0001", "--reassess-under-latest"], "needs --reason"),
        (["assess", "srv-0001", "--reassess-under-latest", "--reason", " "], "needs --reason"),
        (["assess", "srv-0001", "--reason", "annual review"], "goes with --reassess-under"),
        (["register", str(tmp_path / "missing.yaml")], "does not exist"),
        (["register", str(broken)], "not valid YAML"),
        (["register", str(no_consent)], "consent"),
        (["register", str(bad_field)], "household_size"),
        (
            [
                "journey",
                "start",
                "srv-0001",
                "--case-worker",
                "cw-01",
                "--product",
                "fish_farming",
                "--amount",
                "1.001",
            ],
            "more than 2 decimals",
        ),
        (["portfolio", "--as-of", "2026-13-01"], "not a real calendar date"),
        (["portfolio", "--as-of", "2099-01-01"], "is after today"),
        (["export", "portfolio", "--as-of", "2099-01-01"], "its payments are not known"),
        (["export", "loans", "--state", "nonsense"], "unknown loan state"),
        (["export", "loans", "-o", str(tmp_path / "no" / "such" / "x.csv")], "does not exist"),
        (["--token-file", str(tmp_path / "no-token"), "fund"], "token file"),
        (["simulate", "--on-time", "0.5", "--late", "0.1", "--default", "0.1"], "add up to 1"),
        (["simulate", "--amount", "99999"], "outside the carpet_weaving"),
        (["simulate", "--default-after", "100"], "a carpet_weaving loan has at most"),
        (HARDSHIP, "say either --pause-days N"),
        ([*HARDSHIP, "--pause-days", "3", "--new-term-months", "6"], "say either"),
        ([*HARDSHIP, "--pause-days", "0"], "--pause-days must be from 1 to 365"),
        ([*HARDSHIP, "--pause-days", "366"], "--pause-days must be from 1 to 365"),
        ([*HARDSHIP, "--pause-days", "9", "--grace-months", "2"], "goes with a reschedule"),
        ([*HARDSHIP, "--new-term-months", "121"], "--new-term-months must be from 1 to 120"),
        ([*HARDSHIP, "--new-term-months", "5", "--grace-months", "5"],
         "--grace-months (5) must be fewer than --new-term-months (5)"),
        ([*HARDSHIP[:3], "--reason", " ", "--requested-by", "lo-01", "--pause-days", "9"],
         "--reason is blank"),
        ([*WRITE_OFF, "--confirm"], "--confirm takes no --reason or --withdraw"),
        (WRITE_OFF[:3], "say --reason to propose a write-off (or, with --withdraw"),
        ([*WRITE_OFF[:3], "--withdraw"], "say --reason to propose a write-off (or, with"),
        ([*WRITE_OFF, "--confirmed-by", "pm-01"], "--confirmed-by does not go with this step"),
        (["journey", "start", "srv-0001", "--case-worker", "cw-01", "--product", "small_trade",
          "--amount", "100", "--purpose", "   "], "--purpose is blank"),
        (["journey", "start", "srv-0001", "--case-worker", "cw-01", "--product", "small_trade",
          "--amount", "100", "--purpose", "\u200b"], "--purpose is blank"),
        ([*WRITE_OFF[:3], "--confirm", "--proposed-by", "lo-01"], "--proposed-by does not go"),
        ([*WRITE_OFF, "--proposal-by", "lo-01"], "--proposal-by does not go with this step"),
        # Invisible characters: a name that is another person to four eyes, a blank reason.
        (["journey", "start", "srv-0001", "--case-worker", "cw-01\u200b", "--product",
          "small_trade", "--amount", "100"], "holds a control or invisible formatting character"),
        ([*WRITE_OFF[:4], "\u200b\u00a0"], "--reason is blank"),
        ([*WRITE_OFF[:6], "lo-01\u200b"], "holds a control or invisible formatting character"),
        ([*FOLLOW_UP, "--income", "-5", "--working"], "--income must not be negative"),
        ([*FOLLOW_UP, "--income", "900"], "say --working or --not-working"),
        ([*FOLLOW_UP, "--income", "9.001", "--working"], "more than 2 decimals"),
        (["journey", "follow-up", "srv-0001", "--income", "900", "--working",
          "--family-members", "50", "--recorded-by", "cw-01"], "--family-members must be"),
        (["journey", "assist", "srv-0001", "wheelchair", "Deliver!", "--actor", "s-1"],
         "action 'Deliver!' is not valid"),
        (["journey", "assist", "srv-0001", "wheelchair", "deliver", "--actor", "s-1",
          "--data", "serial_number"], "use KEY=VALUE"),
        (["journey", "assist", "srv-0001", "Wheel Chair", "deliver", "--actor", "s-1"],
         "assistance type 'Wheel Chair' is not valid"),
        (["journey", "start", "srv-0001", "--case-worker", "cw-01", "--assistance",
          "wheelchair", "--data", "english_course:level=a1"], "which has no --assistance"),
        (["journeys", "--stage", "sleeping"], "unknown stage 'sleeping'"),
        (["journeys", "--loan-status", "late"], "unknown loan status 'late'"),
        (["journeys", "--district", "saatly"], "--district: unknown district 'saatly'; the "),
        (["arrears", "--district", "Saatli"], "--district: unknown district 'Saatli'; the "),
    ]  # fmt: skip
    before = await cluster.row_counts()
    # Addresses nobody listens on: a message about an unreachable service would mean the
    # CLI called before checking.
    dead = {
        **cli_env,
        "ELIGIBILITY_ADDRESS": f"127.0.0.1:{closed_port()}",
        "LENDING_ADDRESS": f"127.0.0.1:{closed_port()}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}",
    }
    for env in (cli_env, dead):
        for args, expected in cases:
            ran = await mineaction(env, *args)
            line = one_error_line(ran)
            assert ran.exit_code == 2, (args, ran)
            assert expected in line, (args, line)
    assert await cluster.row_counts() == before
    assert not (tmp_path / "no").exists()


async def test_services_and_temporal_down_give_one_clear_line(cli_env: dict[str, str]) -> None:
    lending = f"127.0.0.1:{closed_port()}"
    temporal = f"127.0.0.1:{closed_port()}"
    down = {**cli_env, "LENDING_ADDRESS": lending, "TEMPORAL_ADDRESS": temporal}
    started = time.monotonic()
    line = one_error_line(await mineaction(down, "fund"))
    assert line == (
        f"error: the lending service at {lending} is not reachable — "
        "is the cluster running (make run)?"
    )
    line = one_error_line(await mineaction(down, "repay", "loan-0001", "10.00"))
    assert f"the lending service at {lending} is not reachable" in line
    for args in (["journey", "status", "srv-0001"], ["arrears"]):
        line = one_error_line(await mineaction(down, *args))
        assert line == (
            f"error: Temporal at {temporal} is not reachable — is the cluster running (make run)?"
        )
    assert time.monotonic() - started < 30  # a clear answer, not a hang


async def test_a_missing_journey_and_an_unknown_survivor(cli_env: dict[str, str]) -> None:
    line = one_error_line(await mineaction(cli_env, "journey", "status", "srv-nobody-0001"))
    assert "journey-srv-nobody-0001 was not found" in line
    line = one_error_line(
        await mineaction(
            cli_env,
            "journey",
            "start",
            "srv-nobody-0001",
            "--case-worker",
            "cw-01",
            "--assistance",
            "wheelchair",
        )
    )
    assert line.startswith("error: not found:"), line
    line = one_error_line(await mineaction(cli_env, "repay", "loan-nobody-01", "10"))
    assert "unknown loan" in line or "not found" in line


def _rows_after(out: str, title: str) -> list[list[str]]:
    """The cells of each row of the table printed after `title`."""
    return [
        [c.strip() for c in row.strip().strip("│").split("│")]
        for row in out[out.index(title) :].splitlines()
        if row.startswith("│")
    ]


def _wrapped_rows_after(out: str, title: str) -> list[list[str]]:
    """As `_rows_after`, with a row that wrapped onto more lines joined back into one:
    its further lines start with an empty first cell."""
    rows: list[list[str]] = []
    for cells in _rows_after(out, title):
        if rows and not cells[0]:
            rows[-1] = [" ".join(filter(None, pair)) for pair in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def _statement_rows(out: str, title: str) -> list[tuple[str, str, str, str, str]]:
    """The statement table's rows as (date, transaction id, text, amount, outstanding): a
    row starts at a date, its id is on the next line, and its text wraps over lines."""
    rows: list[list[str]] = []
    for cells in _rows_after(out, title):
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[0]):
            rows.append([cells[0], "", cells[1], cells[2], cells[3]])
        else:
            rows[-1][1] = rows[-1][1] or cells[0]
            rows[-1][2] = " ".join(filter(None, (rows[-1][2], cells[1])))
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def test_a_loan_and_its_schedule_as_of_a_day(
    cli_env: dict[str, str], cluster: Cluster
) -> None:
    """A loan officer reads a loan without changing it: its figures and its schedule on
    a day, each instalment paid or late, in either language."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 15_000, date(2026, 5, 10)))
    before = await cluster.row_counts()
    ran = await mineaction(cli_env, "loan", loan.loan_id, "--as-of", "2026-07-15")
    assert ran.exit_code == 0, ran
    rows = table_rows(ran.stdout)
    assert rows["Loan status"] == "Active (ACTIVE)"
    assert rows["Repaid principal (AZN)"] == "150.00"
    assert rows["Outstanding (AZN)"] == "1,050.00"
    # 10,000 a month from 10 May: May paid, half of June; June 10 is 35 days late.
    assert rows["Days past due"] == "35" and rows["Bucket"] == "31-60 days"
    schedule = _rows_after(ran.stdout, "Repayment schedule, revision 1 (initial)")
    # 11 instalments of 109.09 (the first 109.10): the first paid, 40.90 on the second.
    assert [r[3:6] for r in schedule[:4]] == [
        ["109.10", "paid (PAID)", ""],
        ["40.90", "overdue (OVERDUE)", "35"],
        ["0.00", "overdue (OVERDUE)", "5"],
        ["0.00", "upcoming (UPCOMING)", ""],
    ], ran.stdout
    ran = await mineaction(cli_env, "loan", loan.loan_id, "--as-of", "2026-07-15", "--lang", "az")
    assert ran.exit_code == 0, ran
    assert table_rows(ran.stdout)["Qalıq borc (AZN)"] == "1.050,00"
    schedule = _rows_after(ran.stdout, "Ödəniş cədvəli")
    assert [r[3:5] for r in schedule[:2]] == [
        ["109,10", "ödənilib (PAID)"],
        ["40,90", "vaxtı keçib (OVERDUE)"],
    ], ran.stdout
    assert await cluster.row_counts() == before
    line = one_error_line(await mineaction(cli_env, "loan", "loan-nothing-like-it"))
    assert "loan-nothing-like-it" in line, line


async def test_a_payment_bounced_after_a_reschedule_is_said_to_be_owed_again(
    cli_env: dict[str, str], cluster: Cluster
) -> None:
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 15_000, date(2026, 5, 10)))
    await cluster.lending.RescheduleLoan(reschedule(loan.loan_id, date(2026, 8, 31), 12))
    txn = paid.repayment.transaction_id
    ran = await mineaction(cli_env, "reverse", loan.loan_id, txn, "--reason", "bounced")
    assert ran.exit_code == 0, ran
    assert "outstanding today 1,200.00 AZN" in ran.stdout, ran
    assert ran.stdout.splitlines()[1] == (
        "the loan was rescheduled after the payment, its schedule counting it as paid: "
        f"schedule revision 3 owes it again, spread over the instalments (`mineaction loan "
        f"{loan.loan_id}`)"
    ), ran.stdout


async def test_a_bounced_payment_found_in_the_statement_and_reversed_from_the_cli(
    cli_env: dict[str, str], cluster: Cluster
) -> None:
    """A cashier's transfer bounces: the loan officer finds it in the loan's statement,
    reverses it with a reason, and the statement then shows both, linked."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 15_000, date(2026, 5, 10)))
    txn = paid.repayment.transaction_id
    before = await cluster.row_counts()
    ran = await mineaction(cli_env, "transactions", loan.loan_id)
    assert ran.exit_code == 0, ran
    assert await cluster.row_counts() == before  # reads only
    rows = _statement_rows(ran.stdout, f"Statement of loan {loan.loan_id}")
    assert [r[:1] + r[2:] for r in rows] == [
        (
            "2026-03-10",
            "tranche paid out, by lo-03 tranche 1: cash for stock",
            "1,200.00",
            "1,200.00",
        ),
        ("2026-05-10", "repayment, by cashier-01 cash", "150.00", "1,050.00"),
    ], ran.stdout
    assert rows[1][1] == txn

    ran = await mineaction(
        cli_env, "reverse", loan.loan_id, txn, "--reason", "the transfer bounced"
    )
    assert ran.exit_code == 0, ran
    reversal_id = ran.stdout.split("(reversal ")[1].split(")")[0]
    assert ran.stdout.startswith(f"reversed {txn} on {loan.loan_id} (reversal txn-"), ran
    assert "outstanding today 1,200.00 AZN" in ran.stdout, ran
    # A loan made outside any journey (or whose journey has ended): nobody will remind.
    assert ran.stderr.startswith(f"note: no running journey follows {loan.loan_id}, "), ran
    assert f"journey start {loan.survivor_id} --follow-loan {loan.loan_id}`" in ran.stderr
    ran = await mineaction(cli_env, "transactions", loan.loan_id, "--lang", "az")
    assert ran.exit_code == 0, ran
    rows = _statement_rows(ran.stdout, f"Kredit üzrə çıxarış {loan.loan_id}")
    assert [r[2:] for r in rows[1:]] == [
        (
            f"ödəniş, qeyd edən: cashier-01 cash {reversal_id} ilə ləğv edilib",
            "150,00",
            "1.200,00",  # a bounced payment and its reversal leave the balance as it was
        ),
        (
            f"ödəniş ləğv edilib, qeyd edən: dev the transfer bounced {txn} əməliyyatını ləğv edir",
            "150,00",
            "1.200,00",
        ),
    ], ran.stdout
    assert rows[2][1] == reversal_id

    # The same statement as CSV, for an auditor's spreadsheet; a reason typed as a formula
    # stays text.
    await cluster.lending.RecordRepayment(repayment(loan.loan_id, 5_000, date(2026, 6, 10)))
    last = await statement(cluster.lending, loan.loan_id)
    await cluster.lending.ReverseRepayment(
        reversal(loan.loan_id, last[-1].transaction_id, "=counted twice")
    )
    ran = await mineaction(cli_env, "export", "transactions", loan.loan_id)
    assert ran.exit_code == 0, ran
    exported = list(csv.DictReader(io.StringIO(ran.stdout)))
    assert [
        (r["value_date"], r["kind"], r["amount_azn"], r["outstanding_after_azn"], r["memo"])
        for r in exported
    ] == [
        ("2026-03-10", "DISBURSEMENT", "1200.00", "1200.00", "tranche 1: cash for stock"),
        ("2026-05-10", "REPAYMENT", "150.00", "1200.00", "cash"),
        ("2026-05-10", "REPAYMENT_REVERSAL", "150.00", "1200.00", "the transfer bounced"),
        ("2026-06-10", "REPAYMENT", "50.00", "1200.00", "cash"),
        ("2026-06-10", "REPAYMENT_REVERSAL", "50.00", "1200.00", "'=counted twice"),
    ], ran.stdout
    assert exported[1]["reversed_by_transaction_id"] == exported[2]["transaction_id"]
    assert exported[2]["reverses_transaction_id"] == txn
    assert exported[1]["principal_change_minor"] == "-15000"

    line = one_error_line(
        await mineaction(cli_env, "reverse", loan.loan_id, txn, "--reason", "again")
    )
    assert f"was already reversed by {reversal_id}" in line, line
    line = one_error_line(
        await mineaction(cli_env, "reverse", loan.loan_id, "txn-nothing", "--reason", "typo")
    )
    assert "no repayment or recovery 'txn-nothing' on this loan" in line, line
    refused = await mineaction(cli_env, "reverse", loan.loan_id, txn, "--reason", " ")
    assert refused.exit_code == 2 and "--reason" in one_error_line(refused)
    line = one_error_line(await mineaction(cli_env, "transactions", "loan-nothing-like-it"))
    assert "loan-nothing-like-it" in line, line
    approved = await approved_loan(cluster.lending, fund_id=await open_fund(cluster, 1_000_000))
    ran = await mineaction(cli_env, "transactions", approved.loan_id)
    assert ran.exit_code == 0 and ran.stdout == (
        f"loan {approved.loan_id} has no transactions yet: nothing has been paid out\n"
    ), ran


async def test_a_payment_reversed_after_the_write_off_from_the_cli(
    cli_env: dict[str, str], cluster: Cluster
) -> None:
    lending = cluster.lending
    loan = await approved_loan(lending, fund_id=await open_fund(cluster, 1_000_000))
    await disburse(lending, loan.loan_id, loan.principal_minor, date(2026, 3, 10))
    paid = await lending.RecordRepayment(repayment(loan.loan_id, 20_000, date(2026, 5, 10)))
    await write_off(lending, loan.loan_id, date(2026, 9, 1))
    txn = paid.repayment.transaction_id
    ran = await mineaction(cli_env, "reverse", loan.loan_id, txn, "--reason", "it bounced")
    assert ran.exit_code == 0, ran
    first, second = ran.stdout.strip().splitlines()
    assert "outstanding today 0.00 AZN" in first, first
    assert second.startswith(
        "the loan was written off since: what the payment had repaid is written off with it"
    ), second
    assert second.endswith(f"written off in all {manat(loan.principal_minor)} AZN"), second
    assert "note:" not in ran.stderr  # a written-off loan needs no journey


async def test_a_write_off_proposal_withdrawn_from_the_cli(
    cli_env: dict[str, str], cluster: Cluster
) -> None:
    """The operator's way out of a proposal made by mistake: withdrawn with a reason, the
    loan still ACTIVE; nothing left to withdraw, or no reason, says so in one line."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    # A back-dated payment's figures are the loan's on that date, and the line says so.
    ran = await mineaction(cli_env, "repay", loan.loan_id, "10", "--date", "2026-05-10")
    assert ran.exit_code == 0 and ran.stdout.rstrip().endswith("(as of 2026-05-10)"), ran
    ran = await mineaction(cli_env, "repay", loan.loan_id, "10")
    assert ran.exit_code == 0 and "(as of" not in ran.stdout and not ran.stderr, ran
    # Without --date, the day is today in Baku, as the services count days (from 20:00
    # UTC it is already tomorrow there).
    paid_on = await lending_db(cluster).pool.fetchval(
        "SELECT max(value_date) FROM ledger_transactions WHERE loan_id = $1 AND kind = 'REPAYMENT'",
        loan.loan_id,
    )
    assert paid_on == programme_today()
    # Temporal down: the money is recorded all the same; the journey could not be told.
    temporal_down = {**cli_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}"}
    ran = await mineaction(temporal_down, "repay", loan.loan_id, "10")
    assert ran.exit_code == 0 and "outstanding 1,170.00 AZN" in ran.stdout, ran
    assert ran.stderr.startswith("note: the repayment is recorded; the survivor's journey was")
    assert "hears of it from the worker's loan news relay" in ran.stderr, ran
    withdraw = ["withdraw-write-off", loan.loan_id, "--reason", "the borrower is back"]
    line = one_error_line(await mineaction(cli_env, *withdraw))
    assert line == f"error: refused: loan {loan.loan_id} has no write-off proposal to withdraw"

    await propose_write_off(
        cluster.lending, loan.loan_id, date(2027, 6, 30), reason="no contact for a year"
    )
    ran = await mineaction(cli_env, *withdraw, "--by", "pm-02")
    assert ran.exit_code == 0, ran
    assert ran.stdout.strip() == (
        f"withdrawn by pm-02: the write-off of {loan.loan_id} proposed by lo-07 "
        "(no contact for a year); the loan stays ACTIVE"
    )
    still = (await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan.loan_id))).loan
    assert still.state == lending_pb.LOAN_STATE_ACTIVE and still.written_off_minor == 0

    refused = await mineaction(cli_env, "withdraw-write-off", loan.loan_id, "--reason", " ")
    assert refused.exit_code == 2 and "--reason" in one_error_line(refused)


@pytest.mark.timeout(120)
async def test_a_write_off_proposed_with_lending_is_confirmed_from_the_journey(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """A write-off proposed straight with lending (a committee's own tool), not through the
    journey: `journey write-off --confirm` finds it there, four eyes checked, and the
    journey follows the ledger to WRITTEN_OFF. It said no write-off was proposed."""
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)
        survivor_id = (await status_of(handle)).survivor_id
        confirm = ["journey", "write-off", survivor_id, "--confirm", "--confirmed-by"]
        line = one_error_line(await mineaction(cli_env, *confirm, "pm-01"))
        assert line.startswith(f"error: no write-off is proposed for {handle.id}'s loan"), line
        await propose_write_off(
            cluster.lending,
            loan_id,
            programme_today(),
            reason="the pond flooded; no contact for a year",
        )
        # `journey status` shows it, read from lending with the loan's figures.
        shown = table_rows((await mineaction(cli_env, "journey", "status", survivor_id)).stdout)
        assert shown["Write-off proposed"] == "lo-07: the pond flooded; no contact for a year"
        line = one_error_line(await mineaction(cli_env, *confirm, "LO-07"))
        assert line == "error: four eyes: lo-07 proposed this write-off; someone else confirms it"
        # Pinned to the proposal the confirmer saw: another one is not confirmed.
        line = one_error_line(
            await mineaction(cli_env, *confirm, "pm-01", "--proposal-by", "lo-01")
        )
        assert line.startswith("error: the write-off proposed now is lo-07's (the pond"), line
        # The same person's proposal, for another reason than the confirmer saw.
        pinned = ["pm-01", "--proposal-by", "LO-07", "--proposal-reason"]
        line = one_error_line(await mineaction(cli_env, *confirm, *pinned, "the stall burned"))
        assert line.endswith("not LO-07's (the stall burned): read `mineaction journey status "
                             f"{survivor_id}` again"), line  # fmt: skip
        line = one_error_line(await mineaction(cli_env, *confirm, *pinned[:1], *pinned[3:], "x"))
        assert line == "error: --proposal-reason goes with --proposal-by: name whose proposal"
        ran = await mineaction(
            cli_env, *confirm, *pinned, " the pond flooded; no contact for a year "
        )
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith(
            "written off: proposed by lo-07 with lending (the pond flooded; no contact for a "
            "year), confirmed by pm-01;"
        ), ran
        status = await wait_for_stage(handle, "WRITTEN_OFF")
        assert status.loan_status == "CLOSED_WRITTEN_OFF"
        loan = (await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))).loan
        assert loan.written_off_minor == 500_000 and loan.outstanding_principal_minor == 0


@pytest.mark.timeout(120)
async def test_a_write_off_proposed_with_lending_is_withdrawn_from_the_journey(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """`journey write-off --withdraw` withdraws a proposal made straight with lending that
    the journey has not read yet (it said no write-off was proposed)."""
    async with build_worker(dev_client, activities, task_queue):
        handle, loan_id = await approved_journey(cluster, dev_client, task_queue)
        survivor_id = (await status_of(handle)).survivor_id
        await propose_write_off(
            cluster.lending, loan_id, programme_today(), reason="proposed on the wrong loan"
        )
        ran = await mineaction(
            cli_env, "journey", "write-off", survivor_id, "--withdraw", "--reason", "wrong loan",
            "--withdrawn-by", "pm-01",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith("write-off proposal withdrawn by pm-01 (wrong loan)"), ran
        got = await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))
        assert not got.HasField("write_off_proposal")
        assert got.loan.state == lending_pb.LOAN_STATE_ACTIVE


@pytest.mark.timeout(120)
async def test_an_application_withdrawn_from_the_cli_closes_the_journey_as_withdrawn(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """The survivor no longer wants the loan: the case worker withdraws the application
    the committee has not decided (there was no command for it; only the API)."""
    async with build_worker(dev_client, activities, task_queue):
        handle = await start_journey(cluster, dev_client, task_queue)
        status = await wait_for_stage(handle, "COMMITTEE_REVIEW")
        withdraw = ["journey", "withdraw", status.survivor_id, "--withdrawn-by", "cw-01"]
        refused = await mineaction(cli_env, *withdraw, "--reason", " ")
        assert refused.exit_code == 2 and "--reason" in one_error_line(refused), refused
        ran = await mineaction(cli_env, *withdraw, "--reason", "found work at the hospital")
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith(
            f"application {status.loan_id} withdrawn by cw-01 (found work at the hospital)"
        ), ran
        ended = await handle.result()  # no assistance items to follow: it ends at once
        assert (ended.stage, ended.loan_status) == ("CLOSED_WITHDRAWN", "WITHDRAWN")
        # Nothing left to withdraw: said so, nothing sent.
        line = one_error_line(await mineaction(cli_env, *withdraw, "--reason", "again"))
        assert "has ended" in line, line


async def test_tokens_are_presented_and_a_bad_one_is_refused(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad-token"
    bad.write_text("not-a-jwt\n")
    line = one_error_line(await mineaction(cli_env, "--token-file", str(bad), "fund"))
    assert "refused the call as unauthenticated" in line and "MINEACTION_TOKEN" in line
    ran = await mineaction({**cli_env, "MINEACTION_TOKEN": "not-a-jwt"}, "fund")
    assert "unauthenticated" in one_error_line(ran)
    # No token anywhere (run outside the cluster's folder): said before any call, with
    # where the dev-token was looked for.
    nowhere = tmp_path / "elsewhere"
    ran = await mineaction({**cli_env, "MINEACTION_STATE_DIR": str(nowhere)}, "fund")
    line = one_error_line(ran)
    assert ran.exit_code == 2 and line.startswith("error: no token: set MINEACTION_TOKEN"), ran
    assert str(nowhere / "dev-token") in line
    # A token variable that holds only spaces (a token that failed to load) is refused,
    # not taken for "use the dev-token".
    ran = await mineaction({**cli_env, "MINEACTION_TOKEN": "   "}, "fund")
    assert ran.exit_code == 2, ran
    assert one_error_line(ran) == (
        "error: MINEACTION_TOKEN is set but blank: set it to a token, or unset it for the dev-token"
    )


@pytest.mark.timeout(120)
async def test_simulate_writes_the_chart_and_consistent_ledger_figures(
    cli_env: dict[str, str], postgres_server_url: str, tmp_path: Path
) -> None:
    chart = tmp_path / "fund.png"
    env = {**cli_env, "DATABASE_URL": postgres_server_url}
    started = time.monotonic()
    ran = await mineaction(
        env, "simulate", "--survivors", "4", "--months", "14", "--amount", "2000",
        "--on-time", "0.5", "--late", "0.25", "--default", "0.25", "--chart", str(chart),
    )  # fmt: skip
    assert ran.exit_code == 0, ran
    assert time.monotonic() - started < 60
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = ran.stdout
    assert "Simulation assumptions" in out and "50% pay every instalment" in out
    # The month table: available + outstanding is the capital every month (no write-offs
    # are modelled), and the loan count never falls.
    rows = re.findall(
        r"│\s+(\d+) │ (\d{4}-\d\d-\d\d) │\s+(\d+) │\s+(\d+) │\s+([\d,.]+) │\s+([\d,.]+) │"
        r"\s+([\d,.]+) │\s+([\d,.]+) │\s+([\d,.]+) │\s+([\d.]+) │",
        out,
    )
    assert [int(r[0]) for r in rows] == list(range(15)), out

    def minor(text: str) -> int:
        return int(text.replace(",", "").replace(".", ""))

    for _, _, loans, _, disbursed, repaid, available, outstanding, *_ in rows:
        assert minor(available) + minor(outstanding) == 8_000_00
        assert minor(disbursed) - minor(repaid) == minor(outstanding)
        assert minor(disbursed) == int(loans) * 2_000_00
    assert int(rows[0][2]) == 4 and minor(rows[0][6]) == 0
    assert "✓" in out and "more financed by repayments" in out


@pytest.mark.timeout(120)
async def test_steering_a_journey_from_the_cli(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """Hardship, a provider's step and a write-off through the journey's own updates;
    the journey's refusals (its validators, the services' answers) as one line."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    assert (
        await mineaction(cli_env, "register", str(write_intake(tmp_path, survivor_id)))
    ).exit_code == 0
    async with build_worker(dev_client, activities, task_queue):
        # The item's data is checked against the catalogue's schema before anything starts.
        start = [
            "journey", "start", survivor_id, "--case-worker", "cw-01",
            "--product", "fish_farming", "--amount", "5000",
            "--assistance", f"wheelchair:baku-mobility-aids:{pool}",
        ]  # fmt: skip
        line = one_error_line(await mineaction(cli_env, *start))
        assert "'seat_width_cm' is a required property" in line, line
        # So is the loan, against lending's products: exit 2, and nothing starts.
        for product, amount, expected in (
            ("camel_breeding", "5000", "unknown loan product 'camel_breeding'; the products are "),
            ("fish_farming", "999999", "--amount for fish_farming must be from "),
        ):
            loan_start = [*start[:5], "--product", product, "--amount", amount]
            refused = await mineaction(cli_env, *loan_start)
            assert refused.exit_code == 2 and expected in one_error_line(refused), refused
        # And the provider and pool an item names, against the providers' own pools.
        data = ["--data", "wheelchair:seat_width_cm=44"]
        for item, expected in (
            ("wheelchair:no-such-provider", "unknown provider 'no-such-provider'"),
            ("wheelchair:baku-mobility-aids:stock-nope",
             "unknown wheelchair capacity pool 'stock-nope' at provider 'baku-mobility-aids'"),
            ("wheelchair:naftalan-health-resort", "no wheelchair capacity pool at provider"),
        ):  # fmt: skip
            refused = await mineaction(cli_env, *start[:9], "--assistance", item, *data)
            assert refused.exit_code == 2 and expected in one_error_line(refused), refused
        with pytest.raises(RPCError, match="not found"):  # no journey was started
            await dev_client.get_workflow_handle(journey_workflow_id(survivor_id)).describe()
        ran = await mineaction(cli_env, *start, "--data", "wheelchair:seat_width_cm=44")
        assert ran.exit_code == 0, ran
        handle = dev_client.get_workflow_handle(journey_workflow_id(survivor_id))
        await wait_for_stage(handle, "COMMITTEE_REVIEW")

        # Hardship before the loan is repaid: the journey's validator says why not.
        hardship = [
            "journey", "hardship", survivor_id, "--reason", "hospitalised",
            "--requested-by", "lo-01",
        ]  # fmt: skip
        refused = await mineaction(cli_env, *hardship, "--pause-days", "60")
        line = one_error_line(refused)
        assert ran.exit_code == 0 and refused.exit_code == 1
        assert line == (
            "error: the journey refused it: hardship applies to a loan being repaid "
            "(stage is COMMITTEE_REVIEW)"
        ), line

        ran = await mineaction(
            cli_env, "journey", "decide", survivor_id, "--approve", "--member", "cm-02",
            "--ref", "CM-2026-020",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        await wait_for_stage(handle, "GRACE")

        # The journeys' search attributes: this one is in GRACE, in saatli.
        ran = Ran(1, "", "")
        for _ in range(50):  # visibility is eventually consistent
            ran = await mineaction(cli_env, "journeys", "--stage", "grace", "--district", "saatli")
            if survivor_id in ran.stdout:
                break
            await asyncio.sleep(0.2)
        assert ran.exit_code == 0 and survivor_id in ran.stdout, ran
        assert "GRACE" in ran.stdout and "ACTIVE" in ran.stdout
        ran = await mineaction(cli_env, "journeys", "--stage", "COMMITTEE_REVIEW")
        assert ran.exit_code == 0 and survivor_id not in ran.stdout, ran

        ran = await mineaction(cli_env, *hardship, "--pause-days", "60")
        assert ran.exit_code == 0, ran
        assert "delinquency paused for 60 days, today included (asked by lo-01)" in ran.stdout
        # Sixty days, the last one counted in the pause as lending counts it.
        pause = await lending_db(cluster).pool.fetchrow(
            "SELECT start_date, end_date FROM delinquency_pauses WHERE loan_id = $1",
            (await status_of(handle)).loan_id,
        )
        assert pause is not None and pause["start_date"] == programme_today()
        assert (pause["end_date"] - pause["start_date"]).days + 1 == 60, pause
        ran = await mineaction(cli_env, *hardship, "--new-term-months", "18", "--grace-months", "3")
        assert ran.exit_code == 0, ran
        assert (
            "rescheduled from today over at least 18 months, "
            "at least the first 3 without instalments" in ran.stdout
        )

        # A provider's step: the item's advance update. An action the type does not have
        # is refused before sending (exit 2); one its lifecycle does not allow now is the
        # service's refusal, in one line.
        refused = await mineaction(
            cli_env, "journey", "assist", survivor_id, "wheelchair", "fly", "--actor", "s-01"
        )
        assert refused.exit_code == 2
        assert "wheelchair has no action 'fly': use one of allocate_from_stock, cancel" in (
            one_error_line(refused)
        )
        ran = await mineaction(
            cli_env, "journey", "assist", survivor_id, "wheelchair", "allocate_from_stock",
            "--actor", "supplier-01",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        assert "now allocated" in ran.stdout
        refused = await mineaction(
            cli_env, "journey", "assist", survivor_id, "wheelchair", "receive_procured",
            "--actor", "supplier-01",
        )  # fmt: skip
        line = one_error_line(refused)
        assert refused.exit_code == 1
        assert line.startswith("error: the wheelchair item refused it:"), line
        assert "cannot receive_procured" in line and "allowed: " in line
        # A case worker records a provider's step by the provider's id, or their own, never
        # in another staff member's name (the service binds it the same way).
        cw_01 = {**cli_env, "MINEACTION_TOKEN": cluster.token_for("case_worker", subject="cw-01")}
        refused = await mineaction(
            cw_01, "journey", "assist", survivor_id, "wheelchair", "receive_procured",
            "--actor", "pm-01",
        )  # fmt: skip
        assert one_error_line(refused) == (
            "error: you (cw-01) cannot act as pm-01: staff act as themselves"
        ), refused
        refused = await mineaction(
            cw_01, "journey", "assist", survivor_id, "wheelchair", "receive_procured",
            "--actor", "baku-mobility-aids",
        )  # fmt: skip
        assert one_error_line(refused).startswith("error: the wheelchair item refused it:")

        ran = await mineaction(cli_env, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        status = await handle.query(SurvivorJourneyWorkflow.status)
        assert f"{status.assessment_id} (rule set v{status.rule_set_version})" in ran.stdout
        assert status.assistance[0].assistance_id in ran.stdout
        assert "Wheelchair (wheelchair): Allocated [" in ran.stdout

        # No follow-up is due while the loan is being repaid.
        refused = await mineaction(
            cli_env, "journey", "follow-up", survivor_id, "--income", "900", "--working",
            "--family-members", "4", "--recorded-by", "cw-01",
        )  # fmt: skip
        assert one_error_line(refused) == (
            "error: the journey refused it: no follow-up is due (stage is GRACE)"
        )

        # Four eyes: one person proposes, another confirms, each a command of their own.
        write_off = [
            "journey", "write-off", survivor_id, "--reason", "the business has closed",
            "--proposed-by", "lo-01",
        ]  # fmt: skip
        confirm = ["journey", "write-off", survivor_id, "--confirm", "--confirmed-by"]
        line = one_error_line(await mineaction(cli_env, *confirm, "pm-01"))
        assert line.startswith(f"error: no write-off is proposed for {handle.id}'s loan"), line
        ran = await mineaction(cli_env, *write_off)
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith(
            "write-off proposed by lo-01 (the business has closed); someone else confirms it"
        ), ran
        shown = table_rows((await mineaction(cli_env, "journey", "status", survivor_id)).stdout)
        assert shown["Write-off proposed"] == "lo-01: the business has closed", shown
        # Proposed by mistake: withdrawn with a reason, then proposed again.
        withdraw = ["journey", "write-off", survivor_id, "--withdraw", "--reason", "too soon"]
        ran = await mineaction(cli_env, *withdraw, "--withdrawn-by", "lo-01")
        assert ran.stdout.strip() == (
            "write-off proposal withdrawn by lo-01 (too soon); the loan stays ACTIVE"
        ), ran
        shown = table_rows((await mineaction(cli_env, "journey", "status", survivor_id)).stdout)
        assert "Write-off proposed" not in shown, shown
        line = one_error_line(await mineaction(cli_env, *withdraw, "--withdrawn-by", "lo-01"))
        assert line.startswith(f"error: no write-off is proposed for {handle.id}'s loan"), line
        assert (await mineaction(cli_env, *write_off)).exit_code == 0
        line = one_error_line(await mineaction(cli_env, *confirm, "LO-01"))
        assert line == "error: four eyes: lo-01 proposed this write-off; someone else confirms it"
        # The journey holds a confirmation to the proposal, whoever sends it.
        with pytest.raises(WorkflowUpdateFailedError) as other:
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_write_off,
                WriteOffDecision("the business has closed", "lo-09", "pm-01"),
            )
        assert "the write-off proposed by lo-01 (the business has closed) is the one" in str(
            other.value.cause
        )
        ran = await mineaction(cli_env, *confirm, "pm-01")
        assert ran.exit_code == 0, ran
        assert "written off: proposed by lo-01, confirmed by pm-01" in ran.stdout
        assert "CLOSED_WRITTEN_OFF" in ran.stdout
        # The journey follows its wheelchair to the end before it closes; cancelled here.
        await wait_for_stage(handle, "ASSISTANCE_ONLY")
        ran = await mineaction(cli_env, "journey", "assist", survivor_id, "wheelchair", "cancel")
        assert ran.exit_code == 0, ran
        await wait_for_stage(handle, "WRITTEN_OFF")
        decide = ["journey", "decide", survivor_id, "--member", "cm-02", "--ref", "CM-9"]
        refresh = ["journey", "refresh", survivor_id]
        for again in (write_off, [*decide, "--approve"], [*confirm, "pm-02"], refresh):
            line = one_error_line(await mineaction(cli_env, *again))
            # The written-off journey has ended: said so, not "not found".
            assert line == (
                f"error: the journey {handle.id} has ended (completed, stage WRITTEN_OFF): "
                "it takes no more decisions"
            ), line
        loan = (
            await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=status.loan_id))
        ).loan
        assert loan.state == lending_pb.LOAN_STATE_CLOSED_WRITTEN_OFF
        assert loan.written_off_minor == 500_000
        ran = await mineaction(cli_env, "export", "loans", "--state", "closed_written_off")
        rows = {r["loan_id"]: r for r in csv.DictReader(io.StringIO(ran.stdout))}
        assert rows[status.loan_id]["written_off_azn"] == "5000.00"
        assert rows[status.loan_id]["bucket"] == ""  # not UNSPECIFIED: no bucket once closed


@pytest.mark.timeout(120)
async def test_journey_status_reads_the_assistance_service_now(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """A wheelchair item waits behind another survivor's for the pool's only wheelchair;
    that one is cancelled and the service promotes this survivor off the waitlist. The
    journey hears of it only at its next step, but `journey status` reads the service and
    shows the item promoted at once, in the chosen language; without the service (or a
    token), the journey's own view, said so. `journey assist … refresh` has the item read
    its record, and the journey then has it promoted too."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    first_in_line = (
        await cluster.assistance.RecordNeed(
            need_request(await register_survivor(cluster.eligibility))
        )
    ).need  # fmt: skip
    holder = (
        await cluster.assistance.RequestAssistance(
            assistance_pb.RequestAssistanceRequest(
                request_id=request_id(), need_id=first_in_line.need_id,
                provider_id="baku-mobility-aids", capacity_pool_id=pool,
                data=struct_of(seat_width_cm=42), referral_consent=True, requested_by="cw-01",
            )
        )
    ).assistance  # fmt: skip
    assert holder.waitlist_position == 0, holder
    assert (
        await mineaction(cli_env, "register", str(write_intake(tmp_path, survivor_id)))
    ).exit_code == 0
    handle = dev_client.get_workflow_handle(journey_workflow_id(survivor_id))
    start = (
        "journey", "start", survivor_id, "--case-worker", "cw-01",
        "--assistance", f"wheelchair:baku-mobility-aids:{pool}",
        "--data", "wheelchair:seat_width_cm=44",
    )  # fmt: skip
    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(cli_env, *start)
        assert ran.exit_code == 0, ran
        deadline = time.monotonic() + 15
        while True:  # until the journey has heard the item was waitlisted
            status = await handle.query(SurvivorJourneyWorkflow.status)
            if status.assistance and status.assistance[0].assistance_id:
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        item = status.assistance[0]
        assert (item.state, item.waitlist_position) == ("waitlisted", 1), item
        ran = await mineaction(cli_env, "journey", "status", survivor_id, "--lang", "az")
        assert ran.exit_code == 0, ran
        assert (
            f"Əlil arabası (wheelchair): Gözləmə siyahısında (növbədə №1) [{item.assistance_id}]"
            in ran.stdout
        ), ran

        await cluster.assistance.AdvanceAssistance(
            assistance_pb.AdvanceAssistanceRequest(
                request_id=request_id(), assistance_id=holder.assistance_id, action="cancel",
                actor="cw-01",
            )
        )  # fmt: skip
        # The journey itself still has the item waitlisted: it reads at its own steps.
        still = (await handle.query(SurvivorJourneyWorkflow.status)).assistance[0]
        assert (still.state, still.waitlist_position) == ("waitlisted", 1), still
        ran = await mineaction(cli_env, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        assert (
            f"Wheelchair (wheelchair): Fitting assessment [{item.assistance_id}]" in ran.stdout
        ), ran
        assert "waitlist" not in ran.stdout.lower()
        ran = await mineaction(cli_env, "journey", "status", survivor_id, "--lang", "az")
        assert ran.exit_code == 0, ran
        assert "Əlil arabası (wheelchair): Uyğunluq qiymətləndirməsi [" in ran.stdout, ran
        assert "Yalnız yardım, kreditsiz (ASSISTANCE_ONLY)" in ran.stdout, ran

        # The assistance service down, or no token: the journey's own view, said so first
        # in the user's language, and still exit 0.
        down = {**cli_env, "ASSISTANCE_ADDRESS": f"127.0.0.1:{closed_port()}"}
        ran = await mineaction(down, "journey", "status", survivor_id, "--lang", "az")
        assert ran.exit_code == 0, ran
        first = ran.stdout.splitlines()[0]
        assert first.startswith("Yardım yol xəritəsinin son bildiyi kimi: "), ran
        assert "not reachable" in first
        assert f"wheelchair: waitlisted (növbədə №1) [{item.assistance_id}]" in ran.stdout
        no_token = {**cli_env, "MINEACTION_STATE_DIR": str(tmp_path / "elsewhere")}
        ran = await mineaction(no_token, "journey", "status", survivor_id)
        assert ran.exit_code == 0, ran
        assert ran.stdout.startswith("Assistance as the journey last heard of it: no token"), ran
        assert "wheelchair: waitlisted (waitlist #1)" in ran.stdout
        # Nor the cluster's keyring there: refused in one line, and no keyring of its own
        # (one made there started journeys that no worker could read).
        no_keyring = {**no_token, "PAYLOAD_KEYS_FILE": None}
        ran = await mineaction(no_keyring, "journey", "status", survivor_id)
        assert ran.exit_code == 2, ran
        assert one_error_line(ran).startswith("error: no payload keyring at "), ran
        assert not (tmp_path / "elsewhere" / "payload-keys.json").exists()
        # Staff make the item read its record: the journey itself now has it promoted.
        ran = await mineaction(
            cli_env, "journey", "assist", survivor_id, "wheelchair", "refresh", "--actor", "cw-01"
        )
        assert ran.exit_code == 0, ran
        assert "wheelchair of" in ran.stdout and "read its record again by cw-01" in ran.stdout
        deadline = time.monotonic() + 15
        while True:  # until the journey has heard it
            heard = (await handle.query(SurvivorJourneyWorkflow.status)).assistance[0]
            if heard.state != "waitlisted":
                break
            assert time.monotonic() < deadline, heard
            await asyncio.sleep(0.05)
        assert (heard.state, heard.waitlist_position) == ("fitting_assessment", 0), heard
        refused = await mineaction(
            cli_env, "journey", "assist", survivor_id, "wheelchair", "refresh", "--actor", "cw-01",
            "--data", "a=1",
        )  # fmt: skip
        assert one_error_line(refused) == "error: refresh takes no --data"
        assert refused.exit_code == 2

        # The journey is ended by hand while its wheelchair item goes on. A new journey
        # would record a second need and reserve a second wheelchair: refused, naming the
        # item; the item is still reached, and cancelled, from the CLI.
        await handle.terminate("ended by an operator")
        again = await mineaction(cli_env, *start)
        assert again.exit_code == 1, again
        assert (
            f"already has wheelchair {item.assistance_id} (fitting_assessment) under way"
            in one_error_line(again)
        ), again
        with pytest.raises(RPCError):  # nothing was started
            await dev_client.get_workflow_handle(journey_workflow_id(survivor_id, 2)).describe()
        ran = await mineaction(
            cli_env, "journey", "assist", survivor_id, "wheelchair", "cancel", "--actor", "cw-01"
        )
        assert ran.exit_code == 0, ran
        assert "now Cancelled" in ran.stdout or "cancelled" in ran.stdout.lower(), ran
        ended = await cluster.assistance.GetAssistance(
            assistance_pb.GetAssistanceRequest(assistance_id=item.assistance_id)
        )
        assert ended.assistance.state == "cancelled"


@pytest.mark.timeout(120)
async def test_impact_follow_up_from_the_cli(
    cli_env: dict[str, str],
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """Repaid in full, the journey asks for its +6 month follow-up (time skipped); the
    operator answers it from the CLI, and a second answer is refused."""
    env = {
        **cli_env,
        "TEMPORAL_ADDRESS": time_skipping_env.client.service_client.config.target_host,
    }
    client = time_skipping_env.client
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    assert (
        await mineaction(env, "register", str(write_intake(tmp_path, survivor_id)))
    ).exit_code == 0
    async with build_worker(client, activities, task_queue):
        ran = await mineaction(
            env, "journey", "start", survivor_id, "--case-worker", "cw-01",
            "--product", "fish_farming", "--amount", "2000",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        handle = client.get_workflow_handle(journey_workflow_id(survivor_id))
        await skip_until(
            time_skipping_env, handle, lambda s: s.stage == "COMMITTEE_REVIEW",
            step=timedelta(minutes=10),
        )  # fmt: skip
        ran = await mineaction(
            env, "journey", "decide", survivor_id, "--approve", "--member", "cm-02",
            "--ref", "CM-2026-021",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        status = await skip_until(
            time_skipping_env, handle, lambda s: s.stage == "GRACE", step=timedelta(minutes=10)
        )
        # Paid on the journey's today: the shared test server's clock may already be years
        # ahead of the real one after the tests before.
        paid_on = programme_date(await time_skipping_env.get_current_time()).isoformat()
        ran = await mineaction(env, "repay", status.loan_id, "2000", "--date", paid_on)
        assert ran.exit_code == 0, ran
        assert f"CLOSED_OBLIGATIONS_MET on {paid_on}" in ran.stdout, ran
        # Repaid months early: `repay` tells the journey, which sees the loan closed within
        # a minute, not at its first due date, and dates the closure as the ledger does.
        repaid = await skip_until(
            time_skipping_env, handle, lambda s: s.stage == "REPAID",
            step=timedelta(seconds=5), limit=timedelta(minutes=1),
        )  # fmt: skip
        assert repaid.closed_on == paid_on

        await skip_until(time_skipping_env, handle, follow_up_due(6))
        ran = await mineaction(env, "journey", "status", survivor_id)
        assert ran.exit_code == 0 and "+6 months: awaiting the answers" in ran.stdout, ran
        answer = [
            "journey", "follow-up", survivor_id, "--income", "0", "--not-working",
            "--family-members", "4", "--recorded-by", "cw-07",
        ]  # fmt: skip
        ran = await mineaction(env, *answer)
        assert ran.exit_code == 0, ran
        assert ran.stdout.strip() == (
            f"recorded the +6-month follow-up of {survivor_id} by cw-07: income 0.00 AZN a "
            "month, not working, 4 family member(s) supported"
        )
        status = await skip_until(
            time_skipping_env, handle, lambda s: 6 in s.follow_ups_recorded,
            step=timedelta(minutes=10),
        )  # fmt: skip
        # Sent again once recorded (before, it could race the journey recording the first,
        # which now says "another follow-up is being recorded"): none is due.
        line = one_error_line(await mineaction(env, *answer))
        assert line.startswith("error: the journey refused it: no follow-up is due"), line
        await handle.terminate("the test ends after the +6 month follow-up")


async def test_needs_listed_for_staff(cli_env: dict[str, str], cluster: Cluster) -> None:
    """A survivor's recorded needs, in either language, with what was requested for them;
    filters the service would refuse are refused before any call."""
    survivor_id = await register_survivor(cluster.eligibility)

    def column(out: str, index: int) -> list[str]:  # one line per need
        return [r.split("│")[index + 1].strip() for r in out.splitlines() if r.startswith("│")]

    for type_id in ("wheelchair", "english_course"):
        await cluster.assistance.RecordNeed(need_request(survivor_id, type_id))
    ran = await mineaction(cli_env, "needs", "--survivor", survivor_id)
    assert ran.exit_code == 0, ran
    rows = column(ran.stdout, 2)
    assert rows == ["Wheelchair (wheelchair)", "English course (english_course)"], ran.stdout
    assert column(ran.stdout, 4) == ["Open (open)", "Open (open)"], ran.stdout
    ran = await mineaction(
        cli_env, "needs", "--survivor", survivor_id, "--type", "wheelchair", "--lang", "az"
    )
    assert column(ran.stdout, 2) == ["Əlil arabası (wheelchair)"], ran.stdout
    assert column(ran.stdout, 3) == ["Saatlı (saatli)"], ran.stdout
    assert column(ran.stdout, 4) == ["Açıq (open)"], ran.stdout
    ran = await mineaction(cli_env, "needs", "--survivor", survivor_id, "--state", "met")
    assert ran.exit_code == 0 and "— 0" in ran.stdout, ran
    for bad, says in (
        (["--state", "closed"], "unknown --state 'closed'"),
        (["--district", "saatly"], "--district: unknown district 'saatly'"),
    ):
        refused = await mineaction(cli_env, "needs", *bad)
        assert refused.exit_code == 2 and says in one_error_line(refused), refused


async def test_journey_updates_check_the_callers_token_first(
    cli_env: dict[str, str], cluster: Cluster
) -> None:
    """A journey's update reaches Temporal, not the services, so the CLI checks the token
    as a service would before sending it: a role the access policy allows, staff acting
    as themselves; a case worker may record a provider's step under the provider's id."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"  # no journey: past the check, "not found"
    decide = ["journey", "decide", survivor_id, "--approve", "--member", "cm-07", "--ref", "CM-1"]
    propose = ["journey", "write-off", survivor_id, "--reason", "fled the district"]
    confirm = ["journey", "write-off", survivor_id, "--confirm"]
    start = ["journey", "start", survivor_id, "--product", "fish_farming", "--amount", "2000"]
    refresh = [
        "journey", "assist", survivor_id, "wheelchair", "refresh", "--actor", "baku-mobility-aids"
    ]  # fmt: skip
    for token, args, says in (
        (cluster.token_for("auditor", subject="aud-1"), decide,
         "ApproveLoan needs one of the roles committee_member, service; the token (aud-1) "
         "has auditor"),
        (cluster.token_for("committee_member", subject="cm-08"), decide,
         "you (cm-08) cannot act as cm-07"),
        ("not-a-token", decide, "the token is not accepted"),
        (cluster.token_for("loan_officer", subject="lo-03"), confirm,
         "ConfirmLoanWriteOff needs one of the roles programme_manager, service"),
        (cluster.token_for("auditor", subject="aud-1"), propose,
         "ProposeLoanWriteOff needs one of the roles loan_officer, programme_manager, service"),
        (cluster.token_for("loan_officer", subject="lo-03"), [*propose, "--proposed-by", "lo-09"],
         "you (lo-03) cannot act as lo-09"),
        # A committee member starting a journey in a case worker's name could approve the
        # loan they submitted; a case worker starts journeys as themselves.
        (cluster.token_for("committee_member", subject="cm-07"), [*start, "--case-worker", "cw-07"],
         "SubmitLoanApplication needs one of the roles case_worker, loan_officer, service"),
        (cluster.token_for("case_worker", subject="cw-01"), [*start, "--case-worker", "cw-07"],
         "you (cw-01) cannot act as cw-07"),
        (cluster.token_for("committee_member", subject="cm-07"),
         ["journey", "start", survivor_id, "--assistance", "wheelchair"],
         "RecordNeed needs one of the roles case_worker, service"),
        (cluster.token_for("auditor", subject="aud-1"), refresh,
         "AdvanceAssistance needs one of the roles case_worker, service"),
        (cluster.token_for("case_worker", subject="cw-01"), [*refresh[:5], "--actor", "pm-01"],
         "you (cw-01) cannot act as pm-01"),
    ):  # fmt: skip
        ran = await mineaction({**cli_env, "MINEACTION_TOKEN": token}, *args)
        assert ran.exit_code == 1 and says in one_error_line(ran), (args, ran)
    for token, args in (
        (cluster.token_for("committee_member", subject="cm-07"), decide),
        (cluster.token_for("loan_officer", subject="lo-03"), propose),
        (cluster.token_for("programme_manager", subject="PM-01"), confirm),
        (cluster.token_for("case_worker", subject="cw-01"), refresh),
    ):
        ran = await mineaction({**cli_env, "MINEACTION_TOKEN": token}, *args)
        assert f"journey-{survivor_id} was not found" in one_error_line(ran), (args, ran)
    # A case worker's own journey: past the check, to the unregistered survivor.
    as_case_worker = {**cli_env, "MINEACTION_TOKEN": cluster.token_for("case_worker")}
    line = one_error_line(await mineaction(as_case_worker, *start))
    assert line == f"error: not found: survivor {survivor_id} is not registered", line


async def test_no_journey_applies_for_a_loan_beside_an_open_one(
    cli_env: dict[str, str], cluster: Cluster, tmp_path: Path
) -> None:
    """A survivor with a loan open in the ledger (made outside any journey) gets no first
    journey with another loan, whatever the intake declares about active loans."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    intake = write_intake(tmp_path, loan.survivor_id)
    assert (await mineaction(cli_env, "register", str(intake))).exit_code == 0
    ran = await mineaction(
        cli_env, "journey", "start", loan.survivor_id, "--case-worker", "cw-01",
        "--product", "fish_farming", "--amount", "5000.00",
    )  # fmt: skip
    line = one_error_line(ran)
    assert ran.exit_code == 1 and f"already has loan {loan.loan_id} (ACTIVE) open" in line, ran


def health_rows(out: str) -> dict[str, str]:
    """`health`'s table: each part's state (its third column)."""
    rows = {}
    for row in out.splitlines():
        cells = [c.strip() for c in row.strip().strip("│").split("│")]
        if len(cells) == 3 and cells[0] and cells[0] != "Part":
            rows[cells[0]] = cells[2]
    return rows


async def test_health_says_which_part_of_the_cluster_is_down(
    cli_env: dict[str, str], dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """Every service, Temporal, the journey workers and the loan news relay: all up is
    exit 0; any part down is named, in the table and in one error line (exit 1)."""
    relay = dev_client.get_workflow_handle(LOAN_NEWS_WORKFLOW_ID)
    with contextlib.suppress(RPCError):  # left running by another test's worker
        await relay.terminate("the test starts its own")
    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(cli_env, "health")
        assert ran.exit_code == 1, ran
        assert health_rows(ran.stdout)["loan news relay"].startswith("not "), ran
        assert one_error_line(ran) == "error: not healthy: loan news relay"

        await start_loan_news(dev_client, task_queue)
        try:
            ran = await mineaction(cli_env, "health")
            assert ran.exit_code == 0, ran
            shown = health_rows(ran.stdout)
            for part in ("eligibility", "lending", "assistance", "temporal"):
                assert shown[part] == "ok", (part, shown)
            assert shown["journey workers"] == "ok: 1 polling", shown
            assert shown["loan news relay"] == "ok: following the loan change feed", shown

            lending_down = {
                **cli_env,
                "LENDING_ADDRESS": f"127.0.0.1:{closed_port()}",
                "JOURNEY_TASK_QUEUE": f"nobody-polls-{uuid.uuid4().hex[:8]}",
            }
            ran = await mineaction(lending_down, "health")
            assert ran.exit_code == 1, ran
            shown = health_rows(ran.stdout)
            assert shown["lending"] == "not reachable" and shown["eligibility"] == "ok"
            assert shown["journey workers"] == "no worker polling", shown
            assert one_error_line(ran) == "error: not healthy: lending, journey workers"
        finally:
            await relay.terminate("the test is over")

    temporal_down = {**cli_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}"}
    ran = await mineaction(temporal_down, "health")
    assert ran.exit_code == 1, ran
    shown = health_rows(ran.stdout)
    assert shown["temporal"] == "not reachable", shown
    assert shown["journey workers"] == "unknown (no Temporal)", shown
    assert shown["loan news relay"] == "unknown (no Temporal)", shown
    assert one_error_line(ran) == ("error: not healthy: temporal, journey workers, loan news relay")

    # Run where there is no keyring (another folder): the services are still shown.
    absent = Path(cli_env["MINEACTION_STATE_DIR"]) / "absent.json"
    ran = await mineaction({**cli_env, "PAYLOAD_KEYS_FILE": str(absent)}, "health")
    assert ran.exit_code == 1, ran
    shown = health_rows(ran.stdout)
    assert shown["temporal"] == "no payload keyring" and shown["lending"] == "ok", shown
    assert f"no payload keyring at {absent}" in ran.stdout, ran


async def test_health_names_a_relay_turn_that_keeps_failing(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    outbox: Outbox,
    task_queue: str,
) -> None:
    """The relay's worker cannot reach lending: its turns are retried, and `health` says
    so with the failure, not "ok"."""
    no_lending = JourneyActivities(
        cluster.address("eligibility"),
        f"127.0.0.1:{closed_port()}",
        cluster.address("assistance"),
        outbox,
        token=service_token(cluster.settings),
    )
    relay = dev_client.get_workflow_handle(LOAN_NEWS_WORKFLOW_ID)
    with contextlib.suppress(RPCError):
        await relay.terminate("the test starts its own")
    try:
        async with build_worker(dev_client, no_lending, task_queue):
            await start_loan_news(dev_client, task_queue)
            deadline = time.monotonic() + 30
            while True:
                ran = await mineaction(cli_env, "health")
                state = health_rows(ran.stdout)["loan news relay"]
                if state.startswith("failing") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            assert state.startswith("failing (attempt "), ran
            said = " ".join(ran.stdout.split())  # the line as wrapped to the terminal
            assert "loan news relay: the lending service answered UNAVAILABLE: " in said, ran
            assert ran.exit_code == 1
            assert one_error_line(ran) == "error: not healthy: loan news relay"
    finally:
        with contextlib.suppress(RPCError):
            await relay.terminate("the test is over")
        await no_lending.close()


async def test_health_says_the_relay_is_held_back_by_a_transaction_left_open(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """A transaction left open in the lending database holds back every change committed
    after it began: the relay hears of none, and `health` says since when they wait,
    not "ok"."""
    loan = await approved_loan(cluster.lending, fund_id=await open_fund(cluster, 1_000_000))
    relay = dev_client.get_workflow_handle(LOAN_NEWS_WORKFLOW_ID)
    with contextlib.suppress(RPCError):
        await relay.terminate("the test starts its own")
    saved, activities.news_wait_seconds = activities.news_wait_seconds, 1
    db = lending_db(cluster)
    async with db.pool.acquire() as left_open, db.pool.acquire() as writer:
        forgotten = left_open.transaction()
        await forgotten.start()
        await left_open.execute("SELECT pg_current_xact_id()")  # holds the feed from here
        # A change committed after it, written five minutes ago (as a trigger writes it,
        # backdated: the alarm is for changes held back over a minute).
        await writer.execute(
            """INSERT INTO loan_changes (loan_id, kind, changed_at)
               VALUES ($1, 'STATE', now() - interval '5 minutes')""",
            loan.loan_id,
        )
        try:
            async with build_worker(dev_client, activities, task_queue):
                # From the feed's end: the turn's first page is the held one, and its
                # first heartbeat (the later ones are batched by the SDK) says so.
                await dev_client.start_workflow(
                    LoanNewsWorkflow.run,
                    await feed_end(cluster),
                    id=LOAN_NEWS_WORKFLOW_ID,
                    task_queue=task_queue,
                )
                deadline = time.monotonic() + 30
                while True:
                    ran = await mineaction(cli_env, "health")
                    state = health_rows(ran.stdout)["loan news relay"]
                    if state != "ok: following the loan change feed":
                        break
                    assert time.monotonic() < deadline, ran
                    await asyncio.sleep(1)
                assert state.startswith("held back since "), ran
                said = " ".join(ran.stdout.split())
                assert "a transaction left open in the lending database" in said, ran
                assert one_error_line(ran) == "error: not healthy: loan news relay"
        finally:
            await forgotten.rollback()
            activities.news_wait_seconds = saved
            with contextlib.suppress(RPCError):
                await relay.terminate("the test is over")


async def test_an_item_the_survivor_was_not_eligible_for_says_so(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """No walking difficulty: the journey does not request the wheelchair, and a step sent
    to it says why, not only that no item was found."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    intake = write_intake(tmp_path, survivor_id)
    intake.write_text(intake.read_text().replace("a_lot_of_difficulty", "no_difficulty"))
    assert (await mineaction(cli_env, "register", str(intake))).exit_code == 0
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    async with build_worker(dev_client, activities, task_queue):
        ran = await mineaction(
            cli_env, "journey", "start", survivor_id, "--case-worker", "cw-01",
            "--product", "small_trade", "--amount", "1000",
            "--assistance", f"wheelchair:baku-mobility-aids:{pool}",
            "--data", "wheelchair:seat_width_cm=44",
        )  # fmt: skip
        assert ran.exit_code == 0, ran
        handle = dev_client.get_workflow_handle(journey_workflow_id(survivor_id))
        await wait_until(handle, lambda s: bool(s.assistance), "planned its items")
        step = ["journey", "assist", survivor_id, "wheelchair", "allocate_from_stock"]
        line = one_error_line(await mineaction(cli_env, *step, "--actor", "supplier-01"))
        assert line == (
            f"error: the journey journey-{survivor_id} did not request wheelchair: its "
            "assessment found the survivor not eligible for it"
        ), line
        await handle.terminate("the test is over")


@pytest.mark.timeout(120)
async def test_journey_status_says_why_a_journey_failed(
    cli_env: dict[str, str],
    cluster: Cluster,
    dev_client: Client,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """A failed journey's reason, decrypted: the status said only 'failed', and the Temporal
    CLI shows 'Encoded failure' without the codec."""
    three = [TranchePlan(100_000, f"part {n}", "IN_KIND", 10 * n) for n in range(3)]
    loan = LoanRequest("fish_farming", 300_000, "fish, feed, nets", tranches=three)
    async with build_worker(dev_client, activities, task_queue):
        handle = await start_journey(cluster, dev_client, task_queue, loan)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        survivor_id = (await status_of(handle)).survivor_id
        ran = await mineaction(cli_env, "journey", "status", survivor_id)
    assert ran.exit_code == 0, ran
    assert (
        "why it failed: INVALID_TRANCHE_PLAN: the loan's plan has 3 tranches; product "
        "fish_farming allows 2"
    ) in ran.stdout, ran
