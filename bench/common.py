"""Shared bench plumbing: a database to run against, free ports, service processes,
and closed- and open-loop load generators with latency percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc

from services.common.auth import ensure_dev_credentials
from services.common.channels import DEV_TOKEN_FILE
from services.common.config import Settings, load_settings
from tests.ports import free_port


@contextlib.contextmanager
def database() -> Iterator[str]:
    """DATABASE_URL when set, else an embedded PostgreSQL in a temporary folder."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    import pgserver

    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(folder, cleanup_mode="delete")  # type: ignore[attr-defined]
        yield str(server.get_uri())


@contextlib.contextmanager
def process(
    argv: list[str], env: dict[str, str], port: int, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, started and waited for on its port, stopped with SIGTERM
    afterwards; its output goes to `log` (with its errors), else nowhere."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("wb")) if log else subprocess.DEVNULL
        errors = subprocess.STDOUT if log else None
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=errors)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start" + (f"; see {log}" if log else ""))
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@functools.cache
def bench_auth() -> Settings:
    """Settings whose state folder (a temporary one) holds a signing key, the JWKS the
    services verify with, and a dev-token with every role that the benches call with."""
    settings = load_settings(MINEACTION_STATE_DIR=tempfile.mkdtemp(prefix="bench-auth-"))
    ensure_dev_credentials(settings)
    return settings


def bench_token() -> str:
    return (bench_auth().state_dir / DEV_TOKEN_FILE).read_text().strip()


def bearer_metadata() -> tuple[tuple[str, str], ...]:
    """The dev token as call metadata, for load loops that pass it with each call: the
    same header `open_channel` adds, without a client interceptor (which costs the load
    generator about as much CPU as the call itself, on the machine the service shares)."""
    return (("authorization", f"Bearer {bench_token()}"),)


def service(module: str, variable: str, database_url: str) -> tuple[list[str], dict[str, str], int]:
    port = free_port()
    env = {
        variable: f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "error",
        "AUTH_JWKS_FILE": str(bench_auth().effective_jwks_file),
        # Eligibility calls lending with it (a follow-up's loan); it must exist to start.
        "SERVICE_TOKEN_FILE": str(bench_auth().effective_service_token_file),
        # No /metrics port: a cluster running alongside holds the default ones.
        "METRICS_PORT": "0",
    }
    return [sys.executable, "-m", module], env, port


@dataclass
class Result:
    count: int
    seconds: float
    latencies_ms: list[float]
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def quiet_collector() -> None:
    """Keep what the load generator has built so far out of its garbage collector's full
    passes: with the services' modules imported, each took 50-60 ms here, and every call
    in flight meanwhile counted that pause against the service."""
    gc.collect()
    gc.freeze()


async def closed_loop(
    call: Callable[[int], Awaitable[object]], *, concurrency: int, seconds: float
) -> Result:
    """As fast as `concurrency` callers can go, for `seconds`."""
    quiet_collector()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def caller() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(next(counter))
            except grpc.aio.AioRpcError as error:
                errors.append(error.code().name)
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Result(len(latencies), time.perf_counter() - started, latencies, errors)


async def open_loop(
    call: Callable[[int], Awaitable[object]], *, rate: float, seconds: float
) -> Result:
    """Requests sent on a fixed schedule, whatever the server does (no coordinated
    omission): latency counts from when the request was due."""
    quiet_collector()
    latencies: list[float] = []
    errors: list[str] = []
    total = int(rate * seconds)
    begin = time.perf_counter()

    async def one(index: int, due: float) -> None:
        try:
            await call(index)
        except grpc.aio.AioRpcError as error:
            errors.append(error.code().name)
            return
        latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    for index in range(total):
        due = begin + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    return Result(total, time.perf_counter() - begin, latencies, errors)


@contextlib.asynccontextmanager
async def channel(port: int) -> AsyncIterator[grpc.aio.Channel]:
    """A plain channel: load loops pass `bearer_metadata()` with each call."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await ch.channel_ready()
        yield ch


def echo_server_main(port: int) -> None:
    """An empty echo gRPC server: the ceiling for any grpc.aio service on this machine."""

    async def serve() -> None:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
                ),
            )
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (Linux /proc; 0 for any gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU used per operation by each party while a load runs: the service process(es),
    this process (the load generator, or the bare asyncpg client) and PostgreSQL (every
    process in pg_stat_activity: backends, WAL writer, checkpointer, ...)."""

    service_pids: list[int]
    postgres_pids: list[int] = field(default_factory=list)

    def sample(self) -> tuple[float, float, float]:
        return (
            cpu_seconds(self.service_pids),
            time.process_time(),
            cpu_seconds(self.postgres_pids),
        )

    @staticmethod
    def per_operation(
        before: tuple[float, float, float], after: tuple[float, float, float], operations: int
    ) -> str:
        service, client, postgres = (
            (a - b) / max(operations, 1) * 1e6 for a, b in zip(after, before, strict=True)
        )
        return (
            f"CPU per operation: service {service:.0f} µs, this process {client:.0f} µs, "
            f"PostgreSQL {postgres:.0f} µs"
        )


async def postgres_pids(db: asyncpg.Pool | asyncpg.Connection) -> list[int]:
    """Every PostgreSQL process the server lists: backends, WAL writer, checkpointer, ..."""
    return [row["pid"] for row in await db.fetch("SELECT pid FROM pg_stat_activity")]
