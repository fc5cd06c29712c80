"""Driving journeys in tests: a worker on a given Temporal environment, pools of our own,
and stepping time-skipped time until a journey reaches a stage."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from google.protobuf import struct_pb2
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.type.v1 import localized_text_pb2
from tests.conftest import Cluster
from tests.factories import (
    need_request,
    new_id,
    register_request,
    register_survivor,
    request_id,
    saatli_fish_farmer,
)
from workers.journey.model import (
    AssistanceAction,
    AssistanceState,
    CommitteeDecision,
    JourneyInput,
    JourneyStatus,
    LoanRequest,
    journey_workflow_id,
)
from workers.journey.workflows import (
    AssistanceWorkflow,
    SurvivorJourneyWorkflow,
    initial_search_attributes,
)


async def own_pool(
    cluster: Cluster, provider_id: str, type_id: str, capacity: int, sessions: int = 0
) -> str:
    """A capacity pool only this test uses, so other tests cannot empty it."""
    pool_id = new_id(f"pool-{type_id.replace('_', '-')}")
    await cluster.assistance.CreateCapacityPool(
        assistance_pb.CreateCapacityPoolRequest(
            request_id=request_id(),
            pool_id=pool_id,
            provider_id=provider_id,
            type_id=type_id,
            capacity=capacity,
            sessions=sessions,
            name=localized_text_pb2.LocalizedText(
                en=f"Test pool {pool_id}", az=f"Test hovuzu {pool_id}"
            ),
        )
    )
    return pool_id


def follow_up_due(months: int) -> Callable[[JourneyStatus], bool]:
    """Done when the journey awaits the answers of its +`months` follow-up."""
    return lambda status: status.follow_up_due == months


async def status_of(handle: WorkflowHandle) -> JourneyStatus:  # type: ignore[type-arg]
    return await handle.query(SurvivorJourneyWorkflow.status)


async def wait_until(
    handle: WorkflowHandle,  # type: ignore[type-arg]
    done: Callable[[JourneyStatus], bool],
    what: str,
    *,
    within: float = 15.0,
) -> JourneyStatus:
    """Poll the status query (real time) until the journey's status satisfies `done`."""
    deadline = time.monotonic() + within
    status: JourneyStatus | None = None
    while time.monotonic() < deadline:
        status = await status_of(handle)
        if done(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"journey never {what}; last status {status}")


async def wait_for_stage(
    handle: WorkflowHandle,  # type: ignore[type-arg]
    *stages: str,
    within: float = 15.0,
) -> JourneyStatus:
    """Poll the status query (real time) until the journey is in one of `stages`."""
    return await wait_until(
        handle, lambda s: s.stage in stages, f"reached {' or '.join(stages)}", within=within
    )


async def skip_until(
    env: WorkflowEnvironment,
    handle: WorkflowHandle,  # type: ignore[type-arg]
    done: Callable[[JourneyStatus], bool],
    *,
    step: timedelta = timedelta(days=10),
    limit: timedelta = timedelta(days=2000),
) -> JourneyStatus:
    """Advance time-skipped time in steps until the journey's status satisfies `done`."""
    waited = timedelta(0)
    while True:
        status = await status_of(handle)
        if done(status):
            return status
        if waited > limit:
            raise AssertionError(f"journey not there after {waited}: {status}")
        await env.sleep(step)
        waited += step


async def wait_for_poller(client: Client, task_queue: str, proc: subprocess.Popen[bytes]) -> None:
    """Until a worker process polls the task queue (its start-up takes a few seconds)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with code {proc.returncode}"
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        if described.pollers:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the worker never polled its task queue")


async def someone_holds(
    cluster: Cluster, pool: str, *, survivor_id: str = "", case_worker: str = "cw-12"
) -> str:
    """Another survivor takes the pool's only wheelchair (at baku-mobility-aids); their
    assistance id."""
    need = (
        await cluster.assistance.RecordNeed(
            need_request(
                survivor_id or await register_survivor(cluster.eligibility),
                assessed_by=case_worker,
            )
        )
    ).need
    seat = struct_pb2.Struct()
    seat.update({"seat_width_cm": 42})
    holder = (
        await cluster.assistance.RequestAssistance(
            assistance_pb.RequestAssistanceRequest(
                request_id=request_id(),
                need_id=need.need_id,
                provider_id="baku-mobility-aids",
                capacity_pool_id=pool,
                data=seat,
                referral_consent=True,
                requested_by=case_worker,
            )
        )
    ).assistance
    assert holder.waitlist_position == 0, holder
    return str(holder.assistance_id)


async def requested(
    item: WorkflowHandle,  # type: ignore[type-arg]
    *,
    within: float = 30.0,
) -> AssistanceState:
    """An assistance item's state once it has been requested from its provider: until
    then it refuses steps (real time)."""
    deadline = time.monotonic() + within
    while True:
        try:
            state = await item.query(AssistanceWorkflow.state)
        except RPCError:  # the item's workflow is not started yet
            state = None
        if state is not None:
            return state
        assert time.monotonic() < deadline, f"{item.id} was never requested"
        await asyncio.sleep(0.05)


async def deliver_wheelchair(
    item: WorkflowHandle,  # type: ignore[type-arg]
    serial_number: str,
    *,
    fitted_by: str = "pt-01",
    notes: str = "fits well",
) -> AssistanceState:
    """A wheelchair item's provider steps from its fitting to its follow-up (its end)."""
    state: AssistanceState | None = await requested(item)
    for action, data in (
        ("allocate_from_stock", {}),
        ("deliver", {"serial_number": serial_number, "fitted_by": fitted_by}),
        ("follow_up", {"notes": notes}),
    ):
        state = await item.execute_update(
            AssistanceWorkflow.advance, AssistanceAction(action, "provider-01", data)
        )
    assert state is not None
    return state


CASE_WORKER = "cw-31"


async def start_journey(
    cluster: Cluster,
    client: Client,
    task_queue: str,
    loan: LoanRequest | None = None,
) -> WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus]:
    """A fish-farming loan journey (of 500,000 qəpik at once unless `loan` says otherwise)
    for a survivor registered for it."""
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    return await client.start_workflow(
        SurvivorJourneyWorkflow.run,
        JourneyInput(
            survivor_id=survivor_id,
            case_worker_id=CASE_WORKER,
            loan=loan or LoanRequest("fish_farming", 500_000, "1,000 fingerlings and feed"),
        ),
        id=journey_workflow_id(survivor_id),
        task_queue=task_queue,
        search_attributes=initial_search_attributes(programme_year=1),
    )


async def approved_journey(
    cluster: Cluster, client: Client, task_queue: str
) -> tuple[WorkflowHandle[SurvivorJourneyWorkflow, JourneyStatus], str]:
    """A journey whose loan is approved and disbursed: in grace, an instalment ahead."""
    handle = await start_journey(cluster, client, task_queue)
    await wait_for_stage(handle, "COMMITTEE_REVIEW")
    await handle.execute_update(
        SurvivorJourneyWorkflow.record_committee_decision,
        CommitteeDecision(approve=True, member_id="cm-02", decision_ref="CM-2026-102"),
    )
    status = await wait_for_stage(handle, "GRACE")
    assert status.next_due_date and status.next_due_minor > 0
    return handle, status.loan_id
