"""A crash in the middle of disbursement: a real worker process (`python -m workers`) is
killed with SIGKILL while a `disburse_tranche` activity is in flight, a new worker
process finishes the journey, and the ledger shows exactly one disbursement per tranche.

The kill is aimed, not left to chance: the test holds the loan's fund row (as a
concurrent disbursement would), so the first tranche's call waits inside the lending
service; the moment Temporal reports that attempt as started, the worker is frozen
(SIGSTOP, so its connection stays open), the fund released, and once lending has
committed the tranche the worker is killed (SIGKILL). So the outcome is the hard case:
the tranche is in the ledger, but Temporal never hears that the activity completed. The
attempt times out (30 s start-to-close, there are no heartbeats), a new attempt runs on
the new worker with the same request id (derived from the workflow id and the step), and
the lending service answers it from its idempotency record instead of disbursing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.config import Settings
from tests.conftest import Cluster
from tests.factories import register_request, saatli_fish_farmer
from tests.journey_helpers import wait_for_poller, wait_for_stage
from workers.journey.model import (
    CommitteeDecision,
    JourneyInput,
    LoanRequest,
    TranchePlan,
    journey_workflow_id,
)
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes

TRANCHES = (300_000, 200_000)


@contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m workers` as its own process; SIGKILLed at the end if still alive."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers"],
            # No metrics port: a cluster running on this machine may hold the worker's.
            env={**os.environ, "METRICS_PORT": "0", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def disbursement_started(
    handle: WorkflowHandle,  # type: ignore[type-arg]
    within: float = 30,
) -> int:
    """Poll until a `disburse_tranche` attempt is running on a worker; return its
    attempt number."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        described = await handle.describe()
        for pending in described.raw_description.pending_activities:
            if (
                pending.activity_type.name == "disburse_tranche"
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            ):
                return int(pending.attempt)
        await asyncio.sleep(0.005)
    raise AssertionError("no disburse_tranche activity was ever started")


@contextlib.asynccontextmanager
async def fund_held(cluster: Cluster, loan_id: str) -> AsyncIterator[None]:
    """Hold the loan's fund row, as a concurrent disbursement would: DisburseTranche for
    this loan waits until the block ends (approval does not touch the fund)."""
    db = cluster.hosts["lending"].db
    assert db is not None
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """SELECT 1 FROM lending.funds f JOIN lending.loans l ON l.fund_id = f.fund_id
               WHERE l.loan_id = $1 FOR UPDATE OF f""",
            loan_id,
        )
        yield


