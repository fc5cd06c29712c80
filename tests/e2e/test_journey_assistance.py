"""A journey's assistance items hear of changes made outside them, end to end under time
skipping with the real services: an item dropped out straight through the assistance API
ends at the next step sent to it (refused), and its journey completes as after a drop-out
sent through the journey; a survivor promoted off a waitlist shows as promoted in the
journey after staff's `refresh`, or by itself within a day."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as assistance_grpc
from mineaction.audit.v1 import audit_service_pb2 as audit_pb
from mineaction.audit.v1 import audit_service_pb2_grpc as audit_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from services.common.protoconv import timestamp
from tests.conftest import Cluster
from tests.factories import register_request, request_id, saatli_fish_farmer
from tests.journey_helpers import (
    deliver_wheelchair,
    own_pool,
    someone_holds,
    status_of,
    wait_for_stage,
)
from tests.temporal_fixtures import time_skipping_server
from workers.journey.activities import JourneyActivities, request_id_of
from workers.journey.model import (
    AssistanceAction,
    AssistancePlan,
    AssistanceRefresh,
    AssistanceState,
    CommitteeDecision,
    JourneyInput,
    JourneyStatus,
    LoanRequest,
    WriteOffDecision,
    WriteOffProposal,
    assistance_workflow_id,
    journey_workflow_id,
)
from workers.journey.worker import build_worker
from workers.journey.workflows import (
    WAITLIST_READS_PER_RUN,
    AssistanceWorkflow,
    SurvivorJourneyWorkflow,
    initial_search_attributes,
)


@pytest_asyncio.fixture
async def own_time_skipping_env(
    encrypting_converter: DataConverter,
) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server for one test. When an assistance item ends after its journey
    has closed (a journey of assistance only completes on the item's last signal), the test
    server stops skipping time for good, so these tests do not share the session's."""
    async with time_skipping_server(encrypting_converter) as env:
        yield env


Journey = WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus]
Item = WorkflowHandle[AssistanceWorkflow, AssistanceState]


async def start_journey(
    cluster: Cluster, client: Client, task_queue: str, plan: AssistancePlan
) -> tuple[Journey, Item]:
    """A journey of assistance only, once its one item is requested from the service."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    journey: Journey = await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(survivor_id=survivor_id, case_worker_id="cw-12", assistance=[plan]),
        id=journey_workflow_id(survivor_id),
        task_queue=task_queue,
        search_attributes=initial_search_attributes(programme_year=1),
    )
    await journey_heard(journey, lambda a: bool(a.assistance_id))
    item: Item = client.get_workflow_handle_for(
        AssistanceWorkflow.run, assistance_workflow_id(journey.id, plan.type_id)
    )
    return journey, item


async def journey_heard(
    journey: Journey, done: Callable[[AssistanceState], bool], within: float = 15.0
) -> AssistanceState:
    """The journey's view of its one item, once `done(item)` holds (real time)."""
    deadline = time.monotonic() + within
    while True:
        status = await status_of(journey)
        if status.assistance and done(status.assistance[0]):
            return status.assistance[0]
        assert time.monotonic() < deadline, f"the journey never heard it: {status}"
        await asyncio.sleep(0.05)


async def staff_advance(cluster: Cluster, assistance_id: str, action: str, who: str) -> None:
    """A step sent straight to the assistance service under a case worker's own token."""
    channel = cluster.channel("assistance", cluster.token_for("case_worker", subject=who))
    try:
        await assistance_grpc.AssistanceServiceStub(channel).AdvanceAssistance(
            assistance_pb.AdvanceAssistanceRequest(
                request_id=request_id(), assistance_id=assistance_id, action=action, actor=who
            )
        )
    finally:
        await channel.close()


