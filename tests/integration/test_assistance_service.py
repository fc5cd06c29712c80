"""The assistance service over real gRPC against real PostgreSQL: needs, the five shipped
types' lifecycles, capacity with atomic reservation and ordered waitlists, consent, bad
input that writes nothing, idempotency, listings and the delivery report."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import age_band_pb2, localized_text_pb2, sex_pb2
from services.common.errors import reason_of
from services.common.programme_time import programme_today
from tests.conftest import DEFAULT_SUBJECT, Cluster
from tests.factories import need_request, new_id, pdate, register_survivor, request_id
from tests.locks import queued_behind

# --- helpers (also used by the plugin end-to-end test) -----------------------------------


def struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def record_need(
    cluster: Cluster,
    type_id: str,
    *,
    via: pb_grpc.AssistanceServiceStub | None = None,
    district: str = "barda",
    sex: sex_pb2.Sex.ValueType = sex_pb2.SEX_FEMALE,
    age_band: age_band_pb2.AgeBand.ValueType = age_band_pb2.AGE_BAND_18_34,
    survivor_id: str = "",
) -> pb.Need:
    """A need of `survivor_id` (registered), else of a new survivor registered with
    consent; recorded through `via`, else the cluster's assistance service."""
    stub = via or cluster.assistance
    survivor_id = survivor_id or await register_survivor(cluster.eligibility)
    request = need_request(survivor_id, type_id, district=district, sex=sex, age_band=age_band)
    return (await stub.RecordNeed(request)).need


async def request(
    stub: pb_grpc.AssistanceServiceStub, need_id: str, **fields: Any
) -> pb.Assistance:
    fields.setdefault("referral_consent", True)
    response = await stub.RequestAssistance(
        pb.RequestAssistanceRequest(
            request_id=request_id(), need_id=need_id, requested_by="cw-01", **fields
        )
    )
    return response.assistance


async def advance(
    stub: pb_grpc.AssistanceServiceStub, assistance_id: str, action: str, **data: Any
) -> pb.Assistance:
    response = await stub.AdvanceAssistance(
        pb.AdvanceAssistanceRequest(
            request_id=request_id(),
            assistance_id=assistance_id,
            action=action,
            data=struct(**data),
            actor="cw-01",
        )
    )
    return response.assistance


async def create_pool(
    stub: pb_grpc.AssistanceServiceStub,
    type_id: str,
    capacity: int,
    *,
    provider_id: str = "barda-vocational-centre",
    sessions: int = 0,
) -> pb.CapacityPool:
    response = await stub.CreateCapacityPool(
        pb.CreateCapacityPoolRequest(
            request_id=request_id(),
            pool_id=new_id("pool"),
            provider_id=provider_id,
            type_id=type_id,
            capacity=capacity,
            sessions=sessions,
            name=localized_text_pb2.LocalizedText(en="Test pool", az="Sınaq hovuzu"),
        )
    )
    return response.pool


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description from the google.rpc.BadRequest detail."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError(f"no BadRequest detail in {status}")


# --- the catalogue --------------------------------------------------------------------


async def test_types_are_listed_in_both_languages_with_their_lifecycles(cluster: Cluster) -> None:
    response = await cluster.assistance.ListAssistanceTypes(pb.ListAssistanceTypesRequest())
    types = {t.type_id: t for t in response.assistance_types}
    assert {
        "wheelchair",
        "spa_rehabilitation",
        "english_course",
        "computer_course",
        "carpet_weaving",
    } <= set(types)
    assert types["wheelchair"].name.az == "Əlil arabası"
    assert types["computer_course"].name.az == "Kompüter kursu"
    wheelchair = types["wheelchair"]
    assert wheelchair.capacity_model == pb.CAPACITY_MODEL_STOCK
    assert list(wheelchair.follow_up_days) == [90]
    assert wheelchair.initial_state == "fitting_assessment"
    assert "waitlisted" in {s.state_id for s in wheelchair.states}
    assert ("allocated", "deliver", "delivered") in {
        (t.from_state, t.action, t.to_state) for t in wheelchair.transitions
    }
    assert "seat_width_cm" in wheelchair.data_schema_json
    assert "programmes: [wheelchair]" in wheelchair.eligibility_rules_yaml
    assert list(wheelchair.provider_kinds) == [pb.PROVIDER_KIND_SUPPLIER, pb.PROVIDER_KIND_CLINIC]
    # Paging through one at a time reaches every type exactly once.
    seen: list[str] = []
    token = ""
    while True:
        page = await cluster.assistance.ListAssistanceTypes(
            pb.ListAssistanceTypesRequest(page_size=2, page_token=token)
        )
        seen += [t.type_id for t in page.assistance_types]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(types)


# --- capacity: cohorts, waitlists, promotion ------------------------------------------


