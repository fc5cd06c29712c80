"""`make run`'s launcher, run as a user would: it starts every part, prints where each
one is, keeps its data across restarts, stops cleanly on Ctrl-C and refuses to start
half a cluster when a port is taken."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.run import pair_with_database
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from tests.conftest import with_database
from tests.factories import register_request
from tests.ports import closed_port, free_port, free_port_block

SERVICES = ("ELIGIBILITY", "LENDING", "ASSISTANCE")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def dev_token(env: dict[str, str]) -> tuple[tuple[str, str]]:
    token = (Path(env["MINEACTION_STATE_DIR"]) / "dev-token").read_text().strip()
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def cluster_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
    env.update(
        MINEACTION_STATE_DIR=str(tmp_path / "state"),
        TEMPORAL_PORT=str(free_port()),
        TEMPORAL_UI_PORT=str(free_port()),
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        METRICS_BASE_PORT=str(free_port_block(4)),
        CODEC_SERVER_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    for name in SERVICES:
        env[f"{name}_ADDRESS"] = f"127.0.0.1:{free_port()}"
    return env


class RunningCluster:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cluster"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner = self.read_until("Journey worker")

    def read_until(self, marker: str, timeout: float = 90) -> str:
        assert self.process.stdout is not None
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError(f"cluster exited early: {self._own_errors()}")
            seen.append(line)
            if marker in line:
                return "".join(seen)
        raise AssertionError(f"no {marker!r} within {timeout}s")

    def _own_errors(self) -> str:
        """The launcher's and services' messages, without the Temporal server's chatter."""
        assert self.process.stderr is not None
        lines = self.process.stderr.read().splitlines()
        return "\n".join(line for line in lines if "level=" not in line)

    def ports(self) -> list[int]:
        ports = [int(self.env["TEMPORAL_PORT"]), int(self.env["TEMPORAL_UI_PORT"])]
        ports += [int(self.env[f"{n}_ADDRESS"].rsplit(":", 1)[1]) for n in SERVICES]
        ports.append(int(self.env["CODEC_SERVER_ADDRESS"].rsplit(":", 1)[1]))
        base = int(self.env["METRICS_BASE_PORT"])
        return ports + [base + offset for offset in range(4)]

    def stop(self) -> tuple[int, list[psutil.Process]]:
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=5)
        return code, alive


@pytest.fixture
def start_cluster(cluster_env: dict[str, str]) -> Iterator[Callable[[], RunningCluster]]:
    """Starts clusters on this test's ports; kills any the test failed to stop."""
    started: list[RunningCluster] = []

    def start() -> RunningCluster:
        started.append(RunningCluster(cluster_env))
        return started[-1]

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()


