"""Eligibility speed: in-process assessments per second on one core, and over gRPC the
throughput against an empty echo server plus p99 latency at 500 requests per second.

    .venv/bin/python -m bench.eligibility_bench
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Awaitable
from datetime import date
from pathlib import Path

import asyncpg

from bench.common import (
    CpuMeter,
    Result,
    bearer_metadata,
    channel,
    closed_loop,
    database,
    echo_server_main,
    open_loop,
    postgres_pids,
    process,
    service,
)
from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as pb_grpc
from services.common.encoded import holding
from services.common.programme_time import programme_today
from services.eligibility import intake, rules
from services.eligibility.assessing import new_assessment
from services.eligibility.service import decision_to_proto
from tests.factories import pdate, register_request, request_id, saatli_fish_farmer
from tests.ports import free_port

SHIPPED = Path(__file__).parent.parent / "services/eligibility/rulesets/reintegration.yaml"
CONCURRENCY = 32
SECONDS = 5.0


def varied_survivors(n: int = 5_000, seed: int = 7) -> list[pb.SurvivorIntake]:
    """Distinct survivors, so caches keyed by what a rule reads do not flatter the figure:
    incomes mostly unique (the income rule's result differs per survivor), ages,
    districts, households, functioning, business and languages varied."""
    rng = random.Random(seed)
    survivors = []
    for _ in range(n):
        survivor = saatli_fish_farmer("srv-bench")
        born = date(rng.randint(1950, 2004), 1 + rng.randrange(12), 1 + rng.randrange(28))
        survivor.date_of_birth.CopyFrom(pdate(born))
        incident = date(min(2025, born.year + rng.randint(8, 40)), 6, 1)
        survivor.incident_date.CopyFrom(pdate(incident))
        survivor.district_code = rng.choice(["saatli", "fuzuli", "tartar", "baku", "aghdam"])
        survivor.household_size = rng.randint(1, 9)
        survivor.dependants = rng.randint(0, survivor.household_size - 1)
        survivor.female_headed_household = rng.random() < 0.3
        survivor.monthly_household_income_minor = rng.randrange(0, 300_000, 100)
        survivor.active_programme_loans = int(rng.random() < 0.1)
        del survivor.functioning[:]
        for domain in rng.sample(range(1, 7), rng.randint(0, 6)):
            survivor.functioning.add(domain=domain, level=rng.randint(1, 4))
        if rng.random() < 0.5:
            survivor.ClearField("existing_business")
        else:
            survivor.existing_business.years_operating = rng.randint(0, 10)
            survivor.existing_business.sector = rng.choice(["fish_farming", "retail", "crafts"])
        if rng.random() < 0.3:
            survivor.languages.append(pb.LANGUAGE_ENGLISH)
        survivors.append(survivor)
    return survivors


def in_process(n: int = 20_000) -> tuple[float, float]:
    """Full assessment as the service makes it: facts, every programme with its trace,
    the priority score, and the response's encoding; over distinct survivors.
    Returns (service path, reference path: rules.evaluate + decision_to_proto)."""
    rule_set = rules.load(SHIPPED.read_text(encoding="utf-8"))
    survivors = varied_survivors()
    day = date(2026, 3, 1)
    started = time.perf_counter()
    for i in range(n):
        survivor = survivors[i % len(survivors)]
        _, encoded = new_assessment(
            survivor, rule_set, day, survivor_id=survivor.survivor_id, version=1
        )
        holding(pb.AssessEligibilityResponse, "assessment", encoded)
    fast = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(n // 4):
        decision = rules.evaluate(rule_set, intake.facts(survivors[i % len(survivors)], day), day)
        decisions, priority = decision_to_proto(decision)
        pb.AssessEligibilityResponse(
            assessment=pb.Assessment(decisions=decisions, priority=priority)
        ).SerializeToString()
    reference = n // 4 / (time.perf_counter() - started)
    return fast, reference


async def bare_commits(database_url: str) -> Result:
    """One autocommit INSERT of an assessment-sized row (7 kB) per call, paced at 500 per
    second, on one connection: what a durable commit alone costs on this machine."""
    conn = await asyncpg.connect(database_url)
    try:
        table = f"bench_commit_{uuid.uuid4().hex[:8]}"
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, result bytea)")
        row = random.randbytes(7_000)
        lock = asyncio.Lock()

        async def insert(_: int) -> None:
            async with lock:
                await conn.execute(f"INSERT INTO {table} (result) VALUES ($1)", row)

        result = await open_loop(insert, rate=500, seconds=10.0)
        await conn.execute(f"DROP TABLE {table}")
        return result
    finally:
        await conn.close()


async def over_grpc(database_url: str) -> None:
    auth = bearer_metadata()
    echo_port = free_port()
    echo_argv = [sys.executable, "-m", "bench.eligibility_bench", "--echo-server", str(echo_port)]
    with process(echo_argv, {}, echo_port) as echo_process:
        async with channel(echo_port) as ch:
            echo = ch.unary_unary("/bench.Echo/Echo")
            payload = pb.AssessEligibilityRequest(
                request_id=request_id(),
                survivor_id="srv-bench",
                assessment_date=pdate(programme_today()),
            ).SerializeToString()
            meter = CpuMeter([echo_process.pid])
            before = meter.sample()
            echo_result = await closed_loop(
                lambda _: echo(payload, metadata=auth), concurrency=CONCURRENCY, seconds=SECONDS
            )
            echo_cpu = meter.per_operation(before, meter.sample(), echo_result.count)

    argv, env, port = service("services.eligibility", "ELIGIBILITY_ADDRESS", database_url)
    with process(argv, env, port) as service_process:
        async with channel(port) as ch:
            stub = pb_grpc.EligibilityServiceStub(ch)
            survivors = []
            for index, survivor in enumerate(varied_survivors(200, seed=11)):
                survivor.survivor_id = f"srv-bench-{index:03d}-{request_id()[:8]}"
                registration = register_request(survivor)
                await stub.RegisterSurvivor(registration, metadata=auth)
                survivors.append(registration.intake.survivor_id)
            day = pdate(date(2026, 3, 1))

            def assess(i: int) -> Awaitable[object]:
                return stub.AssessEligibility(
                    pb.AssessEligibilityRequest(
                        request_id=request_id(),
                        survivor_id=survivors[i % len(survivors)],
                        assessment_date=day,
                    ),
                    metadata=auth,
                )

            await closed_loop(assess, concurrency=CONCURRENCY, seconds=1.0)  # warm up
            pg = await asyncpg.connect(database_url)
            try:
                meter = CpuMeter([service_process.pid], await postgres_pids(pg))
            finally:
                await pg.close()
            before = meter.sample()
            assess_result = await closed_loop(assess, concurrency=CONCURRENCY, seconds=SECONDS)
            assess_cpu = meter.per_operation(before, meter.sample(), assess_result.count)
            paced = await open_loop(assess, rate=500, seconds=10.0)

    commits = await bare_commits(database_url)
    print(f"echo server (empty grpc.aio)   : {echo_result.rate:8.0f} req/s")
    print(f"  {echo_cpu.replace('service', 'echo server')}")
    print(
        f"AssessEligibility over gRPC     : {assess_result.rate:8.0f} req/s "
        f"= {assess_result.rate / echo_result.rate:.0%} of echo (target >= 60%)"
    )
    print(f"  {assess_cpu}")
    print(
        f"AssessEligibility at 500 req/s  : p50 {paced.percentile(50):.1f} ms, "
        f"p99 {paced.percentile(99):.1f} ms (target p99 <= 10 ms), achieved {paced.rate:.0f} req/s"
    )
    print(
        f"bare durable commit at 500/s    : p50 {commits.percentile(50):.1f} ms, "
        f"p99 {commits.percentile(99):.1f} ms, max {max(commits.latencies_ms):.0f} ms "
        "(one asyncpg INSERT of a 7 kB row: the floor under any durable call here)"
    )
    failed = assess_result.errors + paced.errors
    print(f"failed calls                    : {len(failed)} {sorted(set(failed))}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-server":
        echo_server_main(int(sys.argv[2]))
        return
    rate, reference = in_process()
    print(f"in-process full assessment      : {rate:8.0f} /s on one core (target >= 10,000)")
    print(f"  reference path (evaluate+proto): {reference:7.0f} /s (what was measured before)")
    with database() as url:
        asyncio.run(over_grpc(url))


if __name__ == "__main__":
    main()
