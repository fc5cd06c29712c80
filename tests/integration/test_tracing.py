"""Tracing, when an operator turns it on: one trace follows a journey from the call that
starts it, through the workflow and its activities, into the services' handlers; and log
lines written inside a span carry its ids."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from services.assistance.service import SPEC as ASSISTANCE
from services.common.channels import service_token
from services.common.config import Settings
from services.common.logging import add_trace_ids
from services.common.server import ServiceHost
from services.common.tracing import (
    configure_tracing,
    shutdown_tracing,
    temporal_interceptors,
    tracer,
)
from services.eligibility.service import SPEC as ELIGIBILITY
from services.lending.service import SPEC as LENDING
from tests.conftest import Cluster
from tests.factories import register_request, saatli_fish_farmer
from tests.journey_helpers import wait_for_stage
from workers.journey.activities import JourneyActivities
from workers.journey.model import JourneyInput, LoanRequest, journey_workflow_id
from workers.journey.worker import build_worker
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes
from workers.notifications.outbox import Outbox


@pytest_asyncio.fixture
async def traced(settings: Settings) -> AsyncIterator[InMemorySpanExporter]:
    """Tracing on for this test only, into memory."""
    exporter = InMemorySpanExporter()
    configure_tracing(settings, "tests", exporter=exporter)
    yield exporter
    shutdown_tracing()


@pytest.mark.timeout(120)
async def test_one_trace_follows_a_journey_into_the_services(
    traced: InMemorySpanExporter,
    settings: Settings,
    cluster: Cluster,
    outbox: Outbox,
    dev_server_env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    # Services, worker and client started with tracing on, as TRACING=otlp starts them.
    hosts = [
        ServiceHost(spec, settings, address="127.0.0.1:0")
        for spec in (ELIGIBILITY, LENDING, ASSISTANCE)
    ]
    for host in hosts:
        await host.start()
    base = dev_server_env.client
    client = Client(
        base.service_client,
        namespace=base.namespace,
        data_converter=base.data_converter,
        interceptors=temporal_interceptors(),
    )
    eligibility, lending, assistance = (f"127.0.0.1:{host.port}" for host in hosts)
    activities = JourneyActivities(
        eligibility, lending, assistance, outbox, token=service_token(settings)
    )
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    try:
        await cluster.eligibility.RegisterSurvivor(
            register_request(saatli_fish_farmer(survivor_id))
        )
        async with build_worker(client, activities, task_queue):
            handle = await client.start_workflow(
                SurvivorJourneyWorkflow.run,
                JourneyInput(
                    survivor_id=survivor_id,
                    case_worker_id="cw-01",
                    loan=LoanRequest("fish_farming", 500_000, "1,000 fingerlings and feed"),
                ),
                id=journey_workflow_id(survivor_id),
                task_queue=task_queue,
                search_attributes=initial_search_attributes(programme_year=1),
            )
            await wait_for_stage(handle, "COMMITTEE_REVIEW")
    finally:
        await activities.close()
        for host in hosts:
            await host.stop(grace=1)

    spans = traced.get_finished_spans()
    start = next(s for s in spans if s.name == "StartWorkflow:SurvivorJourneyWorkflow")
    assert start.context is not None
    in_trace = [
        s for s in spans if s.context is not None and s.context.trace_id == start.context.trace_id
    ]
    handled = {s.name for s in in_trace if s.kind == SpanKind.SERVER}
    # The services' handlers, reached from the journey's activities, in the same trace.
    assert "/mineaction.eligibility.v1.EligibilityService/AssessEligibility" in handled
    assert "/mineaction.lending.v1.LendingService/SubmitLoanApplication" in handled
    assert any(s.name.startswith("RunWorkflow:SurvivorJourneyWorkflow") for s in in_trace)
    # The server span continues the client span the activity opened: a parent, not a new root.
    server = next(
        s
        for s in in_trace
        if s.name.endswith("/SubmitLoanApplication") and s.kind == SpanKind.SERVER
    )
    assert server.parent is not None


def test_log_lines_inside_a_span_carry_its_ids(settings: Settings) -> None:
    configure_tracing(settings, "tests", exporter=InMemorySpanExporter())
    try:
        outside = add_trace_ids(None, "warning", {"event": "outside"})
        with tracer("tests").start_as_current_span("work") as span:
            inside = add_trace_ids(None, "warning", {"event": "inside"})
    finally:
        shutdown_tracing()
    assert "trace_id" not in outside
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert json.dumps(inside)  # plain values, fit for the JSON renderer
