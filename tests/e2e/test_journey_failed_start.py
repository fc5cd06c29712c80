"""Journeys that fail near their start, end to end under time skipping with the real
services: one given two assistance items of the same type is refused before it starts
anything (the second item's start failed, the journey failed, and the first item ran on
without it, holding a waitlist place); and a journey that fails shows, in its search
attributes, the stage and district it had reached (they stayed as the starter set them,
so operators' filters by stage or district missed it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.conftest import Cluster
from tests.e2e.pre_fewer_tasks import PreFewerTasksJourneyWorkflow
from tests.factories import register_request, saatli_fish_farmer
from tests.journey_helpers import own_pool, status_of
from tests.temporal_fixtures import time_skipping_server
from workers.journey import search_attributes as sa
from workers.journey.activities import JourneyActivities
from workers.journey.model import (
    AssistancePlan,
    JourneyInput,
    JourneyStatus,
    LoanRequest,
    assistance_workflow_id,
    journey_workflow_id,
)
from workers.journey.worker import build_worker, workflow_runner
from workers.journey.workflows import (
    AssistanceWorkflow,
    SurvivorJourneyWorkflow,
    initial_search_attributes,
)

Journey = WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus]


@pytest_asyncio.fixture
async def own_time_skipping_env(
    encrypting_converter: DataConverter,
) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server for one test: an item left running without its journey (the
    defects these tests guard against) stays on it, and is no later test's concern."""
    async with time_skipping_server(encrypting_converter) as env:
        yield env


async def start(
    cluster: Cluster,
    client: Client,
    task_queue: str,
    *,
    assistance: list[AssistancePlan] | None = None,
    loan: LoanRequest | None = None,
) -> Journey:
    """A journey for a fish farmer of Saatli registered for it."""
    intake = saatli_fish_farmer(f"srv-{uuid.uuid4().hex[:12]}")
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    return await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=intake.survivor_id,
            case_worker_id="cw-12",
            assistance=assistance or [],
            loan=loan,
        ),
        id=journey_workflow_id(intake.survivor_id),
        task_queue=task_queue,
        search_attributes=initial_search_attributes(programme_year=1),
    )


async def failure_of(env: WorkflowEnvironment, journey: Journey) -> BaseException:
    """Why the journey failed (it fails at once: no time to skip)."""
    with env.auto_time_skipping_disabled(), pytest.raises(WorkflowFailureError) as failed:
        await journey.result()
    assert failed.value.cause is not None, failed.value
    return failed.value.cause


