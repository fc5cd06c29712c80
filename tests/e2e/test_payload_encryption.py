"""A whole journey under time skipping, with personal data typed into its free-text
fields (a loan purpose, tranche descriptions, a fitter's name, follow-up notes), and
then its raw history read from the server by a client that has no keys: every payload
of every event of every workflow involved is `binary/encrypted`, and none of the
personal data appears anywhere in the bytes the server holds."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Cluster
from tests.factories import pdate, register_request, saatli_fish_farmer
from tests.journey_helpers import deliver_wheelchair, follow_up_due, own_pool, skip_until, status_of
from tests.replay.payloads import is_sdk_marker_metadata, is_search_attribute, payloads_in
from workers.codec import ENCODING, KEY_ID_METADATA
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    AssistancePlan,
    CommitteeDecision,
    FollowUp,
    JourneyInput,
    LoanRequest,
    TranchePlan,
    assistance_workflow_id,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import (
    SurvivorJourneyWorkflow,
    initial_search_attributes,
)
from workers.simulation.workflows import Behaviour, BorrowerInput, BorrowerWorkflow

# Known personal data: survivors' and family members' names, phone numbers and birth
# dates, as a case worker might type them into notes.
NAMES = ("Elnur Məmmədov", "Günay Əliyeva", "Rauf Qasimov")
PHONES = ("+994 50 123 45 67", "+994557654321", "050-765-43-21")
BIRTH_DATES = (date(1981, 5, 14), date(1979, 3, 8), date(2012, 11, 30))


def needles() -> list[bytes]:
    """Each piece of personal data as it could appear in bytes: UTF-8, JSON-escaped
    (Temporal's JSON converter escapes non-ASCII), and its distinctive ASCII parts."""
    texts: set[str] = set()
    for name in NAMES:
        texts.add(name)
        texts.update(part for part in name.split() if part.isascii())
    texts.update(PHONES)
    texts.update(p.replace(" ", "").replace("-", "") for p in PHONES)
    for born in BIRTH_DATES:
        texts.update({born.isoformat(), born.strftime("%d.%m.%Y")})
    found = {t.encode() for t in texts}
    found.update(json.dumps(t)[1:-1].encode() for t in texts)
    return sorted(found)


def leaks(raw: bytes) -> list[bytes]:
    return [needle for needle in needles() if needle in raw]


@dataclass
class Journey:
    survivor_id: str
    workflow_ids: list[str]


def free_text(i: int = 0) -> str:
    born = BIRTH_DATES[i % 3]
    return (
        f"{NAMES[i % 3]}, born {born.strftime('%d.%m.%Y')}, phone {PHONES[i % 3]}; "
        f"family: {NAMES[(i + 1) % 3]} ({BIRTH_DATES[(i + 1) % 3].isoformat()})"
    )


async def run_journey_with_personal_data(
    cluster: Cluster,
    env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> Journey:
    """The Saatli fish farmer's journey, start to end, personal data in every free-text
    field the journey carries."""
    client = env.client
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    intake = saatli_fish_farmer(survivor_id)
    intake.date_of_birth.CopyFrom(pdate(BIRTH_DATES[0]))
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    wheelchairs = await own_pool(cluster, "baku-mobility-aids", "wheelchair", capacity=1)
    journey_id = journey_workflow_id(survivor_id)
    chair_id = assistance_workflow_id(journey_id, "wheelchair")

    async with build_worker(client, activities, task_queue):
        handle = await client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=survivor_id,
                case_worker_id="cw-07",
                loan=LoanRequest(
                    "fish_farming",
                    500_000,
                    f"Lake restoration for {free_text(0)}",
                    [
                        TranchePlan(300_000, f"Fingerlings, collected by {NAMES[1]}", "IN_KIND", 0),
                        TranchePlan(200_000, f"Feed; call {PHONES[2]}", "IN_KIND", 30),
                    ],
                ),
                assistance=[
                    AssistancePlan(
                        "wheelchair", "baku-mobility-aids", wheelchairs, 1, {"seat_width_cm": 44}
                    )
                ],
            ),
            id=journey_id,
            task_queue=task_queue,
            search_attributes=initial_search_attributes(programme_year=1),
        )
        await skip_until(
            env, handle, lambda s: s.stage == "COMMITTEE_REVIEW", step=timedelta(hours=1)
        )
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-03", decision_ref="CM-2026-031"),
        )
        chair = client.get_workflow_handle(chair_id)
        await deliver_wheelchair(chair, "WC-2026-0042", fitted_by=NAMES[2], notes=free_text(1))
        loan_id = (await status_of(handle)).loan_id
        borrower = await client.start_workflow(
            BorrowerWorkflow.run,
            BorrowerInput(loan_id, Behaviour()),
            id=f"borrower-{loan_id}",
            task_queue=task_queue,
        )
        for months in (6, 12):
            await skip_until(env, handle, follow_up_due(months))
            await handle.execute_update(
                SurvivorJourneyWorkflow.record_follow_up,
                FollowUp(
                    household_income_minor=90_000,
                    working=True,
                    family_members_supported=4,
                    recorded_by="cw-07",
                ),
            )
        result = await handle.result()
        assert result.stage == "COMPLETED"
        await borrower.result()
    return Journey(survivor_id, [journey_id, chair_id, borrower.id])