async def test_a_cohort_fills_then_waitlists_in_order_and_a_dropout_promotes_the_next(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "computer_course", 2, sessions=10)
    needs = [await record_need(cluster, "computer_course") for _ in range(4)]
    enrolled = [
        await request(stub, n.need_id, capacity_pool_id=pool.pool_id, data=struct(level="office"))
        for n in needs
    ]
    assert [a.state for a in enrolled] == ["enrolled", "enrolled", "waitlisted", "waitlisted"]
    assert [a.waitlist_position for a in enrolled] == [0, 0, 1, 2]
    assert enrolled[0].course_length == 10
    assert enrolled[0].provider_id == "barda-vocational-centre"

    # Needs follow their assistance: referred to the training centre, not met.
    need = await stub.ListAssistance(pb.ListAssistanceRequest(capacity_pool_id=pool.pool_id))
    assert [a.assistance_id for a in need.assistance] == [a.assistance_id for a in enrolled]

    # A step the state does not allow is said so first, whatever its data lacks (it asked
    # for the certificate number of a course not yet attended).
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await advance(stub, enrolled[0].assistance_id, "complete")
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(early.value) == "ILLEGAL_TRANSITION"
    await advance(stub, enrolled[0].assistance_id, "attend", sessions=2)
    dropped = await advance(stub, enrolled[0].assistance_id, "drop_out")
    assert dropped.state == "dropped_out"

    promoted = (
        await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=enrolled[2].assistance_id))
    ).assistance
    assert promoted.state == "enrolled"
    assert promoted.waitlist_position == 0
    assert [(e.action, e.actor) for e in promoted.history] == [
        ("request", "cw-01"),
        ("promote", "system"),
    ]
    last = (
        await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=enrolled[3].assistance_id))
    ).assistance
    assert (last.state, last.waitlist_position) == ("waitlisted", 1)

    # Cancelling from the waitlist leaves it; the dropout's need is open again.
    cancelled = await advance(stub, last.assistance_id, "cancel")
    assert (cancelled.state, cancelled.waitlist_position) == ("cancelled", 0)
    providers = await stub.ListProviders(
        pb.ListProvidersRequest(type_id="computer_course", district_code="barda")
    )
    [mine] = [p for pr in providers.providers for p in pr.pools if p.pool_id == pool.pool_id]
    assert (mine.capacity, mine.reserved, mine.free, mine.waitlisted) == (2, 2, 0, 0)
    again = await request(
        stub, needs[0].need_id, capacity_pool_id=pool.pool_id, data=struct(level="office")
    )
    assert again.state == "waitlisted"


async def test_fifty_concurrent_requests_for_the_last_seats_never_overbook(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    seats = 7
    pool = await create_pool(stub, "english_course", seats, sessions=30)
    needs = [await record_need(cluster, "english_course") for _ in range(50)]
    results = await asyncio.gather(
        *(
            request(stub, n.need_id, capacity_pool_id=pool.pool_id, data=struct(level="a1"))
            for n in needs
        )
    )
    reserved = [a for a in results if a.state == "enrolled"]
    waiting = [a for a in results if a.state == "waitlisted"]
    assert len(reserved) == seats
    assert len(waiting) == 50 - seats
    assert sorted(a.waitlist_position for a in waiting) == list(range(1, 50 - seats + 1))
    listed = await stub.ListAssistance(
        pb.ListAssistanceRequest(capacity_pool_id=pool.pool_id, state="waitlisted")
    )
    queue = sorted(listed.assistance, key=lambda a: a.waitlist_position)
    assert [a.waitlist_position for a in queue] == list(range(1, 50 - seats + 1))
    # Adding two seats promotes exactly the first two waiting.
    adjusted = await stub.AdjustCapacity(
        pb.AdjustCapacityRequest(
            request_id=request_id(), pool_id=pool.pool_id, delta=2, reason="second classroom"
        )
    )
    assert (adjusted.pool.capacity, adjusted.pool.reserved, adjusted.pool.waitlisted) == (
        seats + 2,
        seats + 2,
        50 - seats - 2,
    )
    first_two = queue[:2]
    for a in first_two:
        got = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=a.assistance_id))
        assert got.assistance.state == "enrolled"
    third = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=queue[2].assistance_id))
    assert third.assistance.waitlist_position == 1
    # Reserved places cannot be written off.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AdjustCapacity(
            pb.AdjustCapacityRequest(
                request_id=request_id(), pool_id=pool.pool_id, delta=-1, reason="broken chair"
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"its {seats + 2} reserved unit(s) cannot be written off" in (err.value.details() or "")
    # An empty pool: nothing reserved, only more written off than it holds.
    empty = await create_pool(stub, "english_course", 2, sessions=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AdjustCapacity(
            pb.AdjustCapacityRequest(
                request_id=request_id(), pool_id=empty.pool_id, delta=-5, reason="room closed"
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.value.details() or "").endswith(
        f"only 2 unit(s) of pool {empty.pool_id} are free: it holds 2"
    )


# --- the shipped lifecycles -----------------------------------------------------------


async def test_a_wheelchair_is_delivered_from_stock_and_the_need_is_met_only_at_follow_up(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 1, provider_id="baku-mobility-aids")
    need = await record_need(cluster, "wheelchair", district="saatli", sex=sex_pb2.SEX_MALE)
    chair = await request(
        stub, need.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=44)
    )
    assert chair.state == "fitting_assessment"
    await advance(stub, chair.assistance_id, "allocate_from_stock")
    delivered = await advance(
        stub, chair.assistance_id, "deliver", serial_number="WC-2026-0193", fitted_by="pt-07"
    )
    assert delivered.state == "delivered"
    assert delivered.delivery_time.seconds > 0
    [due] = delivered.follow_up_dates
    assert (date(due.year, due.month, due.day) - programme_today()).days in (89, 90, 91)

    listing = await stub.ListAssistance(pb.ListAssistanceRequest(survivor_id=need.survivor_id))
    assert [a.state for a in listing.assistance] == ["delivered"]
    # Delivered is not met: the need stays open until the follow-up confirms it.
    key = ("saatli", sex_pb2.SEX_MALE, age_band_pb2.AGE_BAND_18_34)
    assert (await report_rows(cluster, "wheelchair"))[key] == (1, 0, 1)
    done = await advance(stub, chair.assistance_id, "follow_up", notes="in daily use")
    assert done.state == "followed_up"
    assert (await report_rows(cluster, "wheelchair"))[key] == (0, 1, 1)
    # A met need takes no more assistance.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await request(
            stub, need.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=44)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "NEED_ALREADY_MET"


async def test_a_procured_wheelchair_returns_its_stock_item_to_the_next_waiting(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 1, provider_id="baku-mobility-aids")
    first = await request(
        stub,
        (await record_need(cluster, "wheelchair")).need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(seat_width_cm=38),
    )
    second = await request(
        stub,
        (await record_need(cluster, "wheelchair")).need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(seat_width_cm=50),
    )
    assert (first.state, second.state) == ("fitting_assessment", "waitlisted")
    await advance(stub, first.assistance_id, "procure", order_reference="PO-1187")
    got = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=second.assistance_id))
    assert got.assistance.state == "fitting_assessment"
    received = await advance(stub, first.assistance_id, "receive_procured")
    assert received.state == "allocated"