@pytest.mark.timeout(120)
async def test_an_item_dropped_out_through_the_assistance_api_ends_and_its_journey_completes(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    client = own_time_skipping_env.client
    pool = await own_pool(cluster, "barda-vocational-centre", "english_course", 5, sessions=4)
    plan = AssistancePlan("english_course", "barda-vocational-centre", pool, 1, {"level": "a1"})
    async with build_worker(client, activities, task_queue):
        # Through the journey: the course dropped out by its own step, for comparison.
        through_journey, its_item = await start_journey(cluster, client, task_queue, plan)
        for action, data in (("attend", {"sessions": 1}), ("drop_out", {})):
            await its_item.execute_update(
                AssistanceWorkflow.advance, AssistanceAction(action, "provider-01", data)
            )
        expected = await asyncio.wait_for(through_journey.result(), 15)

        journey, item = await start_journey(cluster, client, task_queue, plan)
        attending = await item.execute_update(
            AssistanceWorkflow.advance, AssistanceAction("attend", "provider-01", {"sessions": 1})
        )
        assert (attending.state, attending.terminal) == ("attending", False)
        # Staff drop the survivor out straight through the assistance API.
        await staff_advance(cluster, attending.assistance_id, "drop_out", "cw-12")
        record = (
            await cluster.assistance.GetAssistance(
                assistance_pb.GetAssistanceRequest(assistance_id=attending.assistance_id)
            )
        ).assistance
        assert record.state == "dropped_out"
        assert (await item.query(AssistanceWorkflow.state)) == attending  # not heard yet

        # The provider's next step is refused by the service, and the caller hears why...
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await item.execute_update(
                AssistanceWorkflow.advance,
                AssistanceAction("attend", "provider-01", {"sessions": 1}),
            )
        assert "allowed: none (finished)" in str(refused.value.cause)
        # ...and the item has caught up with its record: it ends, terminal, and so does the
        # journey, as it did after the drop-out sent through the journey.
        ended = await asyncio.wait_for(item.result(), 15)
        assert (ended.state, ended.terminal) == ("dropped_out", True)
        assert ended.assistance_id == attending.assistance_id
        result = await asyncio.wait_for(journey.result(), 15)

    assert result.stage == expected.stage == "COMPLETED"
    assert [(a.type_id, a.state, a.terminal) for a in result.assistance] == [
        ("english_course", "dropped_out", True)
    ]
    assert [(a.type_id, a.state, a.terminal) for a in expected.assistance] == [
        (a.type_id, a.state, a.terminal) for a in result.assistance
    ]
    # The item's workflow has ended: it takes no more steps.
    assert (await item.describe()).status == WorkflowExecutionStatus.COMPLETED


@pytest.mark.timeout(120)
async def test_staff_refresh_brings_a_promotion_off_the_waitlist_to_the_journey(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    client = own_time_skipping_env.client
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    holder = await someone_holds(cluster, pool)
    plan = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    async with build_worker(client, activities, task_queue):
        journey, item = await start_journey(cluster, client, task_queue, plan)
        waiting = await item.query(AssistanceWorkflow.state)
        assert waiting is not None
        assert (waiting.state, waiting.waitlist_position) == ("waitlisted", 1)

        # Nothing has moved: a refresh reads the record and changes nothing.
        same = await item.execute_update(AssistanceWorkflow.refresh, AssistanceRefresh("cw-12"))
        assert same == waiting
        with pytest.raises(WorkflowUpdateFailedError) as blank:
            await item.execute_update(AssistanceWorkflow.refresh, AssistanceRefresh("  "))
        assert "requested_by is required" in str(blank.value.cause)

        # The other survivor's wheelchair is cancelled: the service promotes this one.
        await staff_advance(cluster, holder, "cancel", "cw-12")
        assert (await item.query(AssistanceWorkflow.state)) == waiting  # not heard yet
        promoted = await item.execute_update(AssistanceWorkflow.refresh, AssistanceRefresh("cw-12"))
        assert (promoted.state, promoted.waitlist_position, promoted.terminal) == (
            "fitting_assessment",
            0,
            False,
        )
        heard = await journey_heard(journey, lambda a: a.state != "waitlisted")
        assert heard == promoted
        # The item goes on with its next step as usual.
        allocated = await item.execute_update(
            AssistanceWorkflow.advance, AssistanceAction("allocate_from_stock", "provider-01")
        )
        assert allocated.state == "allocated"
        await journey.terminate("the test is over")
        await item.terminate("the test is over")


@pytest.mark.timeout(180)
async def test_a_waitlisted_item_reads_its_record_daily_and_continues_as_new_while_it_waits(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    env, client = own_time_skipping_env, own_time_skipping_env.client
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    holder = await someone_holds(cluster, pool)
    plan = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    async with build_worker(client, activities, task_queue):
        journey, item = await start_journey(cluster, client, task_queue, plan)
        first_run = (await item.describe()).run_id
        # A step the service refuses while the item waits: it is the item's first.
        since = datetime.now(UTC)
        with pytest.raises(WorkflowUpdateFailedError):
            await item.execute_update(
                AssistanceWorkflow.advance, AssistanceAction("allocate_from_stock", "provider-01")
            )
        # A quarter and more on the waitlist: one read a day, and a fresh run after
        # WAITLIST_READS_PER_RUN of them, which still knows where the item is.
        # (ten days at a time: the test server stalls on one sleep across a continue-as-new)
        for _ in range(WAITLIST_READS_PER_RUN // 10 + 1):
            await env.sleep(timedelta(days=10))
        now = await item.describe()
        assert now.run_id != first_run
        history = await client.get_workflow_handle(item.id, run_id=first_run).fetch_history()
        # About six events a read: a timer, its workflow task and the read's marker.
        assert len(history.events) < 7 * WAITLIST_READS_PER_RUN
        assert history.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
        waiting = await item.query(AssistanceWorkflow.state)
        assert waiting is not None
        assert (waiting.state, waiting.waitlist_position) == ("waitlisted", 1)

        # A place frees up; within a day the item, and the journey, know without anyone
        # asking.
        await staff_advance(cluster, holder, "cancel", "cw-12")
        await env.sleep(timedelta(days=1, hours=1))
        promoted = await item.query(AssistanceWorkflow.state)
        assert promoted is not None
        assert (promoted.state, promoted.waitlist_position) == ("fitting_assessment", 0)
        assert await journey_heard(journey, lambda a: a.state != "waitlisted") == promoted
        # Steps go on in the new run, as their own requests (the step count carried over).
        state = await deliver_wheelchair(item, "WC-2026-0077")
        assert state.terminal
        result = await asyncio.wait_for(journey.result(), 15)
    assert result.stage == "COMPLETED"
    assert [(a.state, a.terminal) for a in result.assistance] == [("followed_up", True)]
    # The new run numbered its steps on from the first run's: the refused step and the
    # three after it each went as a request of their own.
    async with cluster.channel("assistance", cluster.token_for("auditor", subject="aud-3")) as ch:
        listed = await audit_grpc.AuditServiceStub(ch).ListAuditEntries(
            audit_pb.ListAuditEntriesRequest(
                method="/mineaction.assistance.v1.AssistanceService/AdvanceAssistance",
                start_time=timestamp(since),
                page_size=500,
            ),
            timeout=10,
        )
    sent = {e.request_id: e.code for e in listed.audit_entries}
    steps = [sent.get(request_id_of(item.id, f"advance/{n}")) for n in range(1, 5)]
    assert steps == ["FAILED_PRECONDITION", "OK", "OK", "OK"], steps


async def start_with(
    cluster: Cluster,
    client: Client,
    task_queue: str,
    intake: eligibility_pb.SurvivorIntake,
    plans: list[AssistancePlan],
    loan: LoanRequest | None = None,
) -> Journey:
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    return await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=intake.survivor_id, case_worker_id="cw-12", assistance=plans, loan=loan
        ),
        id=journey_workflow_id(intake.survivor_id),
        task_queue=task_queue,
        search_attributes=initial_search_attributes(programme_year=1),
    )


async def needs_of(cluster: Cluster, survivor_id: str) -> list[str]:
    listed = await cluster.assistance.ListNeeds(
        assistance_pb.ListNeedsRequest(survivor_id=survivor_id, page_size=50)
    )
    return sorted(need.type_id for need in listed.needs)


async def closes_after_its_wheelchair(
    client: Client, journey: Journey, serial_number: str
) -> JourneyStatus:
    """A journey with no loan left waits for its wheelchair; delivered and followed up,
    the journey closes: its final status."""
    assert (await journey.describe()).status == WorkflowExecutionStatus.RUNNING
    item: Item = client.get_workflow_handle_for(
        AssistanceWorkflow.run, assistance_workflow_id(journey.id, "wheelchair")
    )
    await deliver_wheelchair(item, serial_number)
    result = await asyncio.wait_for(journey.result(), 15)
    assert [(a.state, a.terminal) for a in result.assistance] == [("followed_up", True)]
    return result


@pytest.mark.timeout(120)
async def test_a_journey_whose_loan_is_refused_follows_its_assistance_to_the_end(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """Income above the credit ceiling: no loan, but the wheelchair goes on, and the journey
    with it (it closed at once, leaving the item running with no journey, and a later
    journey could reserve a second wheelchair)."""
    client = own_time_skipping_env.client
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    plan = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    intake = saatli_fish_farmer(f"srv-{uuid.uuid4().hex[:12]}")
    intake.monthly_household_income_minor = 5 * 30_001  # above the ceiling per person
    async with build_worker(client, activities, task_queue):
        journey = await start_with(
            cluster, client, task_queue, intake, [plan],
            LoanRequest("fish_farming", 200_000, "fingerlings"),
        )  # fmt: skip
        await journey_heard(journey, lambda a: bool(a.assistance_id))
        status = await status_of(journey)
        assert status.stage == "ASSISTANCE_ONLY" and not status.loan_id, status
        result = await closes_after_its_wheelchair(client, journey, "WC-2026-0101")
    assert result.stage == "CLOSED_NOT_ELIGIBLE"


@pytest.mark.timeout(120)
async def test_a_journey_whose_loan_is_written_off_follows_its_assistance_to_the_end(
    cluster: Cluster, dev_client: Client, activities: JourneyActivities, task_queue: str
) -> None:
    """The loan written off while the wheelchair is still being fitted: the journey waits
    for the item (ASSISTANCE_ONLY) and only then closes as WRITTEN_OFF. It closed at once,
    leaving the item running with no journey, and a later journey could request a second
    wheelchair."""
    pool = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    plan = AssistancePlan("wheelchair", "baku-mobility-aids", pool, 1, {"seat_width_cm": 44})
    intake = saatli_fish_farmer(f"srv-{uuid.uuid4().hex[:12]}")
    async with build_worker(dev_client, activities, task_queue):
        journey = await start_with(
            cluster, dev_client, task_queue, intake, [plan],
            LoanRequest("fish_farming", 200_000, "fingerlings"),
        )  # fmt: skip
        await wait_for_stage(journey, "COMMITTEE_REVIEW")
        await journey.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-02", decision_ref="CM-2026-160"),
        )
        await wait_for_stage(journey, "GRACE")
        await journey.execute_update(
            SurvivorJourneyWorkflow.propose_write_off,
            WriteOffProposal("the farm was flooded for good", "lo-01"),
        )
        await journey.execute_update(
            SurvivorJourneyWorkflow.record_write_off,
            WriteOffDecision("the farm was flooded for good", "lo-01", "pm-01"),
        )
        status = await wait_for_stage(journey, "ASSISTANCE_ONLY")
        assert status.loan_status == "CLOSED_WRITTEN_OFF"
        result = await closes_after_its_wheelchair(dev_client, journey, "WC-2026-0160")
    assert result.stage == "WRITTEN_OFF"


@pytest.mark.timeout(120)
async def test_assistance_is_requested_only_for_programmes_the_survivor_is_eligible_for(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """No walking difficulty: the assessment finds the survivor not eligible for a
    wheelchair, so none is requested or reserved; the English course is requested."""
    client = own_time_skipping_env.client
    chairs = await own_pool(cluster, "baku-mobility-aids", "wheelchair", 1)
    course = await own_pool(cluster, "barda-vocational-centre", "english_course", 5, sessions=4)
    wheelchair = AssistancePlan(
        "wheelchair", "baku-mobility-aids", chairs, 1, {"seat_width_cm": 44}
    )
    english = AssistancePlan(
        "english_course", "barda-vocational-centre", course, 1, {"level": "a1"}
    )
    walking = saatli_fish_farmer(f"srv-{uuid.uuid4().hex[:12]}")
    walking.functioning[0].level = eligibility_pb.DIFFICULTY_LEVEL_NO_DIFFICULTY
    async with build_worker(client, activities, task_queue):
        journey = await start_with(cluster, client, task_queue, walking, [wheelchair, english])
        status = await status_of(journey)
        for _ in range(300):
            if any(a.assistance_id for a in status.assistance):
                break
            await asyncio.sleep(0.05)
            status = await status_of(journey)
        items = {a.type_id: a for a in status.assistance}
        assert (items["wheelchair"].state, items["wheelchair"].terminal) == ("not_eligible", True)
        assert not items["wheelchair"].assistance_id
        assert items["english_course"].assistance_id
        assert status.stage == "ASSISTANCE_ONLY"
        assert await needs_of(cluster, walking.survivor_id) == ["english_course"]
        await journey.terminate("the test is over")
        await client.get_workflow_handle(
            assistance_workflow_id(journey.id, "english_course")
        ).terminate("the test is over")

        # Only the wheelchair asked for: nothing to follow, the journey closes at once.
        alone = saatli_fish_farmer(f"srv-{uuid.uuid4().hex[:12]}")
        alone.functioning[0].level = eligibility_pb.DIFFICULTY_LEVEL_NO_DIFFICULTY
        journey = await start_with(cluster, client, task_queue, alone, [wheelchair])
        result = await asyncio.wait_for(journey.result(), 15)
    assert result.stage == "CLOSED_NOT_ELIGIBLE"
    assert [(a.state, a.terminal) for a in result.assistance] == [("not_eligible", True)]
    assert await needs_of(cluster, alone.survivor_id) == []


@pytest.mark.timeout(120)
async def test_an_item_whose_need_is_refused_ends_refused_and_the_journey_goes_on(
    cluster: Cluster,
    own_time_skipping_env: WorkflowEnvironment,
    activities: JourneyActivities,
    task_queue: str,
) -> None:
    """A plan of a type the assistance service does not have (a client starting the
    journey without the CLI's check): recording the need was refused, the item's workflow
    failed, and the journey waited for it for ever."""
    client = own_time_skipping_env.client
    intake = saatli_fish_farmer(f"srv-{uuid.uuid4().hex[:12]}")
    async with build_worker(client, activities, task_queue):
        journey = await start_with(
            cluster, client, task_queue, intake, [AssistancePlan("wheelchiar")]
        )
        refused = await journey_heard(journey, lambda a: a.state == "refused")
        assert (refused.type_id, refused.terminal, refused.need_id) == ("wheelchiar", True, "")
        # Why, as the service said it (it was only in the worker's log).
        assert refused.refusal == "UNKNOWN_TYPE", refused
        item = client.get_workflow_handle_for(
            AssistanceWorkflow.run, assistance_workflow_id(journey.id, "wheelchiar")
        )
        assert (await item.describe()).status == WorkflowExecutionStatus.COMPLETED
        deadline = time.monotonic() + 15
        while (await journey.describe()).status == WorkflowExecutionStatus.RUNNING:
            assert time.monotonic() < deadline, await status_of(journey)
            await asyncio.sleep(0.1)
        assert (await journey.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert await needs_of(cluster, intake.survivor_id) == []
