"""Journeys that fail near their start, end to end under time skipping with the real
services: one given two assistance items of the same type is refused before it starts
anything (the second item's start failed, the journey failed, and the first item ran on
without it, holding a waitlist place)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Cluster
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
from workers.journey.worker import build_worker
from workers.journey.workflows import (
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
