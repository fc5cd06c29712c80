"""Personal data stays out of workflow ids, search attributes and logs.

The three services and the journey worker run as their own processes, exactly as
`make run` starts them, at LOG_LEVEL=debug with JSON logs, on the real dev server. A
survivor with a known birth date goes through intake and a journey to its first
disbursement with names, phone numbers and birth dates typed into every free-text field
(and a bad request or two carrying them). Then: every workflow execution listed from
Temporal's visibility store, with its search attributes, and every line the processes
logged, are searched for the known personal data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from services.common.auth import ROLES, mint_with_settings
from services.common.channels import open_channel
from services.common.config import Settings
from tests.e2e.test_payload_encryption import BIRTH_DATES, NAMES, PHONES, free_text, leaks
from tests.factories import pdate, register_request, saatli_fish_farmer
from tests.journey_helpers import deliver_wheelchair, wait_for_poller, wait_for_stage
from tests.ports import free_port
from workers.journey.model import (
    AssistancePlan,
    CommitteeDecision,
    JourneyInput,
    LoanRequest,
    TranchePlan,
    assistance_workflow_id,
    journey_workflow_id,
)
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes

SERVICES = ("eligibility", "lending", "assistance")


@contextmanager
def process(module: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m <module>`, stdout and stderr to `log`; SIGTERM, then SIGKILL, at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{address} exited; see {log}")
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{address} never served")


def log_records(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "with_refused_plan",
    [
        pytest.param(False, id="accepted-journey"),
        # A refusal's message names the rule the data broke, never the data itself.
        pytest.param(True, id="refused-plan"),
    ],
)
async def test_no_personal_data_in_workflow_ids_search_attributes_or_logs(
    with_refused_plan: bool,
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    task_queue: str,
    tmp_path: Path,
) -> None:
    client = dev_server_env.client
    assert settings.database_url is not None
    addresses = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    env = {
        **os.environ,  # PAYLOAD_KEYS_FILE: the tests' keyring
        "DATABASE_URL": settings.database_url,
        "MINEACTION_STATE_DIR": str(settings.state_dir),  # JWKS and the service token
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": client.namespace,
        "JOURNEY_TASK_QUEUE": task_queue,
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        **{f"{name.upper()}_ADDRESS": address for name, address in addresses.items()},
    }
    logs = {name: tmp_path / f"{name}.log" for name in (*SERVICES, "worker")}
    token = mint_with_settings(settings, subject="cw-07", roles=ROLES)
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    journey_id = journey_workflow_id(survivor_id)

    with ExitStack() as stack:
        procs = {
            name: stack.enter_context(process(f"services.{name}", env, logs[name]))
            for name in SERVICES
        }
        for name in SERVICES:
            await serving(addresses[name], procs[name], logs[name])
        worker = stack.enter_context(process("workers", env, logs["worker"]))
        await wait_for_poller(client, task_queue, worker)

        channel = open_channel(addresses["eligibility"], token)
        eligibility = eligibility_grpc.EligibilityServiceStub(channel)
        intake = saatli_fish_farmer(survivor_id)
        intake.date_of_birth.CopyFrom(pdate(BIRTH_DATES[0]))
        # Bad input carrying personal data is refused, and must not be logged either.
        bad = eligibility_pb.SurvivorIntake()
        bad.CopyFrom(intake)
        bad.district_code = f"{NAMES[0]} {PHONES[0]}"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await eligibility.RegisterSurvivor(register_request(bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await eligibility.RegisterSurvivor(register_request(intake))
        await channel.close()

        handle = await client.start_workflow(
            SurvivorJourneyWorkflow.run,
            JourneyInput(
                survivor_id=survivor_id,
                case_worker_id="cw-07",
                loan=LoanRequest(
                    "fish_farming",
                    500_000,
                    f"Lake restoration for {free_text(0)}",
                    [TranchePlan(500_000, f"Fingerlings for {NAMES[1]}", "IN_KIND", 0)],
                ),
                assistance=[
                    AssistancePlan(
                        "wheelchair",
                        "baku-mobility-aids",
                        "stock-wheelchairs-baku",
                        1,
                        {"seat_width_cm": 44},
                    ),
                    # Refused by the course's data schema: personal data where a level
                    # belongs. The refusal's message must not carry it into the logs.
                    *(
                        [
                            AssistancePlan(
                                "english_course",
                                "barda-vocational-centre",
                                "no-such-pool",
                                1,
                                {"level": f"{NAMES[0]} {PHONES[1]}"},
                            )
                        ]
                        if with_refused_plan
                        else []
                    ),
                ],
            ),
            id=journey_id,
            task_queue=task_queue,
            search_attributes=initial_search_attributes(programme_year=1),
        )
        await wait_for_stage(handle, "COMMITTEE_REVIEW", within=60)
        await handle.execute_update(
            SurvivorJourneyWorkflow.record_committee_decision,
            CommitteeDecision(approve=True, member_id="cm-03", decision_ref="CM-2026-077"),
        )
        chair = client.get_workflow_handle(assistance_workflow_id(journey_id, "wheelchair"))
        await deliver_wheelchair(chair, "WC-2026-0077", fitted_by=NAMES[2], notes=free_text(1))
        await wait_for_stage(handle, "GRACE", within=60)

        # Workflow ids and search attributes, as an operator lists them.
        executions = [e async for e in client.list_workflows(f'TaskQueue = "{task_queue}"')]
        for _ in range(50):
            if len(executions) >= 2:
                break
            await asyncio.sleep(0.1)
            executions = [e async for e in client.list_workflows(f'TaskQueue = "{task_queue}"')]
        assert {e.id for e in executions} >= {journey_id, chair.id}
        for execution in executions:
            assert not leaks(execution.id.encode()), execution.id
            raw = execution.raw_info.search_attributes.SerializeToString()
            assert not leaks(raw), f"{execution.id}: personal data in search attributes"
            assert not leaks(str(execution.typed_search_attributes).encode())
            assert not leaks(execution.raw_info.memo.SerializeToString())
        attributes = {
            p.key.name: p.value
            for e in executions
            if e.id == journey_id
            for p in e.typed_search_attributes
        }
        assert attributes.get("DistrictCode") == "saatli"  # the attributes were really read

        await handle.terminate("the test ends at the first disbursement")
        # SIGTERM every process now, so their last lines are in the logs too.
    await_all = [p for p in procs.values()] + [worker]
    assert all(p.returncode is not None for p in await_all)

    for name, log in logs.items():
        found = leaks(log.read_bytes())
        assert not found, f"{name} logged personal data {found}: see {log}"
    # The capture is real: the processes logged each call, with workflow ids, at debug.
    records = [r for log in logs.values() for r in log_records(log)]
    events = {str(r.get("event")) for r in records}
    methods = {str(r.get("method")) for r in records}
    assert "rpc" in events and "worker started" in events
    assert any("RegisterSurvivor" in m for m in methods)
    assert any("SubmitLoanApplication" in m for m in methods)
    # ...including the journey's own calls, made by the worker's activities.
    assert any("AssessEligibility" in m for m in methods)
    assert any("RequestAssistance" in m for m in methods)