async def test_a_spa_course_records_attendance_completes_and_frees_its_slot(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "spa_rehabilitation", 1, provider_id="naftalan-health-resort")
    course = await request(
        stub,
        (await record_need(cluster, "spa_rehabilitation")).need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(sessions=10, treatment="naftalan_oil"),
    )
    waiting = await request(
        stub,
        (await record_need(cluster, "spa_rehabilitation")).need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(sessions=5, treatment="mud"),
    )
    assert (course.course_length, waiting.state) == (10, "waitlisted")
    await advance(stub, course.assistance_id, "attend", sessions=6)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await advance(stub, course.assistance_id, "complete")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "COURSE_NOT_FULLY_ATTENDED"
    attended = await advance(stub, course.assistance_id, "attend", sessions=4)
    assert attended.attended_sessions == 10
    completed = await advance(stub, course.assistance_id, "complete")
    assert completed.state == "delivered"
    promoted = await stub.GetAssistance(
        pb.GetAssistanceRequest(assistance_id=waiting.assistance_id)
    )
    assert promoted.assistance.state == "booked"
    lapsed = await advance(stub, waiting.assistance_id, "lapse")
    assert lapsed.state == "lapsed"


async def test_carpet_weaving_runs_training_equipment_workshop_and_follow_up(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    need = await record_need(cluster, "carpet_weaving", district="aghjabadi")
    support = await request(stub, need.need_id, data=struct(enterprise="cooperative"))
    assert support.provider_id == "aghjabadi-carpet-workshop"
    await advance(stub, support.assistance_id, "complete_training")
    equipment = [
        {"item": "vertical loom", "quantity": 1},
        {"item": "wool yarn, kg", "quantity": 40},
    ]
    delivered = await advance(stub, support.assistance_id, "hand_over_equipment", items=equipment)
    assert len(delivered.follow_up_dates) == 2
    joined = await advance(
        stub, support.assistance_id, "join_workshop", kind="cooperative", name="Ağcabədi Xalça"
    )
    done = await advance(stub, joined.assistance_id, "follow_up")
    assert done.state == "followed_up"
    assert [e.action for e in done.history] == [
        "request",
        "complete_training",
        "hand_over_equipment",
        "join_workshop",
        "follow_up",
    ]


# --- reading needs --------------------------------------------------------------------


async def test_a_need_is_read_back_with_its_state_and_the_assistance_for_it(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    recorded = await record_need(cluster, "wheelchair", district="saatli")
    got = await stub.GetNeed(pb.GetNeedRequest(need_id=recorded.need_id))
    assert got.need == recorded
    assert got.need.state == pb.NEED_STATE_OPEN and not got.need.assistance_ids

    pool = await create_pool(stub, "wheelchair", 2, provider_id="baku-mobility-aids")
    first = await request(
        stub, recorded.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=44)
    )
    got = await stub.GetNeed(pb.GetNeedRequest(need_id=recorded.need_id))
    assert got.need.state == pb.NEED_STATE_REFERRED
    assert list(got.need.assistance_ids) == [first.assistance_id]
    # Cancelled, the need is open again; a second attempt comes after the first.
    await advance(stub, first.assistance_id, "cancel")
    reopened = (await stub.GetNeed(pb.GetNeedRequest(need_id=recorded.need_id))).need
    assert reopened.state == pb.NEED_STATE_OPEN
    second = await request(
        stub, recorded.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=46)
    )
    await advance(stub, second.assistance_id, "allocate_from_stock")
    await advance(stub, second.assistance_id, "deliver", serial_number="WC-1", fitted_by="pt-07")
    # Delivered is not met...
    delivered = (await stub.GetNeed(pb.GetNeedRequest(need_id=recorded.need_id))).need
    assert delivered.state == pb.NEED_STATE_REFERRED
    await advance(stub, second.assistance_id, "follow_up")
    met = (await stub.GetNeed(pb.GetNeedRequest(need_id=recorded.need_id))).need
    assert met.state == pb.NEED_STATE_MET
    assert list(met.assistance_ids) == [first.assistance_id, second.assistance_id]
    assert met.update_time.ToDatetime() >= recorded.update_time.ToDatetime()