@pytest.mark.timeout(240)
def test_cluster_runs_stops_cleanly_and_resumes_its_data(
    start_cluster: Callable[[], RunningCluster], cluster_env: dict[str, str]
) -> None:
    first = start_cluster()
    for name in ("Temporal Web UI", "Eligibility gRPC", "Lending gRPC", "Assistance gRPC"):
        assert name in first.banner
    # A new operator finds live journeys at once, the Saatli fish farmer among them.
    assert "journey-demo-saatli-001" in first.read_until("Demo cohort started")
    for name in SERVICES:
        with grpc.insecure_channel(cluster_env[f"{name}_ADDRESS"]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    ui = urllib.request.urlopen(f"http://127.0.0.1:{cluster_env['TEMPORAL_UI_PORT']}/", timeout=10)
    assert ui.status == 200

    registration = register_request()
    survivor_id = registration.intake.survivor_id
    with grpc.insecure_channel(cluster_env["ELIGIBILITY_ADDRESS"]) as channel:
        eligibility = eligibility_grpc.EligibilityServiceStub(channel)
        # No token, no service; the dev token the launcher wrote opens every RPC.
        with pytest.raises(grpc.RpcError) as refused:
            eligibility.RegisterSurvivor(registration, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        eligibility.RegisterSurvivor(registration, timeout=10, metadata=dev_token(cluster_env))
    assert_metrics_served(cluster_env)
    assert_codec_server_decrypts(cluster_env)
    assert_a_crashed_part_is_started_again(first, cluster_env)

    code, orphans = first.stop()
    assert code == 0
    assert orphans == []
    assert not any(port_open(port) for port in first.ports())

    second = start_cluster()
    with grpc.insecure_channel(cluster_env["ELIGIBILITY_ADDRESS"]) as channel:
        survivor = (
            eligibility_grpc.EligibilityServiceStub(channel)
            .GetSurvivor(
                eligibility_pb.GetSurvivorRequest(survivor_id=survivor_id),
                timeout=10,
                metadata=dev_token(cluster_env),
            )
            .survivor
        )
    assert survivor.intake.district_code == "saatli"
    code, orphans = second.stop()
    assert code == 0
    assert orphans == []


def assert_a_crashed_part_is_started_again(running: RunningCluster, env: dict[str, str]) -> None:
    """One process killed (lending, here) stopped the whole cluster; it is started again,
    and answers as before."""
    lending = _lending_process(running)
    lending.kill()
    lending.wait(timeout=10)
    deadline = time.monotonic() + 60
    while True:
        assert running.process.poll() is None, "the cluster stopped"
        try:
            with grpc.insecure_channel(env["LENDING_ADDRESS"]) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            if health.status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "lending was not started again"
        time.sleep(0.5)
    assert _lending_process(running).pid != lending.pid


def _lending_process(running: RunningCluster) -> psutil.Process:
    """The cluster's one lending service process."""
    [lending] = [
        child
        for child in psutil.Process(running.process.pid).children()
        if "services.lending" in child.cmdline()
    ]
    return lending


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def assert_metrics_served(env: dict[str, str]) -> None:
    """Each service counts its calls by method and code; the worker's port carries the
    Temporal SDK's runtime metrics."""
    base = int(env["METRICS_BASE_PORT"])
    eligibility = scrape(base)
    service = 'service="mineaction.eligibility.v1.EligibilityService"'
    for code in ("OK", "UNAUTHENTICATED"):
        counted = [
            line
            for line in eligibility.splitlines()
            if line.startswith("mineaction_rpc_requests_total{")
            and 'method="RegisterSurvivor"' in line
            and f'code="{code}"' in line
            and service in line
        ]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, code
    assert "mineaction_rpc_duration_seconds_bucket{" in eligibility
    assert 'mineaction_db_pool_connections{service="eligibility",state="open"}' in eligibility
    assert 'service="mineaction.lending.v1.LendingService"' in scrape(base + 1)
    assert "mineaction_db_pool_connections" in scrape(base + 2)
    worker = scrape(base + 3)
    assert "temporal_workflow_task" in worker or "temporal_request" in worker


def assert_codec_server_decrypts(env: dict[str, str]) -> None:
    """The Web UI's codec endpoint round-trips a payload under the cluster's keyring."""
    address = env["CODEC_SERVER_ADDRESS"]
    plain = {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "eyJhIjogMX0="}

    def post(path: str, payloads: Sequence[object]) -> list[dict[str, object]]:
        request = urllib.request.Request(
            f"http://{address}/{path}",
            data=json.dumps({"payloads": payloads}).encode(),
            headers={"Content-Type": "application/json", "X-Namespace": "default"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return list(json.loads(response.read())["payloads"])

    encrypted = post("encode", [plain])
    assert encrypted[0] != plain
    assert post("decode", encrypted) == [plain]


def test_taken_port_is_named_and_nothing_starts(cluster_env: dict[str, str]) -> None:
    taken = int(cluster_env["LENDING_ADDRESS"].rsplit(":", 1)[1])
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "-m", "cluster"],
            env=cluster_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {taken} (needed by lending)" in result.stderr
    assert "Nothing was started" in result.stderr
    assert not port_open(int(cluster_env["TEMPORAL_PORT"]))


async def test_a_state_folder_is_paired_with_its_database(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """The journeys in a state folder refer to one database's loans and survivors: a start
    that points the folder at another database is refused, saying what to do (it started
    "healthy", and every journey then failed on a loan that does not exist)."""
    names = [f"mineaction_pair_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = await asyncpg.connect(postgres_server_url)
    try:
        for name in names:
            await admin.execute(f"CREATE DATABASE {name}")
        first, second = (with_database(postgres_server_url, name) for name in names)
        state, other_state = tmp_path / "state", tmp_path / "other"
        state.mkdir()
        other_state.mkdir()
        await asyncio.to_thread(pair_with_database, state, first)  # both new: paired
        await asyncio.to_thread(pair_with_database, state, first)  # restarted: the same
        with pytest.raises(RuntimeError) as refused:  # the old folder, a new database
            await asyncio.to_thread(pair_with_database, state, second)
        assert "belong to another database" in str(refused.value)
        assert str(state / "installation-id") in str(refused.value)
        untouched = await asyncpg.connect(second)
        try:  # the refused start left nothing in the other database
            assert await untouched.fetchval("SELECT to_regnamespace('cluster')") is None
        finally:
            await untouched.close()
        await asyncio.to_thread(pair_with_database, other_state, second)  # its own folder
        with pytest.raises(RuntimeError):  # and each database stays with its own folder
            await asyncio.to_thread(pair_with_database, state, second)
        # A database that cannot be reached: said in one line, not a traceback.
        nowhere = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
        with pytest.raises(RuntimeError, match="the database could not be reached"):
            await asyncio.to_thread(pair_with_database, state, nowhere)
    finally:
        for name in names:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after", [1.0, 4.0])
def test_ctrl_c_while_it_starts_stops_everything(cluster_env: dict[str, str], after: float) -> None:
    """Ctrl-C a moment after `make run` (PostgreSQL or the parts starting) stops all of
    it, the embedded PostgreSQL included, and the launcher exits cleanly. (The demo's
    seeding is cut short by it too: a seeding left waiting for a part dead meanwhile kept
    the launcher from answering Ctrl-C at all.)"""
    state = cluster_env["MINEACTION_STATE_DIR"]
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster"],
        env=cluster_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # From the moment it makes its state folder, the launcher answers Ctrl-C. Before
        # the interpreter itself is up, a signal only ends it, with nothing started (a
        # loaded machine took over a second to get there).
        deadline = time.monotonic() + 60
        while not Path(state).exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(after)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
        deadline = time.monotonic() + 10
        while left := [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(state in part for part in p.info["cmdline"] or ())
        ]:
            assert time.monotonic() < deadline, f"left running: {left}"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.kill()