async def raw_history(client: Client, workflow_id: str, run_id: str = "") -> list[HistoryEvent]:
    """The history exactly as the server returns it, page by page."""
    events: list[HistoryEvent] = []
    token = b""
    while True:
        page = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                next_page_token=token,
            )
        )
        events.extend(page.history.events)
        token = page.next_page_token
        if not token:
            return events


async def all_runs(client: Client, workflow_id: str) -> list[list[HistoryEvent]]:
    """Every run of a workflow, from the first, following continue-as-new."""
    latest = await raw_history(client, workflow_id)
    runs = [latest]
    first = latest[0].workflow_execution_started_event_attributes
    while first.continued_execution_run_id:
        earlier = await raw_history(client, workflow_id, first.continued_execution_run_id)
        runs.insert(0, earlier)
        first = earlier[0].workflow_execution_started_event_attributes
    return runs


@pytest.mark.timeout(240)
async def test_the_server_holds_only_encrypted_payloads_and_no_personal_data(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    encrypting_converter: DataConverter,
    task_queue: str,
) -> None:
    env = time_skipping_env
    journey = await run_journey_with_personal_data(cluster, env, activities, task_queue)
    # A client on the same connection, but with Temporal's default converter: no keys.
    keyless = Client(env.client.service_client, namespace=env.client.namespace)

    kinds: set[str] = set()
    checked = 0
    decrypted = b""
    for workflow_id in journey.workflow_ids:
        assert not leaks(workflow_id.encode()), workflow_id
        for run in await all_runs(keyless, workflow_id):
            history = History(events=run)
            raw = history.SerializeToString()
            assert not leaks(raw), f"{workflow_id}: personal data in the raw history"
            for path, payload in payloads_in(history):
                if is_search_attribute(path) or is_sdk_marker_metadata(path):
                    continue  # never encoded by Temporal: codes and ids, no personal data
                event = run[int(path.split("[", 1)[1].split("]", 1)[0])]
                where = f"{workflow_id} {EventType.Name(event.event_type)} {path}"
                assert payload.metadata["encoding"] == ENCODING, where
                assert payload.metadata[KEY_ID_METADATA], where
                kinds.add(EventType.Name(event.event_type))
                checked += 1
                [opened] = await encrypting_converter.payload_codec.decode([payload])  # type: ignore[union-attr]
                decrypted += opened.SerializeToString()

    # The check is not vacuous: every kind of payload-carrying event was seen, and the
    # personal data really was inside, readable with the keys.
    assert checked > 100
    assert {
        "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
        "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED",
        "EVENT_TYPE_ACTIVITY_TASK_COMPLETED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
        "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED",
        "EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
    } <= kinds, kinds
    for needle in (b"Elnur", b"Rauf Qasimov", b"14.05.1981", PHONES[0].encode()):
        assert needle in decrypted

    # Whoever reaches Temporal without the keys cannot read a result.
    with pytest.raises(Exception, match="binary/encrypted"):
        await keyless.get_workflow_handle(journey.workflow_ids[0]).result()
    status = await env.client.get_workflow_handle(journey.workflow_ids[0]).result()
    assert status is not None


async def test_a_failure_message_is_encrypted_in_history(
    cluster: Cluster,
    time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """A journey for a survivor nobody registered fails; its failure (whose message
    could quote what was typed) is stored encrypted, and readable with the keys."""
    env = time_skipping_env
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    async with build_worker(env.client, activities, task_queue):
        handle = await env.client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(survivor_id=survivor_id, case_worker_id="cw-07"),
            id=journey_workflow_id(survivor_id),
            task_queue=task_queue,
        )
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
    keyless = Client(env.client.service_client, namespace=env.client.namespace)
    failures = []
    for event in await raw_history(keyless, handle.id):
        for path, payload in payloads_in(event):
            if not (is_search_attribute(path) or is_sdk_marker_metadata(path)):
                assert payload.metadata["encoding"] == ENCODING, path
        if event.HasField("activity_task_failed_event_attributes"):
            failures.append(event.activity_task_failed_event_attributes.failure)
        # A local activity's failure is recorded in its marker.
        marker = event.marker_recorded_event_attributes
        if event.HasField("marker_recorded_event_attributes") and marker.HasField("failure"):
            failures.append(marker.failure)
    assert failures, "the profile lookup of an unknown survivor should fail"
    for failure in failures:
        assert failure.message == "Encoded failure"
        assert survivor_id.encode() not in failure.SerializeToString()
        error = await env.client.data_converter.decode_failure(failure)
        assert str(error) and str(error) != "Encoded failure"  # the keys restore it