async def list_all(
    stub: pb_grpc.AssistanceServiceStub, request: pb.ListNeedsRequest
) -> list[list[pb.Need]]:
    """Every page of a listing, following next_page_token."""
    pages = []
    while True:
        response = await stub.ListNeeds(request)
        pages.append(list(response.needs))
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


async def test_needs_are_listed_by_survivor_and_by_state_across_pages(cluster: Cluster) -> None:
    stub = cluster.assistance
    survivor = await register_survivor(cluster.eligibility)
    types = ["wheelchair", "english_course", "computer_course", "carpet_weaving", "wheelchair"]
    needs = [
        await record_need(cluster, type_id, district="tartar", survivor_id=survivor)
        for type_id in types
    ]
    await record_need(cluster, "wheelchair", district="tartar")  # another survivor's
    pool = await create_pool(stub, "computer_course", 1, sessions=4)
    course = await request(
        stub, needs[2].need_id, capacity_pool_id=pool.pool_id, data=struct(level="office")
    )

    pages = await list_all(stub, pb.ListNeedsRequest(survivor_id=survivor, page_size=2))
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [n for page in pages for n in page]
    assert [n.need_id for n in listed] == [n.need_id for n in needs]  # as recorded
    assert listed[2].state == pb.NEED_STATE_REFERRED
    assert list(listed[2].assistance_ids) == [course.assistance_id]
    assert [n.type_id for n in listed] == types

    open_pages = await list_all(
        stub,
        pb.ListNeedsRequest(survivor_id=survivor, state=pb.NEED_STATE_OPEN, page_size=3),
    )
    assert [len(page) for page in open_pages] == [3, 1]
    assert [n.need_id for page in open_pages for n in page] == [
        n.need_id for i, n in enumerate(needs) if i != 2
    ]
    # Every referred need, of every survivor: this one among them, and only referred ones.
    referred = [
        n
        for page in await list_all(
            stub, pb.ListNeedsRequest(state=pb.NEED_STATE_REFERRED, page_size=20)
        )
        for n in page
    ]
    assert needs[2].need_id in {n.need_id for n in referred}
    assert {n.state for n in referred} == {pb.NEED_STATE_REFERRED}
    assert len({n.need_id for n in referred}) == len(referred)  # no page repeats one
    wheelchairs = await stub.ListNeeds(
        pb.ListNeedsRequest(survivor_id=survivor, type_id="wheelchair", district_code="tartar")
    )
    assert [n.need_id for n in wheelchairs.needs] == [needs[0].need_id, needs[4].need_id]
    assert not wheelchairs.next_page_token
    elsewhere = await stub.ListNeeds(
        pb.ListNeedsRequest(survivor_id=survivor, district_code="barda")
    )
    assert not elsewhere.needs