async def waiting_on_the_fund(cluster: Cluster, within: float = 30) -> None:
    """Poll until a lending transaction waits on a fund row's lock (DisburseTranche,
    blocked by `fund_held`)."""
    db = cluster.hosts["lending"].db
    assert db is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with db.pool.acquire() as conn:
            waiting = await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND query LIKE '%FROM funds%FOR UPDATE%'"""
            )
        if waiting:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the disbursement never reached lending's fund lock")


async def ledger_rows(cluster: Cluster, loan_id: str) -> tuple[list[int], list[int]]:
    """Read-only, straight from the lending schema: the tranche rows' amounts and the
    amounts of the DISBURSEMENT transactions (their receivable postings)."""
    db = cluster.hosts["lending"].db
    assert db is not None
    async with db.pool.acquire() as conn:
        tranches = await conn.fetch(
            "SELECT amount_minor FROM lending.tranches WHERE loan_id = $1 ORDER BY sequence",
            loan_id,
        )
        disbursements = await conn.fetch(
            """SELECT p.amount_minor FROM lending.ledger_transactions t
               JOIN lending.postings p ON p.transaction_id = t.transaction_id
               WHERE t.loan_id = $1 AND t.kind = 'DISBURSEMENT'
                 AND p.account = 'LOANS_RECEIVABLE'
               ORDER BY t.value_date, p.posting_id""",
            loan_id,
        )
    return [r["amount_minor"] for r in tranches], [r["amount_minor"] for r in disbursements]


@pytest.mark.timeout(150)
async def test_worker_killed_mid_disbursement_disburses_each_tranche_once(
    cluster: Cluster,
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    task_queue: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    client = dev_server_env.client
    survivor_id = f"srv-{uuid.uuid4().hex[:12]}"
    await cluster.eligibility.RegisterSurvivor(register_request(saatli_fish_farmer(survivor_id)))
    assert settings.database_url is not None
    env = {
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": client.namespace,
        "ELIGIBILITY_ADDRESS": cluster.address("eligibility"),
        "LENDING_ADDRESS": cluster.address("lending"),
        "ASSISTANCE_ADDRESS": cluster.address("assistance"),
        "DATABASE_URL": settings.database_url,
        "JOURNEY_TASK_QUEUE": task_queue,
        "MINEACTION_STATE_DIR": str(tmp_path),
        # the worker's token, signed with the test services' key
        "SERVICE_TOKEN_FILE": str(settings.effective_service_token_file),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
    }
    log = tmp_path / "workers.log"

    handle: WorkflowHandle | None = None  # type: ignore[type-arg]
    try:
        with worker_process(env, log) as first:
            await wait_for_poller(client, task_queue, first)
            handle = await client.start_workflow(
                SurvivorJourneyWorkflow.run,
                JourneyInput(
                    survivor_id=survivor_id,
                    case_worker_id="cw-09",
                    loan=LoanRequest(
                        "fish_farming",
                        sum(TRANCHES),
                        "1,000 fingerlings, then feed",
                        # Both tranches on the day of approval: disbursement runs back
                        # to back, so the kill lands inside it.
                        [
                            TranchePlan(TRANCHES[0], "1,000 fingerlings", "IN_KIND", 0),
                            TranchePlan(TRANCHES[1], "Fish feed", "IN_KIND", 0),
                        ],
                    ),
                ),
                id=journey_workflow_id(survivor_id),
                task_queue=task_queue,
                search_attributes=initial_search_attributes(programme_year=1),
            )
            status = await wait_for_stage(handle, "COMMITTEE_REVIEW", within=30)
            loan_id = status.loan_id

            # The fund row is held, so the first tranche's call waits inside lending:
            # the kill is sure to land while that activity is in flight.
            async with fund_held(cluster, loan_id):
                watching = asyncio.create_task(disbursement_started(handle))
                await handle.execute_update(
                    SurvivorJourneyWorkflow.record_committee_decision,
                    CommitteeDecision(approve=True, member_id="cm-05", decision_ref="CM-2026-077"),
                )
                attempt = await watching
                # The attempt has started on the worker; freeze it only once its call has
                # reached lending and waits there on the fund (the worker may not have
                # sent it yet when Temporal reports the attempt started).
                await waiting_on_the_fund(cluster)
                # Frozen, not yet killed: its connection stays open, so lending finishes
                # the call once the fund is released, and nobody hears the answer.
                first.send_signal(signal.SIGSTOP)
            for _ in range(600):  # up to 30 s on a busy machine
                if (await ledger_rows(cluster, loan_id))[0]:
                    break
                await asyncio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            assert first.returncode == -signal.SIGKILL
        in_ledger_at_kill = len((await ledger_rows(cluster, loan_id))[0])
        assert attempt == 1
        assert in_ledger_at_kill == 1, "the killed attempt's tranche should be committed"

        killed_at = time.monotonic()
        with worker_process(env, log) as second:
            await wait_for_poller(client, task_queue, second)
            # The killed attempt times out after its 30 s start-to-close; the retry runs here.
            status = await wait_for_stage(handle, "GRACE", "REPAYMENT", within=90)
        recovered_in = time.monotonic() - killed_at

        assert status.loan_status == "ACTIVE"
        loan = (await cluster.lending.GetLoan(lending_pb.GetLoanRequest(loan_id=loan_id))).loan
        assert loan.disbursed_minor == sum(TRANCHES)
        assert [(t.sequence, t.amount_minor) for t in loan.tranches] == [
            (1, TRANCHES[0]),
            (2, TRANCHES[1]),
        ]
        tranches, disbursements = await ledger_rows(cluster, loan_id)
        assert tranches == list(TRANCHES)
        assert disbursements == list(TRANCHES), "exactly one ledger disbursement per tranche"

        # The history tells which activity the kill cut short: that tranche completed on a
        # later attempt, on the new worker.
        attempts = [
            event.activity_task_started_event_attributes.attempt
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        assert max(attempts) >= 2, "no activity attempt was cut short by the kill"
        print(
            f"\nkill landed with {in_ledger_at_kill} of {len(TRANCHES)} tranches in the ledger "
            f"when it was killed; recovered in {recovered_in:.1f} s; "
            f"test ran {time.monotonic() - started:.1f} s"
        )
    finally:
        if handle is not None:
            with contextlib.suppress(RPCError):  # already closed: nothing to stop
                await handle.terminate("crash test over")
