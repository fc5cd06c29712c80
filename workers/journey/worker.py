"""The journey worker: connects to Temporal, registers the search attributes and polls
the journey task queue until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import structlog
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from services.common.config import ConfigError, Settings, load_settings
from services.common.db import Database, database_url
from services.common.logging import configure_logging
from services.common.metrics import metrics_port, temporal_runtime
from services.common.tracing import configure_tracing, temporal_interceptors
from workers.codec import KeyringError, data_converter
from workers.compiled_once import compile_once
from workers.journey import search_attributes
from workers.journey.activities import JourneyActivities
from workers.journey.loan_news import LoanNewsWorkflow, start_loan_news
from workers.journey.model import TASK_QUEUE
from workers.journey.workflows import AssistanceWorkflow, SurvivorJourneyWorkflow
from workers.notifications import outbox
from workers.notifications.channels import load_channel
from workers.simulation.workflows import BorrowerWorkflow

log = structlog.get_logger("mineaction.worker")

WORKFLOWS: Sequence[type] = (
    SurvivorJourneyWorkflow,
    AssistanceWorkflow,
    BorrowerWorkflow,
    LoanNewsWorkflow,
)

# Journeys kept in the worker's memory between tasks (the SDK's default is 1,000). Each
# costs about 200 KiB, half of it the sandbox's own copy of the workflow module; a journey
# beyond this many, the least recently active, is evicted and replays its history on its
# next task (days later for a journey parked at a committee or between instalments), so
# the worker stays near 250 MiB however many journeys are open.
MAX_CACHED_WORKFLOWS = 600

# Modules the sandbox shares with the host instead of importing afresh for every workflow
# run: stateless constants, dataclasses and the activity stubs. The heavy ones (protobuf,
# grpc, the services' stubs) already come through `imports_passed_through()`; the search
# attribute keys did not (a `from package import module` inside that block is still
# re-imported), costing every new run a module import. The workflow modules themselves stay
# sandboxed: re-imported per run, so non-deterministic calls in them are caught.
PASSTHROUGH_MODULES = (
    "workers.journey.search_attributes",
    "workers.journey.model",
    "workers.journey.activities",
)


def workflow_runner() -> SandboxedWorkflowRunner:
    compile_once(*WORKFLOWS)
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
    )


async def connect(
    settings: Settings, *, attempts: int | None = None, runtime: Runtime | None = None
) -> Client:
    """Connect, retrying while a freshly started Temporal comes up. Every payload the
    client sends or reads is encrypted with the cluster's keyring (workers.codec); a
    missing or malformed keyring raises ConfigError."""
    try:
        converter = data_converter(settings)
    except KeyringError as error:
        raise ConfigError(str(error)) from None
    attempts = attempts or settings.temporal_connect_timeout_seconds
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(
                settings.effective_temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=converter,
                runtime=runtime,
                interceptors=temporal_interceptors(),  # tracing, when it is on
            )
        except RuntimeError as error:
            if attempt == attempts:
                raise ConnectionError(
                    f"cannot reach Temporal at {settings.effective_temporal_address}: {error}"
                ) from None
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def build_worker(
    client: Client, activities: JourneyActivities, task_queue: str = TASK_QUEUE
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=activities.all(),
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        workflow_runner=workflow_runner(),
    )


async def open_outbox(settings: Settings) -> outbox.Outbox:
    """The worker's own schema holds the notification outbox."""
    db = await Database.open(
        database_url(settings),
        outbox.SCHEMA,
        outbox.MIGRATIONS,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
    )
    return outbox.Outbox(db)


def journey_activities(settings: Settings, box: outbox.Outbox) -> JourneyActivities:
    return JourneyActivities.from_settings(settings, box)


async def run(settings: Settings) -> None:
    # The worker's metrics port is served by the Temporal runtime's Prometheus exporter.
    try:
        runtime = temporal_runtime(settings)
    except ValueError as error:  # the exporter could not bind (another worker holds it)
        raise ConfigError(
            f"cannot serve metrics on {settings.metrics_host}:"
            f"{metrics_port(settings, 'worker')}: {error}; set METRICS_PORT to a free port "
            "(0 turns the worker's metrics off)"
        ) from None
    client = await connect(settings, runtime=runtime)
    added = await search_attributes.register(client, settings.temporal_namespace)
    if added:
        log.info("search attributes registered", added=added)
    box = await open_outbox(settings)
    channel = load_channel(settings.notification_channel, settings.state_dir)
    dispatcher = asyncio.create_task(box.run_dispatcher(channel))
    activities = journey_activities(settings, box)
    worker = build_worker(client, activities, settings.journey_task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        # Everything imported and built so far lives as long as the process: move it out
        # of the cyclic collector's reach, so a full collection scans only what the
        # workflows and activities allocate (it scanned the protobuf, gRPC and Temporal
        # modules each time, 30-80 ms with the event loop stopped).
        gc.collect()
        gc.freeze()
        # A full pass still scans every cached journey (the sandbox's copy of its module:
        # tens of thousands of objects), 25-90 ms with the event loop stopped, and at 20
        # journeys started per second the default thresholds ran one every ~8 s. Ten
        # times fewer full passes; young generations as before (larger ones made each
        # middle pass slower instead). Evicted journeys wait longer to be freed: the
        # worker measured 235 MiB with 1,000 open journeys either way.
        gc.set_threshold(700, 10, 100)
        await start_loan_news(client, settings.journey_task_queue)
        log.info("worker started", task_queue=settings.journey_task_queue)
        await stop.wait()
        log.info("shutdown requested")
    dispatcher.cancel()
    await activities.close()
    await box.db.close()
    log.info("worker stopped")


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"worker: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, process="worker")
    configure_tracing(settings, "worker")
    try:
        asyncio.run(run(settings))
    except ConfigError as error:
        print(f"worker: {error}", file=sys.stderr)
        exit_now(2)
    except ConnectionError as error:
        print(f"worker: {error}", file=sys.stderr)
        exit_now(1)


def exit_now(code: int) -> NoReturn:
    """End a process that has used a Temporal client, skipping interpreter finalization:
    the Temporal core's native threads, torn down while Python finalizes, can abort the
    process ("Fatal Python error: PyGILState_Release", exit 134) instead of exiting with
    `code`. Callers close what they opened first; output is flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
