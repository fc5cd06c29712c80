"""A pool's capacity never drops below what a request on its waitlist needs: such a
request could never be served, and everyone behind it would wait forever. AdjustCapacity
refuses that reduction (WAITLIST_OVER_CAPACITY), writing nothing, and the check holds
against a request that arrives at the same moment, whichever takes the pool's lock first.
Also: CreateCapacityPool's `sessions` violations carry their reasons."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import localized_text_pb2
from services.common.db import Connection
from services.common.errors import reason_of, violations_in
from tests.conftest import Cluster
from tests.factories import new_id, request_id
from tests.integration.test_assistance_service import (
    advance,
    assert_writes_nothing,
    create_pool,
    record_need,
    request,
    struct,
)

SUPPLIER = "baku-mobility-aids"


async def stock_request(cluster: Cluster, pool: pb.CapacityPool, quantity: int) -> pb.Assistance:
    """A new survivor's request for `quantity` wheelchairs from the pool."""
    need = await record_need(cluster, "wheelchair")
    return await request(
        cluster.assistance,
        need.need_id,
        capacity_pool_id=pool.pool_id,
        quantity=quantity,
        data=struct(seat_width_cm=44),
    )


def adjust(stub: pb_grpc.AssistanceServiceStub, pool_id: str, delta: int) -> Any:
    return stub.AdjustCapacity(
        pb.AdjustCapacityRequest(
            request_id=request_id(), pool_id=pool_id, delta=delta, reason="write-off"
        )
    )


async def numbers(stub: pb_grpc.AssistanceServiceStub, pool_id: str) -> tuple[int, ...]:
    """(capacity, reserved, free, waitlisted) of a pool, read back through ListProviders."""
    providers = await stub.ListProviders(pb.ListProvidersRequest(type_id="wheelchair"))
    [pool] = [p for pr in providers.providers for p in pr.pools if p.pool_id == pool_id]
    return (pool.capacity, pool.reserved, pool.free, pool.waitlisted)


async def position(stub: pb_grpc.AssistanceServiceStub, assistance_id: str) -> tuple[str, int]:
    got = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=assistance_id))
    return (got.assistance.state, got.assistance.waitlist_position)


# --- the walk that found it -----------------------------------------------------------


async def test_capacity_is_not_written_off_below_a_waiting_request(cluster: Cluster) -> None:
    """Capacity 3; A takes 1, B waits for 3. Writing off 2 would leave B needing 3 of 1
    for ever, and everyone behind B waiting behind it with units free: refused."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 3, provider_id=SUPPLIER)
    a = await stock_request(cluster, pool, 1)
    b = await stock_request(cluster, pool, 3)
    assert (a.state, a.waitlist_position) == ("fitting_assessment", 0)
    assert (b.state, b.waitlist_position) == ("waitlisted", 1)

    error = await assert_writes_nothing(
        cluster, adjust(stub, pool.pool_id, -2), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "WAITLIST_OVER_CAPACITY"
    message = error.details() or ""
    assert f"pool {pool.pool_id} would be left with 1 unit(s)" in message
    assert "a request on its waitlist needs 3" in message
    assert await numbers(stub, pool.pool_id) == (3, 1, 2, 1)

    # The pool still works: C waits behind B, and once A is cancelled B gets its three
    # and C stays first in line, with nothing free that it could take.
    c = await stock_request(cluster, pool, 1)
    assert (c.state, c.waitlist_position) == ("waitlisted", 2)
    await advance(stub, a.assistance_id, "cancel")
    assert await position(stub, b.assistance_id) == ("fitting_assessment", 0)
    assert await position(stub, c.assistance_id) == ("waitlisted", 1)
    assert await numbers(stub, pool.pool_id) == (3, 3, 0, 1)


async def test_a_write_off_that_leaves_room_for_the_largest_waiting_request_is_accepted(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 4, provider_id=SUPPLIER)
    a = await stock_request(cluster, pool, 2)
    b = await stock_request(cluster, pool, 3)
    small = await stock_request(cluster, pool, 1)
    assert [x.waitlist_position for x in (a, b, small)] == [0, 1, 2]

    # Down to exactly what the largest waiting request needs: accepted, and audited.
    adjusted = await adjust(stub, pool.pool_id, -1)
    assert (adjusted.pool.capacity, adjusted.pool.reserved, adjusted.pool.waitlisted) == (3, 2, 2)
    # One unit further is not.
    error = await assert_writes_nothing(
        cluster, adjust(stub, pool.pool_id, -1), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "WAITLIST_OVER_CAPACITY"
    assert "needs 3" in (error.details() or "")
    assert await numbers(stub, pool.pool_id) == (3, 2, 1, 2)

    # B is served when A's chairs come back, then the small request when B's do.
    await advance(stub, a.assistance_id, "cancel")
    assert await position(stub, b.assistance_id) == ("fitting_assessment", 0)
    assert await position(stub, small.assistance_id) == ("waitlisted", 1)
    await advance(stub, b.assistance_id, "cancel")
    assert await position(stub, small.assistance_id) == ("fitting_assessment", 0)
    # With nobody waiting, capacity may go down to what is reserved.
    assert (await adjust(stub, pool.pool_id, -2)).pool.capacity == 1


async def test_reserved_units_are_still_refused_first(cluster: Cluster) -> None:
    """A write-off below what is reserved keeps its own refusal, even when it would also
    leave a waiting request without room."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 3, provider_id=SUPPLIER)
    await stock_request(cluster, pool, 2)
    await stock_request(cluster, pool, 3)
    error = await assert_writes_nothing(
        cluster, adjust(stub, pool.pool_id, -2), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "CAPACITY_RESERVED"
    assert await numbers(stub, pool.pool_id) == (3, 2, 1, 1)


async def test_adding_capacity_is_never_refused_for_the_waitlist(cluster: Cluster) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 2, provider_id=SUPPLIER)
    await stock_request(cluster, pool, 1)
    waiting = await stock_request(cluster, pool, 2)
    assert waiting.waitlist_position == 1
    adjusted = await adjust(stub, pool.pool_id, 1)
    assert (adjusted.pool.capacity, adjusted.pool.reserved, adjusted.pool.waitlisted) == (3, 3, 0)


