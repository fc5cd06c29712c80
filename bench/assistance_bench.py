"""Assistance capacity benchmark: reservations under concurrency, over real gRPC against
real PostgreSQL (DATABASE_URL, or else an embedded pgserver in a temporary folder).

The service runs in this process (a ServiceHost on 127.0.0.1:0), sharing its event loop
with the 50 clients; `--service-process` runs it as its own process instead
(`python -m services.assistance`, as deployed), for comparison.

Prints two figures:
1. safety: 50 concurrent clients reserve the last seats of a cohort; exactly as many
   succeed as there were seats, and the rest are waitlisted in order 1..n;
2. throughput: 50 concurrent clients make reservations in a large cohort; reservations
   per second (target: at least 300).

Every survivor is registered with eligibility first (its own process): assistance asks it,
for each need and each request, whether the survivor's consent stands.

Usage: .venv/bin/python -m bench.assistance_bench [--reservations 3000] [--clients 50]
           [--service-process]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from google.protobuf import struct_pb2

from bench.common import bench_auth, bench_token, database, process, service
from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.type.v1 import age_band_pb2, localized_text_pb2, sex_pb2
from services.assistance.service import SPEC
from services.common.channels import open_channel
from services.common.config import load_settings
from services.common.logging import configure_logging
from services.common.server import ServiceHost
from tests.factories import register_request, saatli_fish_farmer

TARGET_PER_SECOND = 300
# Connections: enough that requests do not queue for one; far more only adds backends
# contending for the hot pool row (measured: 10 -> ~180/s, 20 -> ~250/s, 50 -> ~120/s).
POOL_SIZE = 20
PROVIDER = "barda-vocational-centre"


async def fresh_database(server_url: str) -> tuple[str, str]:
    name = f"assistance_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    base, _, query = server_url.partition("?")
    return name, f"{base.rpartition('/')[0]}/{name}" + (f"?{query}" if query else "")


async def drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


async def open_cohort(stub: pb_grpc.AssistanceServiceStub, seats: int) -> str:
    pool_id = f"bench-cohort-{uuid.uuid4().hex[:10]}"
    await stub.CreateCapacityPool(
        pb.CreateCapacityPoolRequest(
            request_id=str(uuid.uuid4()),
            pool_id=pool_id,
            provider_id=PROVIDER,
            type_id="computer_course",
            capacity=seats,
            sessions=24,
            name=localized_text_pb2.LocalizedText(en="Bench cohort", az="Test qrupu"),
        )
    )
    return pool_id


async def record_needs(stubs: Stubs, count: int) -> list[str]:
    """Needs of `count` new survivors, each registered with consent."""

    async def one(i: int) -> str:
        intake = saatli_fish_farmer(f"srv-bench-{uuid.uuid4().hex[:12]}")
        await stubs.eligibility.RegisterSurvivor(register_request(intake))
        response = await stubs.assistance.RecordNeed(
            pb.RecordNeedRequest(
                request_id=str(uuid.uuid4()),
                survivor_id=intake.survivor_id,
                type_id="computer_course",
                assessed_by="bench",
                district_code="barda",
                sex=sex_pb2.SEX_FEMALE if i % 2 else sex_pb2.SEX_MALE,
                age_band=age_band_pb2.AGE_BAND_18_34,
            )
        )
        return str(response.need.need_id)

    needs: list[str] = []
    for start in range(0, count, 200):  # in batches: setup is not what is measured
        needs += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 200))))
    return needs


async def reserve_all(
    stub: pb_grpc.AssistanceServiceStub, pool_id: str, needs: list[str], clients: int
) -> tuple[list[pb.Assistance], float]:
    """`clients` concurrent clients, each taking the next need until none are left."""
    queue = list(reversed(needs))
    results: list[pb.Assistance] = []
    data = struct_pb2.Struct()
    data.update({"level": "office"})

    async def client() -> None:
        while queue:
            need_id = queue.pop()
            response = await stub.RequestAssistance(
                pb.RequestAssistanceRequest(
                    request_id=str(uuid.uuid4()),
                    need_id=need_id,
                    capacity_pool_id=pool_id,
                    data=data,
                    referral_consent=True,
                    requested_by="bench",
                )
            )
            results.append(response.assistance)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return results, time.perf_counter() - started


@dataclass
class Stubs:
    assistance: pb_grpc.AssistanceServiceStub
    eligibility: eligibility_grpc.EligibilityServiceStub


@asynccontextmanager
async def assistance_service(url: str, in_process: bool, eligibility: str) -> AsyncIterator[int]:
    """The service's port: a ServiceHost in this process, or a service process; it asks
    the eligibility service at `eligibility` about consent."""
    if not in_process:
        argv, env, port = service("services.assistance", "ASSISTANCE_ADDRESS", url)
        env |= {"DB_POOL_MAX_SIZE": str(POOL_SIZE), "ELIGIBILITY_ADDRESS": eligibility}
        with process(argv, env, port):
            yield port
        return
    settings = load_settings(
        DATABASE_URL=url,
        ELIGIBILITY_ADDRESS=eligibility,
        LOG_LEVEL="error",
        LOG_FORMAT="json",
        DB_POOL_MAX_SIZE=POOL_SIZE,
        MINEACTION_STATE_DIR=str(bench_auth().state_dir),
        METRICS_PORT=0,  # an in-process host; a running cluster may hold 9101-9104
    )
    configure_logging(settings, process="bench")
    host = ServiceHost(SPEC, settings, address="127.0.0.1:0")
    await host.start()
    try:
        yield host.port
    finally:
        await host.stop(grace=1)


async def main(reservations: int, clients: int, last_seats: int, in_process: bool) -> bool:
    with database() as server_url:
        name, url = await fresh_database(server_url)
        ok = True
        try:
            argv, env, eligibility_port = service(
                "services.eligibility", "ELIGIBILITY_ADDRESS", url
            )
            eligibility = f"127.0.0.1:{eligibility_port}"
            with process(argv, env, eligibility_port):
                async with (
                    assistance_service(url, in_process, eligibility) as port,
                    open_channel(f"127.0.0.1:{port}", bench_token()) as channel,
                    open_channel(eligibility, bench_token()) as to_eligibility,
                ):
                    stubs = Stubs(
                        pb_grpc.AssistanceServiceStub(channel),
                        eligibility_grpc.EligibilityServiceStub(to_eligibility),
                    )
                    print(f"service: {'in this process' if in_process else 'its own process'}")
                    ok &= await safety(stubs, clients, last_seats)
                    ok &= await throughput(stubs, clients, reservations)
        finally:
            await drop_database(server_url, name)
    return ok


async def safety(stubs: Stubs, clients: int, seats: int) -> bool:
    # A cohort of 20 that is already down to its last `seats` seats.
    pool_id = await open_cohort(stubs.assistance, 20)
    earlier = await record_needs(stubs, 20 - seats)
    await reserve_all(stubs.assistance, pool_id, earlier, 1)
    needs = await record_needs(stubs, clients)
    results, _ = await reserve_all(stubs.assistance, pool_id, needs, clients)
    won = [a for a in results if a.state == "enrolled"]
    waiting = sorted(a.waitlist_position for a in results if a.state == "waitlisted")
    in_order = waiting == list(range(1, clients - seats + 1))
    ok = len(won) == seats and in_order
    print(f"last seats: {clients} concurrent clients, {seats} seats left of 20")
    print(f"  reserved:   {len(won)} (expected exactly {seats})")
    print(
        f"  waitlisted: {len(waiting)}, positions 1..{waiting[-1] if waiting else 0} "
        f"{'in order, no gaps' if in_order else 'NOT IN ORDER'}"
    )
    print(f"  result:     {'PASS' if ok else 'FAIL'}")
    return ok


async def throughput(stubs: Stubs, clients: int, count: int) -> bool:
    pool_id = await open_cohort(stubs.assistance, count)
    needs = await record_needs(stubs, count)
    results, elapsed = await reserve_all(stubs.assistance, pool_id, needs, clients)
    reserved = sum(a.state == "enrolled" for a in results)
    rate = reserved / elapsed
    latency_ms = elapsed / count * clients * 1000
    ok = reserved == count and rate >= TARGET_PER_SECOND
    print(f"throughput: {count} reservations in one cohort by {clients} concurrent clients")
    print(
        f"  {rate:,.0f} reservations/second (target >= {TARGET_PER_SECOND}); "
        f"{elapsed:.2f} s in all, mean latency {latency_ms:.1f} ms"
    )
    print(f"  result:     {'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reservations", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--last-seats", type=int, default=5)
    parser.add_argument("--service-process", action="store_true")
    args = parser.parse_args()
    in_process = not args.service_process
    passed = asyncio.run(main(args.reservations, args.clients, args.last_seats, in_process))
    raise SystemExit(0 if passed else 1)