async def test_a_need_page_token_is_bound_to_its_filters(cluster: Cluster) -> None:
    stub = cluster.assistance
    survivor = await register_survivor(cluster.eligibility)
    for _ in range(2):
        await record_need(cluster, "english_course", survivor_id=survivor)
    first = await stub.ListNeeds(pb.ListNeedsRequest(survivor_id=survivor, page_size=1))
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListNeeds(
            pb.ListNeedsRequest(
                survivor_id=survivor,
                state=pb.NEED_STATE_OPEN,
                page_size=1,
                page_token=first.next_page_token,
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(refused.value)) == {"page_token"}


async def test_an_unknown_need_is_not_found(cluster: Cluster) -> None:
    error = await assert_writes_nothing(
        cluster,
        cluster.assistance.GetNeed(pb.GetNeedRequest(need_id="need-missing")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert reason_of(error) == "NEED_NOT_FOUND"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (pb.ListNeedsRequest(survivor_id="not a survivor!"), "survivor_id"),
        (pb.ListNeedsRequest(type_id="Wheelchair"), "type_id"),
        (pb.ListNeedsRequest(state=99), "state"),  # type: ignore[arg-type]
        (pb.ListNeedsRequest(district_code="Not a district!"), "district_code"),
        (pb.ListNeedsRequest(page_size=501), "page_size"),
        (pb.ListNeedsRequest(page_token="not a token"), "page_token"),
    ],
    ids=lambda v: v if isinstance(v, str) else "filter",
)
async def test_bad_need_filters_are_invalid_argument(
    cluster: Cluster, bad: pb.ListNeedsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.assistance.ListNeeds(bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(refused.value)) == {field}


async def test_needs_are_read_only_by_the_roles_that_follow_them(cluster: Cluster) -> None:
    need = await record_need(cluster, "spa_rehabilitation")
    for role, allowed in [("auditor", True), ("programme_manager", True), ("loan_officer", False),
                          ("committee_member", False)]:  # fmt: skip
        async with cluster.channel("assistance", cluster.token_for(role)) as channel:
            stub = pb_grpc.AssistanceServiceStub(channel)
            calls = [
                stub.GetNeed(pb.GetNeedRequest(need_id=need.need_id)),
                stub.ListNeeds(pb.ListNeedsRequest(survivor_id=need.survivor_id)),
            ]
            for call in calls:
                if allowed:
                    await call
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
                assert reason_of(refused.value) == "ROLE_NOT_ALLOWED"
    listed = await cluster.assistance.ListNeeds(pb.ListNeedsRequest(survivor_id=need.survivor_id))
    assert [n.need_id for n in listed.needs] == [need.need_id]


# --- refusals that write nothing ------------------------------------------------------


async def assert_writes_nothing(
    cluster: Cluster, call: Any, code: grpc.StatusCode
) -> grpc.aio.AioRpcError:
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert await cluster.row_counts() == before
    return err.value


async def test_an_unknown_type_is_invalid_and_writes_nothing(cluster: Cluster) -> None:
    survivor = await register_survivor(cluster.eligibility)
    error = await assert_writes_nothing(
        cluster,
        record_need(cluster, "hovercraft", survivor_id=survivor),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "unknown assistance type" in violations(error)["type_id"]
    error = await assert_writes_nothing(
        cluster,
        create_pool(cluster.assistance, "hovercraft", 3),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "type_id" in violations(error)


async def test_a_pool_only_at_a_provider_that_delivers_its_type(cluster: Cluster) -> None:
    """Wheelchairs come from suppliers and clinics: a wheelchair pool at a training centre
    is refused, and nothing is written."""
    error = await assert_writes_nothing(
        cluster,
        create_pool(cluster.assistance, "wheelchair", 3, provider_id="barda-vocational-centre"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "PROVIDER_KIND_MISMATCH"
    assert error.details() == (
        "barda-vocational-centre is a TRAINING_CENTRE provider; wheelchair is delivered by "
        "SUPPLIER or CLINIC providers"
    )
    await create_pool(cluster.assistance, "wheelchair", 3, provider_id="ganja-prosthetic-centre")


async def test_a_need_in_an_unknown_district_is_invalid_and_writes_nothing(
    cluster: Cluster,
) -> None:
    survivor = await register_survivor(cluster.eligibility)
    error = await assert_writes_nothing(
        cluster,
        record_need(cluster, "wheelchair", district="bardaa", survivor_id=survivor),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(error)["district_code"] == "unknown district 'bardaa'"


async def test_data_the_type_rejects_is_invalid_and_writes_nothing(cluster: Cluster) -> None:
    stub = cluster.assistance
    need = await record_need(cluster, "wheelchair")
    error = await assert_writes_nothing(
        cluster,
        request(stub, need.need_id, data=struct(seat_width_cm=95, colour="red")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    found = violations(error)
    assert found["data.seat_width_cm"] == "must be at most 60"  # the rule, not the value
    assert "colour" in found["data"]
    error = await assert_writes_nothing(
        cluster, request(stub, need.need_id), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "required" in violations(error)["data.seat_width_cm"]


async def test_attendance_beyond_the_course_length_is_invalid_and_writes_nothing(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "computer_course", 3, sessions=4)
    course = await request(
        stub,
        (await record_need(cluster, "computer_course")).need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(level="basic_literacy"),
    )
    await advance(stub, course.assistance_id, "attend", sessions=3)
    error = await assert_writes_nothing(
        cluster,
        advance(stub, course.assistance_id, "attend", sessions=2),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "at most 1 more session" in violations(error)["data.sessions"]
    error = await assert_writes_nothing(
        cluster,
        advance(stub, course.assistance_id, "attend", sessions=0),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "data.sessions" in violations(error)


async def test_a_negative_quantity_is_invalid_and_writes_nothing(cluster: Cluster) -> None:
    stub = cluster.assistance
    need = await record_need(cluster, "wheelchair")
    error = await assert_writes_nothing(
        cluster,
        request(stub, need.need_id, quantity=-2, data=struct(seat_width_cm=40)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "quantity" in violations(error)
    # In-kind equipment quantities are checked against the type's declaration too.
    support = await request(
        stub,
        (await record_need(cluster, "carpet_weaving")).need_id,
        data=struct(enterprise="factory"),
    )
    await advance(stub, support.assistance_id, "complete_training")
    error = await assert_writes_nothing(
        cluster,
        advance(
            stub,
            support.assistance_id,
            "hand_over_equipment",
            items=[{"item": "loom", "quantity": -1}],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(error)["data.items[0].quantity"] == "must be at least 1"
    error = await assert_writes_nothing(
        cluster,
        stub.AdjustCapacity(
            pb.AdjustCapacityRequest(
                request_id=request_id(), pool_id="stock-wheelchairs-baku", delta=0, reason="none"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "delta" in violations(error)


async def test_capacity_is_never_adjusted_beyond_the_largest_pool_and_nothing_is_written(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 1, provider_id="baku-mobility-aids")

    def adjust(delta: int) -> Any:
        return stub.AdjustCapacity(
            pb.AdjustCapacityRequest(
                request_id=request_id(), pool_id=pool.pool_id, delta=delta, reason="restock"
            )
        )

    # Up to the limit a pool may be created with, and not one unit more.
    assert (await adjust(99999)).pool.capacity == 100000
    error = await assert_writes_nothing(cluster, adjust(99999), grpc.StatusCode.INVALID_ARGUMENT)
    assert "at most 100000" in violations(error)["delta"]
    error = await assert_writes_nothing(cluster, adjust(1), grpc.StatusCode.INVALID_ARGUMENT)
    assert "at most 0 more" in violations(error)["delta"]
    # Writing off is still allowed from the top (all of it, so that no later request
    # for a wheelchair is sent to this pool).
    assert (await adjust(-100000)).pool.capacity == 0


async def test_a_second_pool_with_the_same_id_is_refused_and_writes_nothing(
    cluster: Cluster,
) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "computer_course", 4, sessions=10)
    error = await assert_writes_nothing(
        cluster,
        stub.CreateCapacityPool(
            pb.CreateCapacityPoolRequest(
                request_id=request_id(),
                pool_id=pool.pool_id,
                provider_id="tartar-youth-centre",
                type_id="english_course",
                capacity=9,
                sessions=20,
                name=localized_text_pb2.LocalizedText(en="Another", az="Başqa"),
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # Not REQUEST_ID_REUSED: the caller's request id is fine, the pool id is taken.
    assert reason_of(error) == "POOL_ALREADY_EXISTS"
    assert pool.pool_id in (error.details() or "")
    providers = await stub.ListProviders(pb.ListProvidersRequest(type_id="computer_course"))
    [kept] = [p for pr in providers.providers for p in pr.pools if p.pool_id == pool.pool_id]
    assert (kept.provider_id, kept.type_id, kept.capacity) == (
        "barda-vocational-centre",
        "computer_course",
        4,
    )


@pytest.mark.parametrize("blank", ["   ", "\t", " \n "])
async def test_an_actor_of_only_spaces_is_invalid_and_writes_nothing(
    cluster: Cluster, blank: str
) -> None:
    stub = cluster.assistance
    need = await record_need(cluster, "wheelchair")
    chair = await request(stub, need.need_id, data=struct(seat_width_cm=42))
    other_need = await record_need(cluster, "wheelchair")
    calls: dict[str, Callable[[], Any]] = {
        "assessed_by": lambda: stub.RecordNeed(need_request(new_id("srv"), assessed_by=blank)),
        "requested_by": lambda: stub.RequestAssistance(
            pb.RequestAssistanceRequest(
                request_id=request_id(),
                need_id=other_need.need_id,
                data=struct(seat_width_cm=42),
                referral_consent=True,
                requested_by=blank,
            )
        ),
        "actor": lambda: stub.AdvanceAssistance(
            pb.AdvanceAssistanceRequest(
                request_id=request_id(),
                assistance_id=chair.assistance_id,
                action="cancel",
                actor=blank,
            )
        ),
    }
    for field, call in calls.items():
        error = await assert_writes_nothing(cluster, call(), grpc.StatusCode.INVALID_ARGUMENT)
        assert violations(error)[field] == (
            "must name who acts: not only spaces, and no control or invisible formatting characters"
        )
    # From a staff token a blank name is someone other than the caller.
    async with cluster.channel("assistance", cluster.token_for("case_worker")) as channel:
        as_staff = pb_grpc.AssistanceServiceStub(channel)
        error = await assert_writes_nothing(
            cluster,
            as_staff.AdvanceAssistance(
                pb.AdvanceAssistanceRequest(
                    request_id=request_id(),
                    assistance_id=chair.assistance_id,
                    action="cancel",
                    actor=blank,
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert reason_of(error) == "ACTOR_NOT_CALLER"
    got = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=chair.assistance_id))
    assert got.assistance.state != "cancelled"


async def test_an_empty_actor_still_means_the_caller(cluster: Cluster) -> None:
    stub = cluster.assistance
    response = await stub.RecordNeed(
        need_request(await register_survivor(cluster.eligibility), assessed_by="")
    )
    assert response.need.assessed_by == DEFAULT_SUBJECT
    chair = await stub.RequestAssistance(
        pb.RequestAssistanceRequest(
            request_id=request_id(),
            need_id=response.need.need_id,
            data=struct(seat_width_cm=42),
            referral_consent=True,
        )
    )
    cancelled = await stub.AdvanceAssistance(
        pb.AdvanceAssistanceRequest(
            request_id=request_id(), assistance_id=chair.assistance.assistance_id, action="cancel"
        )
    )
    assert [e.actor for e in cancelled.assistance.history] == [DEFAULT_SUBJECT, DEFAULT_SUBJECT]


async def test_a_referral_without_consent_is_refused_and_writes_nothing(cluster: Cluster) -> None:
    stub = cluster.assistance
    need = await record_need(cluster, "english_course")
    error = await assert_writes_nothing(
        cluster,
        request(stub, need.need_id, referral_consent=False, data=struct(level="a2")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "REFERRAL_CONSENT_MISSING"


async def test_an_illegal_transition_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 2, provider_id="baku-mobility-aids")
    chair = await request(
        stub,
        (await record_need(cluster, "wheelchair")).need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(seat_width_cm=41),
    )
    error = await assert_writes_nothing(
        cluster,
        advance(stub, chair.assistance_id, "deliver", serial_number="X-1", fitted_by="pt"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "ILLEGAL_TRANSITION"
    error = await assert_writes_nothing(
        cluster, advance(stub, chair.assistance_id, "teleport"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "no action 'teleport'" in violations(error)["action"]
    # Keys an action does not read were stored in the item's history as given.
    for action, data in (("allocate_from_stock", {"bogus": 1}), ("cancel", {"why": "moved"})):
        error = await assert_writes_nothing(
            cluster,
            advance(stub, chair.assistance_id, action, **data),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert any(field.startswith("data") for field in violations(error)), violations(error)
    await advance(stub, chair.assistance_id, "cancel")
    await assert_writes_nothing(
        cluster, advance(stub, chair.assistance_id, "cancel"), grpc.StatusCode.FAILED_PRECONDITION
    )
    got = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=chair.assistance_id))
    assert got.assistance.state == "cancelled"


async def test_missing_records_are_not_found(cluster: Cluster) -> None:
    stub = cluster.assistance
    # Each says which record, as a need always did (the others said only NOT_FOUND).
    for call, reason in (
        (stub.GetAssistance(pb.GetAssistanceRequest(assistance_id="ast-missing")),
         "ASSISTANCE_NOT_FOUND"),
        (stub.GetNeed(pb.GetNeedRequest(need_id="need-missing")), "NEED_NOT_FOUND"),
        (request(stub, "need-missing"), "NEED_NOT_FOUND"),
        (advance(stub, "ast-missing", "cancel"), "ASSISTANCE_NOT_FOUND"),
        (stub.AdjustCapacity(pb.AdjustCapacityRequest(
            request_id=request_id(), pool_id="pool-missing", delta=1, reason="new stock")),
         "POOL_NOT_FOUND"),
    ):  # fmt: skip
        error = await assert_writes_nothing(cluster, call, grpc.StatusCode.NOT_FOUND)
        assert reason_of(error) == reason, error.details()
    # A provider the programme does not know is not found, not a provider without a pool
    # (FAILED_PRECONDITION NO_CAPACITY_POOL said the request could go through one day).
    need = await record_need(cluster, "wheelchair")
    unknown = request(
        stub, need.need_id, provider_id="nobody-clinic", data=struct(seat_width_cm=44)
    )
    error = await assert_writes_nothing(cluster, unknown, grpc.StatusCode.NOT_FOUND)
    assert reason_of(error) == "NO_PROVIDER"


# --- idempotency ----------------------------------------------------------------------


async def test_every_mutation_is_idempotent_through_its_request_id(cluster: Cluster) -> None:
    stub = cluster.assistance
    pool = await create_pool(stub, "computer_course", 1, sessions=8)
    need = await record_need(cluster, "computer_course")
    call = pb.RequestAssistanceRequest(
        request_id=request_id(),
        need_id=need.need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(level="office"),
        referral_consent=True,
        requested_by="cw-01",
    )
    first, second = await asyncio.gather(stub.RequestAssistance(call), stub.RequestAssistance(call))
    assert first == second
    assistance_id = first.assistance.assistance_id
    step = pb.AdvanceAssistanceRequest(
        request_id=request_id(),
        assistance_id=assistance_id,
        action="attend",
        data=struct(sessions=3),
        actor="cw-01",
    )
    once = await stub.AdvanceAssistance(step)
    twice = await stub.AdvanceAssistance(step)
    assert once == twice
    assert twice.assistance.attended_sessions == 3
    step.data.CopyFrom(struct(sessions=4))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AdvanceAssistance(step)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # A step that moves the item on is answered again as it was, not refused because the
    # item has moved on since (the retry of a delivery got ILLEGAL_TRANSITION).
    chairs = await create_pool(stub, "wheelchair", 1, provider_id="baku-mobility-aids")
    chair_need = await record_need(cluster, "wheelchair")
    chair = await request(
        stub, chair_need.need_id, capacity_pool_id=chairs.pool_id, data=struct(seat_width_cm=44)
    )
    allocate = pb.AdvanceAssistanceRequest(
        request_id=request_id(),
        assistance_id=chair.assistance_id,
        action="allocate_from_stock",
        actor="cw-01",
    )
    first_answer = await stub.AdvanceAssistance(allocate)
    before = await cluster.row_counts()
    assert await stub.AdvanceAssistance(allocate) == first_answer
    assert await cluster.row_counts() == before


async def test_delivered_assistance_is_not_cancelled_and_keeps_its_unit(cluster: Cluster) -> None:
    """Cancelling a delivered chair gave its unit to the next survivor waiting, and a
    completed course's seat to a survivor who then joined a finished cohort."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 1, provider_id="baku-mobility-aids")
    first_need, second_need = (
        await record_need(cluster, "wheelchair"),
        await record_need(cluster, "wheelchair"),
    )
    first = await request(
        stub, first_need.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=44)
    )
    waiting = await request(
        stub, second_need.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=40)
    )
    await advance(stub, first.assistance_id, "allocate_from_stock")
    await advance(stub, first.assistance_id, "deliver", serial_number="WC-1", fitted_by="pt-07")
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await advance(stub, first.assistance_id, "cancel")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "ALREADY_DELIVERED"
    assert "record its follow-up" in (refused.value.details() or "")
    assert await cluster.row_counts() == before
    still = await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=waiting.assistance_id))
    assert still.assistance.state == "waitlisted"
    # Followed up, it is finished: the refusal no longer asks for the follow-up.
    await advance(stub, first.assistance_id, "follow_up")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await advance(stub, first.assistance_id, "cancel")
    assert reason_of(refused.value) == "ALREADY_DELIVERED"
    assert (refused.value.details() or "").endswith(
        "a delivered item is not cancelled (it is followed_up)"
    )


# --- providers and the delivery report ------------------------------------------------


async def test_providers_show_their_free_capacity(cluster: Cluster) -> None:
    response = await cluster.assistance.ListProviders(pb.ListProvidersRequest(page_size=2))
    assert len(response.providers) == 2 and response.next_page_token
    everyone = await cluster.assistance.ListProviders(pb.ListProvidersRequest())
    by_id = {p.provider_id: p for p in everyone.providers}
    naftalan = by_id["naftalan-health-resort"]
    assert naftalan.name.az == "Naftalan Müalicə-Sağlamlıq Mərkəzi"
    assert naftalan.kind == pb.PROVIDER_KIND_SPA_CENTRE
    seeded = {p.pool_id: p for p in by_id["baku-mobility-aids"].pools}
    stock = seeded["stock-wheelchairs-baku"]
    assert stock.model == pb.CAPACITY_MODEL_STOCK
    assert stock.free == stock.capacity - stock.reserved


async def report_rows(
    cluster: Cluster, type_id: str
) -> dict[tuple[str, int, int], tuple[int, int, int]]:
    response = await cluster.assistance.GetDeliveryReport(
        pb.GetDeliveryReportRequest(as_of=pdate(programme_today()), type_id=type_id)
    )
    return {
        (r.district_code, r.sex, r.age_band): (r.needs_open, r.needs_met, r.delivered)
        for r in response.report.rows
    }


async def test_the_delivery_report_separates_needs_from_delivery(cluster: Cluster) -> None:
    stub = cluster.assistance
    key = ("khojavend", sex_pb2.SEX_FEMALE, age_band_pb2.AGE_BAND_60_PLUS)
    needs = [
        await record_need(
            cluster, "english_course", district="khojavend", age_band=age_band_pb2.AGE_BAND_60_PLUS
        )
        for _ in range(3)
    ]
    pool = await create_pool(stub, "english_course", 5, sessions=2)
    course = await request(
        stub, needs[0].need_id, capacity_pool_id=pool.pool_id, data=struct(level="a1")
    )
    await advance(stub, course.assistance_id, "attend", sessions=2)
    await advance(stub, course.assistance_id, "complete", certificate_number="EN-A1-0042")
    assert (await report_rows(cluster, "english_course"))[key] == (3, 0, 1)
    await advance(stub, course.assistance_id, "follow_up")
    assert (await report_rows(cluster, "english_course"))[key] == (2, 1, 1)
    # Before these needs were recorded the report had nothing for them.
    yesterday = await stub.GetDeliveryReport(
        pb.GetDeliveryReportRequest(as_of=pdate(date(2020, 1, 1)))
    )
    assert not yesterday.report.rows
    # A day that has not come is refused: what will be met or delivered is not known.
    tomorrow = programme_today() + timedelta(days=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetDeliveryReport(pb.GetDeliveryReportRequest(as_of=pdate(tomorrow)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "as_of" in violations(refused.value)


async def test_a_provider_records_steps_on_its_own_items_only(cluster: Cluster) -> None:
    """The journey worker relays a provider's step by name: another provider's name (a
    typo, or someone choosing one from the catalogue) recorded the step as theirs."""
    stub = cluster.assistance
    need = await record_need(cluster, "wheelchair")
    chair = await request(
        stub, need.need_id, provider_id="baku-mobility-aids", data=struct(seat_width_cm=42)
    )
    step = pb.AdvanceAssistanceRequest(
        request_id=request_id(),
        assistance_id=chair.assistance_id,
        action="allocate_from_stock",
        actor="tartar-youth-centre",
    )
    error = await assert_writes_nothing(
        cluster, stub.AdvanceAssistance(step), grpc.StatusCode.PERMISSION_DENIED
    )
    assert reason_of(error) == "NOT_THE_ITEMS_PROVIDER"
    assert "tartar-youth-centre is a provider, and assistance" in str(error.details())
    for another in ("TARTAR-Youth-Centre", "tartar-youth-centre ", "\u00a0tartar-youth-centre"):
        step.request_id, step.actor = request_id(), another  # in capitals, with a space
        error = await assert_writes_nothing(
            cluster, stub.AdvanceAssistance(step), grpc.StatusCode.PERMISSION_DENIED
        )
    step.request_id, step.actor = request_id(), "Baku-Mobility-Aids"  # its own, as typed
    error = await assert_writes_nothing(
        cluster, stub.AdvanceAssistance(step), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations(error)["actor"] == (
        "name the provider by its id as written: baku-mobility-aids"
    )
    step.request_id, step.actor = request_id(), "baku-mobility-aids"
    allocated = (await stub.AdvanceAssistance(step)).assistance
    assert allocated.state == "allocated"


async def test_two_requests_for_one_need_at_once_get_one_assistance_and_a_clear_refusal(
    cluster: Cluster,
) -> None:
    """The call that waited for the need did not see the assistance the first had just
    made, and hit the database's one-unfinished-assistance rule: INTERNAL."""
    stub = cluster.assistance
    pool = await create_pool(stub, "wheelchair", 2, provider_id="baku-mobility-aids")
    need = await record_need(cluster, "wheelchair")
    db = cluster.hosts["assistance"].db
    assert db is not None
    results = await queued_behind(
        db,
        "SELECT 1 FROM needs WHERE need_id = $1 FOR UPDATE",
        need.need_id,
        *(
            request(
                stub, need.need_id, capacity_pool_id=pool.pool_id, data=struct(seat_width_cm=44)
            )
            for _ in range(2)
        ),
    )
    made = [r for r in results if isinstance(r, pb.Assistance)]
    [refused] = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == 1 and made[0].state == "fitting_assessment"
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
    assert reason_of(refused) == "ASSISTANCE_IN_PROGRESS"