@pytest.mark.timeout(120)
async def test_a_journey_given_two_items_of_one_type_is_refused_before_it_starts_anything(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """Two wheelchairs: both items would have one workflow id. The second item's start
    was refused ("Workflow execution already started"), the journey failed, and the first
    item ran on, abandoned, holding a waitlist place for a failed journey."""
    env = own_time_skipping_env
    client = env.client
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    chair = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    course = AssistancePlan("english_course", "barda-vocational-centre")
    async with build_worker(client, activities, task_queue):
        journey = await start(
            cluster, client, task_queue, assistance=[chair, course, chair],
            loan=LoanRequest("fish_farming", 200_000, "fingerlings"),
        )  # fmt: skip
        refused = await failure_of(env, journey)
        assert isinstance(refused, ApplicationError), refused
        assert refused.type == "REPEATED_ASSISTANCE_TYPE", refused
        assert refused.non_retryable
        assert "wheelchair" in refused.message and "english_course" not in refused.message
        # Nothing was started: no item, no read, no loan application.
        for type_id in ("wheelchair", "english_course"):
            with pytest.raises(RPCError) as missing:
                await client.get_workflow_handle(
                    assistance_workflow_id(journey.id, type_id)
                ).describe()
            assert missing.value.status == RPCStatusCode.NOT_FOUND
        history = await journey.fetch_history()
        started = [
            e
            for e in history.events
            if e.HasField("start_child_workflow_execution_initiated_event_attributes")
            or e.HasField("activity_task_scheduled_event_attributes")
        ]
        assert not started, started
        markers = [
            e.marker_recorded_event_attributes.marker_name
            for e in history.events
            if e.HasField("marker_recorded_event_attributes")
        ]
        assert set(markers) <= {"core_patch"}, markers  # only patches, no local activity
        # What operators filter by matches what the journey says of itself.
        status = await status_of(journey)
        attributes = (await journey.describe()).typed_search_attributes
        assert (status.stage, attributes.get(sa.STAGE)) == ("INTAKE", "INTAKE")
        assert attributes.get(sa.DISTRICT_CODE) is None


async def journey_refused_by_lending(
    cluster: Cluster, client: Client, task_queue: str
) -> tuple[Journey, str]:
    """Lending refuses the application (a product it does not have)."""
    loan = LoanRequest("no_such_product", 200_000, "a boat")
    return await start(cluster, client, task_queue, loan=loan), "LOAN_APPLICATION"


async def journey_whose_item_runs_already(
    cluster: Cluster, client: Client, task_queue: str
) -> tuple[Journey, str]:
    """A journey terminated once its wheelchair was requested, then started again under
    the same workflow id (as `temporal workflow start` allows) while that item still runs:
    the item's start is refused ("Workflow execution already started")."""
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    chair = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    first = await start(cluster, client, task_queue, assistance=[chair])
    deadline = time.monotonic() + 30
    while not any(a.assistance_id for a in (await status_of(first)).assistance):
        assert time.monotonic() < deadline, await status_of(first)
        await asyncio.sleep(0.05)
    survivor_id = (await status_of(first)).survivor_id
    await first.terminate("started again")
    again: Journey = await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(survivor_id=survivor_id, case_worker_id="cw-12", assistance=[chair]),
        id=first.id,
        task_queue=task_queue,
        search_attributes=initial_search_attributes(programme_year=1),
    )
    return again, "ASSISTANCE_PLAN"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "journey_workflow",
    [SurvivorJourneyWorkflow, PreFewerTasksJourneyWorkflow],
    ids=["current", "started_before_fewer_tasks"],
)
@pytest.mark.parametrize(
    "failing_journey",
    [journey_refused_by_lending, journey_whose_item_runs_already],
    ids=["loan_refused", "item_running_already"],
)
async def test_a_failed_journey_shows_the_stage_and_district_it_reached(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
    journey_workflow: type,
    failing_journey: Callable[[Cluster, Client, str], Awaitable[tuple[Journey, str]]],
) -> None:
    """A journey that fails after reading the survivor's district: its search attributes
    said Stage INTAKE and no DistrictCode while its status said ASSISTANCE_PLAN, so
    `mineaction journeys --all --district saatli` and the Web UI's queries by stage missed
    it. Journeys started before `journey-fewer-tasks` write each attribute at once."""
    env = own_time_skipping_env
    client = env.client
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[journey_workflow, AssistanceWorkflow],
        activities=activities.all(),
        workflow_runner=workflow_runner(),
    ):
        journey, stage = await failing_journey(cluster, client, task_queue)
        await failure_of(env, journey)
        status = await status_of(journey)
        assert status.stage == stage and not status.loan_id, status
        attributes = (await journey.describe()).typed_search_attributes
        assert attributes.get(sa.STAGE) == status.stage
        assert attributes.get(sa.DISTRICT_CODE) == "saatli"
        assert attributes.get(sa.PROGRAMME_YEAR) == 1
        assert attributes.get(sa.LOAN_STATUS) is None  # nothing applied for
        # Written before the failure, under a patch asked only when something was held
        # back (the old path writes at once; the refused application's read wrote it all).
        events = (await journey.fetch_history()).events
        kinds = [e.WhichOneof("attributes") for e in events]
        asked = [
            kinds[n + 1 :]
            for n, e in enumerate(events)
            if e.HasField("marker_recorded_event_attributes")
            and b"journey-failure-writes-search-attributes" in e.SerializeToString()
        ]
        held_back = (journey_workflow, failing_journey) == (
            SurvivorJourneyWorkflow,
            journey_whose_item_runs_already,
        )
        assert len(asked) == (1 if held_back else 0), kinds
        if held_back:  # the patch's own TemporalChangeVersion, then the journey's upsert
            assert set(asked[0][:-1]) == {"upsert_workflow_search_attributes_event_attributes"}
            written = events[-2].upsert_workflow_search_attributes_event_attributes
            assert {"Stage", "DistrictCode"} <= set(written.search_attributes.indexed_fields)
        assert kinds[-1] == "workflow_execution_failed_event_attributes"
        # Its items (children that outlive it) are the test's to end.
        for plan in (await status_of(journey)).assistance:
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(
                    assistance_workflow_id(journey.id, plan.type_id)
                ).terminate("the test is over")