# --- a request and a write-off at the same moment -------------------------------------


@contextlib.asynccontextmanager
async def pool_locked(cluster: Cluster, pool_id: str) -> AsyncIterator[Connection]:
    """Hold the pool's row lock, as a concurrent call would, until the block ends; yields
    another connection to watch who is waiting for it."""
    db = cluster.hosts["assistance"].db
    assert db is not None
    async with (
        db.pool.acquire() as holder,
        db.pool.acquire() as watcher,
        holder.transaction(),
    ):
        await holder.execute("SELECT 1 FROM capacity_pools WHERE pool_id = $1 FOR UPDATE", pool_id)
        yield watcher


async def until_waiting(watcher: Connection, count: int) -> None:
    """Until `count` of the assistance service's connections wait for a lock."""
    for _ in range(1000):
        waiting = await watcher.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND application_name = 'mineaction-assistance'"""
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} call(s) waiting for the pool's lock")


async def test_a_request_waitlisted_first_stops_a_concurrent_write_off(cluster: Cluster) -> None:
    """The request takes the pool's lock first and joins the waitlist; the write-off,
    queued behind it, sees it there and is refused."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 3, provider_id=SUPPLIER)
    await stock_request(cluster, pool, 1)
    async with pool_locked(cluster, pool.pool_id) as watcher:
        requested = asyncio.ensure_future(stock_request(cluster, pool, 3))
        await until_waiting(watcher, 1)
        adjusted = asyncio.ensure_future(adjust(stub, pool.pool_id, -2))
        await until_waiting(watcher, 2)
    assert (await requested).waitlist_position == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adjusted
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "WAITLIST_OVER_CAPACITY"
    assert await numbers(stub, pool.pool_id) == (3, 1, 2, 1)


async def test_a_write_off_first_stops_a_concurrent_request_it_leaves_no_room_for(
    cluster: Cluster,
) -> None:
    """The request read the pool (capacity 3) before the write-off took it to 1; it must
    not then join the waitlist for 3 units the pool no longer has."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 3, provider_id=SUPPLIER)
    await stock_request(cluster, pool, 1)
    need = await record_need(cluster, "wheelchair")
    async with pool_locked(cluster, pool.pool_id) as watcher:
        adjusted = asyncio.ensure_future(adjust(stub, pool.pool_id, -2))
        await until_waiting(watcher, 1)
        requested = asyncio.ensure_future(
            request(
                stub,
                need.need_id,
                capacity_pool_id=pool.pool_id,
                quantity=3,
                data=struct(seat_width_cm=44),
            )
        )
        await until_waiting(watcher, 2)
    assert (await adjusted).pool.capacity == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await requested
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "INVALID_ARGUMENT"
    assert [(v.field, v.reason) for v in violations_in(err.value)] == [
        ("quantity", "QUANTITY_OVER_CAPACITY")
    ]
    assert await numbers(stub, pool.pool_id) == (1, 1, 0, 0)
    got = await stub.GetNeed(pb.GetNeedRequest(need_id=need.need_id))
    assert (got.need.state, list(got.need.assistance_ids)) == (pb.NEED_STATE_OPEN, [])


# --- CreateCapacityPool's sessions ----------------------------------------------------


@pytest.mark.parametrize(
    ("type_id", "provider_id", "sessions", "reason"),
    [
        ("computer_course", "barda-vocational-centre", 0, "SESSIONS_REQUIRED"),
        ("wheelchair", SUPPLIER, 12, "SESSIONS_NOT_ALLOWED"),
        ("spa_rehabilitation", "naftalan-health-resort", 12, "SESSIONS_NOT_ALLOWED"),
    ],
)
async def test_a_pool_s_sessions_violation_carries_its_reason(
    cluster: Cluster, type_id: str, provider_id: str, sessions: int, reason: str
) -> None:
    error = await assert_writes_nothing(
        cluster,
        cluster.assistance.CreateCapacityPool(
            pb.CreateCapacityPoolRequest(
                request_id=request_id(),
                pool_id=new_id("pool"),
                provider_id=provider_id,
                type_id=type_id,
                capacity=5,
                sessions=sessions,
                name=localized_text_pb2.LocalizedText(en="Test pool", az="Sınaq hovuzu"),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [(v.field, v.reason) for v in violations_in(error)] == [("sessions", reason)]


async def test_a_waitlisted_request_leaving_lets_the_smaller_ones_behind_it_in(
    cluster: Cluster,
) -> None:
    """The head of the queue, too large for the free units, cancelled: the request behind
    it stayed waitlisted with the units free, and every later one queued behind it."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 5, provider_id=SUPPLIER)
    await stock_request(cluster, pool, 3)
    big, small = await stock_request(cluster, pool, 4), await stock_request(cluster, pool, 1)
    assert (big.state, small.state) == ("waitlisted", "waitlisted")
    await advance(stub, big.assistance_id, "cancel")
    promoted = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=small.assistance_id))
    assert promoted.assistance.state == "fitting_assessment"
    providers = await stub.ListProviders(pb.ListProvidersRequest())
    [shown] = [p for pr in providers.providers for p in pr.pools if p.pool_id == pool.pool_id]
    assert (shown.reserved, shown.waitlisted) == (4, 0)
