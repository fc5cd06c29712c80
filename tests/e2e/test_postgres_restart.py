"""PostgreSQL restarts in the middle of a run: the lending service keeps its process, calls
made while the database is down fail fast with a clear UNAVAILABLE, the service serves
again once the database is back, and no acknowledged write is lost.

The test starts an embedded PostgreSQL of its own (the session's shared one must not go
down under other tests), runs the lending service in-process against it, drives a steady
stream of SubmitLoanApplication calls from several clients, stops the server with
`pg_ctl stop -m fast` (what a restart or failover does to open connections) and starts it
again on the same data folder and socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio

from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common.auth import ensure_dev_credentials
from services.common.channels import default_token, open_channel
from services.common.config import load_settings
from services.common.logging import configure_logging
from services.common.server import ServiceHost
from services.lending import ledger
from services.lending.service import SPEC as LENDING
from tests.factories import new_id, request_id
from tests.grpc_errors import details

WRITERS = 4
CALL_DEADLINE_SECONDS = 5.0
OUTAGE_SECONDS = 2.0


class EmbeddedPostgres:
    """A pgserver instance that the test can stop and start again in place: same data
    folder, same unix socket, so the same DATABASE_URL.

    pg_ctl runs through `runuser` when pgserver runs PostgreSQL as another user (as root):
    subprocess's own user switch forks the whole process, and a fork while gRPC threads
    run can crash the child; without it subprocess uses vfork, which is safe."""

    def __init__(self, pgdata: Path) -> None:
        import pgserver

        self.server: Any = pgserver.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
        self.pgdata = pgdata
        self.url = str(self.server.get_uri())
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        self.pg_ctl = str(pgserver._commands.POSTGRES_BIN_PATH / "pg_ctl")

    def _run(self, *args: str) -> None:
        command = [self.pg_ctl, "-D", str(self.pgdata), "-w", *args]
        if self.server.system_user is not None:
            command = ["runuser", "-u", self.server.system_user, "--", *command]
        with tempfile.TemporaryFile() as out:
            # Files, not pipes: the postmaster inherits them and would hold a pipe open.
            done = subprocess.run(command, stdout=out, stderr=out, timeout=60, check=False)
            out.seek(0)
            assert done.returncode == 0, f"{args[-1]} failed: {out.read().decode()}"

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, as in a restart or failover."""
        self._run("-m", "fast", "stop")

    def start(self) -> None:
        self._run("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def cleanup(self) -> None:
        with contextlib.suppress(AssertionError):  # already stopped
            self._run("-m", "immediate", "stop")
        self.server.cleanup()


@pytest.fixture
def postgres() -> Iterator[EmbeddedPostgres]:
    # A folder of its own rather than pytest's tmp_path: pytest prunes old tmp_path roots,
    # which another pytest run on the same machine may do under a running server.
    with tempfile.TemporaryDirectory(prefix="mineaction-pg-restart-") as folder:
        pg = EmbeddedPostgres(Path(folder) / "pg")
        yield pg
        pg.cleanup()


@pytest_asyncio.fixture
async def lending(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> AsyncIterator[tuple[ServiceHost, pb_grpc.LendingServiceStub]]:
    settings = load_settings(
        DATABASE_URL=postgres.url,
        MINEACTION_STATE_DIR=str(tmp_path / "state"),
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        SHUTDOWN_GRACE_SECONDS=1,
        METRICS_PORT=0,  # an in-process host; a running cluster may hold 9101-9104
    )
    configure_logging(settings, process="tests")
    ensure_dev_credentials(settings)  # the JWKS the service checks, and a token for us
    host = ServiceHost(LENDING, settings, address="127.0.0.1:0")
    await host.start()
    channel = open_channel(f"127.0.0.1:{host.port}", default_token(settings))
    yield host, pb_grpc.LendingServiceStub(channel)
    await channel.close()
    await host.stop(grace=1)


def application(fund_id: str) -> pb.SubmitLoanApplicationRequest:
    """A new survivor's application: one acknowledged call is one loan row."""
    return pb.SubmitLoanApplicationRequest(
        request_id=request_id(),
        survivor_id=new_id("srv"),
        product_id="small_trade",
        amount_minor=120_000,
        currency_code="AZN",
        district_code="saatli",
        borrower_sex=sex_pb2.SEX_FEMALE,
        borrower_age_band=age_band_pb2.AGE_BAND_35_59,
        purpose="restock the shop",
        submitted_by="cw-01",
        fund_id=fund_id,
    )


@dataclass
class Failure:
    request: pb.SubmitLoanApplicationRequest
    code: grpc.StatusCode
    message: str
    reason: str
    seconds: float
    at: float


@dataclass
class Run:
    """What the clients saw: every acknowledged application and every refused one."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # request_id -> loan_id
    requests: dict[str, pb.SubmitLoanApplicationRequest] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)


async def writer(
    stub: pb_grpc.LendingServiceStub, fund_id: str, run: Run, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        request = application(fund_id)
        started = time.monotonic()
        try:
            response = await stub.SubmitLoanApplication(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            info, _ = details(error)
            run.failures.append(
                Failure(
                    request,
                    error.code(),
                    error.details() or "",
                    info.reason if info is not None else "",
                    time.monotonic() - started,
                    time.monotonic(),
                )
            )
            await asyncio.sleep(0.05)
        else:
            run.acknowledged[request.request_id] = response.loan.loan_id
            run.requests[request.request_id] = request
            run.acked_at.append(time.monotonic())
            await asyncio.sleep(0.01)


async def wait_for_acks(run: Run, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(run.acknowledged) < count:
        assert time.monotonic() < deadline, (
            f"only {len(run.acknowledged)} of {count} applications acknowledged in {within} s; "
            f"last failures: {[(f.code, f.message) for f in run.failures[-3:]]}"
        )
        await asyncio.sleep(0.05)


async def test_postgres_restart_mid_run_loses_no_acknowledged_write(
    postgres: EmbeddedPostgres, lending: tuple[ServiceHost, pb_grpc.LendingServiceStub]
) -> None:
    host, stub = lending
    assert host.db is not None
    fund_id = new_id("fund")
    async with host.db.transaction() as conn:
        await ledger.open_fund(
            conn,
            fund_id=fund_id,
            name_en="Restart test fund",
            name_az="Yenidən başlatma fondu",
            committed_capital_minor=100_000_000,
            committed_on=date(2025, 1, 1),
        )

    run = Run()
    stop = asyncio.Event()
    writers = [asyncio.create_task(writer(stub, fund_id, run, stop)) for _ in range(WRITERS)]
    try:
        await wait_for_acks(run, 30, within=20)

        # The outage: PostgreSQL goes down under a steady stream of writes.
        down_at = time.monotonic()
        await asyncio.to_thread(postgres.stop)
        stopped_at = time.monotonic()
        acked_before = len(run.acknowledged)
        await asyncio.sleep(OUTAGE_SECONDS)
        failed_during = len(run.failures)
        acked_during = len(run.acknowledged) - acked_before
        await asyncio.to_thread(postgres.start)
        up_at = time.monotonic()

        # The same service process serves again, without a restart of its own.
        await wait_for_acks(run, len(run.acknowledged) + 30, within=20)
        first_ack_after = min(t for t in run.acked_at if t > up_at)
    finally:
        stop.set()
        await asyncio.gather(*writers)

    print(
        f"\noutage {up_at - down_at:.2f} s (stop took {stopped_at - down_at:.2f} s); "
        f"first acknowledgement {first_ack_after - up_at:.3f} s after the server was back; "
        f"{len(run.acknowledged)} acknowledged, {len(run.failures)} refused, slowest refusal "
        f"{max(f.seconds for f in run.failures):.3f} s"
    )

    # (a) While the database was down, calls were refused quickly and clearly.
    assert acked_during == 0
    assert failed_during >= WRITERS, "the writers should have met the outage"
    for failure in run.failures:
        assert failure.code == grpc.StatusCode.UNAVAILABLE, (failure.code, failure.message)
        # DATABASE_UNAVAILABLE: the change was not made, or its commit was cut off.
        # AUDIT_UNAVAILABLE: the change was made but could not be audited, so it was not
        # acknowledged either. Both say how to retry.
        assert failure.reason in {"DATABASE_UNAVAILABLE", "AUDIT_UNAVAILABLE"}, failure.reason
        if failure.reason == "DATABASE_UNAVAILABLE":
            assert failure.message.startswith("database unavailable: "), failure.message
        assert "same request_id" in failure.message
        assert failure.seconds < 2.0, f"a refusal took {failure.seconds:.2f} s"
        assert down_at - 1.0 <= failure.at <= up_at + 2.0, "a refusal outside the outage"

    # (b) The same process answered again soon after the server was back.
    assert first_ack_after - up_at < 5.0

    # (c) Every acknowledged write is in the database, and nothing else is.
    conn = await asyncpg.connect(postgres.url, server_settings={"search_path": "lending"})
    try:

        async def loans_of(survivor_ids: list[str]) -> dict[str, list[str]]:
            rows = await conn.fetch(
                "SELECT survivor_id, loan_id FROM loans WHERE survivor_id = ANY($1::text[])",
                survivor_ids,
            )
            found: dict[str, list[str]] = {}
            for row in rows:
                found.setdefault(row["survivor_id"], []).append(row["loan_id"])
            return found

        stored = await loans_of([r.survivor_id for r in run.requests.values()])
        for rid, loan_id in run.acknowledged.items():
            assert stored.get(run.requests[rid].survivor_id) == [loan_id], (
                f"acknowledged loan {loan_id} is missing or duplicated"
            )

        # Retrying every refused call with its own request_id gives exactly one effect,
        # whether or not the refused attempt had reached the database.
        retried: dict[str, str] = {}
        for failure in run.failures:
            first = await stub.SubmitLoanApplication(failure.request, timeout=5)
            again = await stub.SubmitLoanApplication(failure.request, timeout=5)
            assert again.loan.loan_id == first.loan.loan_id
            retried[failure.request.survivor_id] = first.loan.loan_id
        after_retry = await loans_of(list(retried))
        assert after_retry == {s: [loan_id] for s, loan_id in retried.items()}

        # An acknowledged call repeated after the restart answers the same, no new row.
        some = next(iter(run.acknowledged))
        repeated = await stub.SubmitLoanApplication(run.requests[some], timeout=5)
        assert repeated.loan.loan_id == run.acknowledged[some]

        total = await conn.fetchval("SELECT count(*) FROM loans WHERE fund_id = $1", fund_id)
        assert total == len(run.acknowledged) + len(retried)
    finally:
        await conn.close()
