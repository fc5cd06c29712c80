"""Assistance uses a survivor's data only while their consent to data processing stands,
as eligibility (the survivor register) says: no need recorded and no assistance
requested (no referral to a provider) for a survivor never registered with consent, or
whose consent stands withdrawn; each refusal writes nothing. On real PostgreSQL, over
gRPC, between the real services."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from services.assistance.service import SPEC as ASSISTANCE
from services.common.errors import reason_of, violations_in
from services.common.protoconv import from_proto_date
from tests.conftest import Cluster
from tests.factories import (
    need_request,
    new_id,
    pdate,
    register_request,
    register_survivor,
    request_id,
    saatli_fish_farmer,
)
from tests.grpc_errors import details
from tests.integration.test_assistance_service import (
    advance,
    assert_writes_nothing,
    create_pool,
    record_need,
    request,
    struct,
)
from tests.integration.test_consent_withdrawal import WITHDRAWN_ON, withdraw_request
from tests.ports import free_port

GIVEN_ON = date(2026, 2, 20)  # the fish farmer's consent (tests/factories.py)


async def consent_of(cluster: Cluster, survivor_id: str) -> eligibility_pb.SurvivorConsent:
    answer = await cluster.eligibility.GetConsent(
        eligibility_pb.GetConsentRequest(survivor_id=survivor_id)
    )
    return answer.consent


async def test_consent_is_read_as_it_stands_and_nothing_else(cluster: Cluster) -> None:
    intake = saatli_fish_farmer()
    sid = intake.survivor_id
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    given = await consent_of(cluster, sid)
    assert (given.survivor_id, given.stands, from_proto_date(given.given_on)) == (
        sid,
        True,
        GIVEN_ON,
    )
    assert not given.HasField("withdrawal")

    await cluster.eligibility.WithdrawConsent(withdraw_request(sid))
    withdrawn = await consent_of(cluster, sid)
    assert not withdrawn.stands
    assert from_proto_date(withdrawn.withdrawal.withdrawn_on) == WITHDRAWN_ON
    assert withdrawn.withdrawal.recorded_by == "tester"

    intake.consent.recorded_on.CopyFrom(pdate(WITHDRAWN_ON + timedelta(days=2)))
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    again = await consent_of(cluster, sid)
    assert again.stands and not again.HasField("withdrawal")
    assert from_proto_date(again.given_on) == WITHDRAWN_ON + timedelta(days=2)

    for unknown, code in [
        (new_id("srv"), grpc.StatusCode.NOT_FOUND),
        ("not an id", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        try:
            await consent_of(cluster, unknown)
        except grpc.aio.AioRpcError as error:
            assert error.code() == code
        else:
            raise AssertionError(f"GetConsent of {unknown!r} answered")


async def test_no_need_is_recorded_for_a_survivor_never_registered(cluster: Cluster) -> None:
    error = await assert_writes_nothing(
        cluster,
        cluster.assistance.RecordNeed(need_request(new_id("srv"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    [violation] = violations_in(error)
    assert (violation.field, violation.reason) == ("survivor_id", "UNKNOWN_SURVIVOR")
    assert "register them with their consent to data processing" in violation.description


async def test_after_a_withdrawal_no_need_and_no_referral_until_consent_is_given_again(
    cluster: Cluster,
) -> None:
    intake = saatli_fish_farmer()
    sid = intake.survivor_id
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    first_need = need_request(sid)
    chair_need = (await cluster.assistance.RecordNeed(first_need)).need
    course_need = await record_need(cluster, "english_course", survivor_id=sid)
    pool = await create_pool(cluster.assistance, "english_course", 5, sessions=2)

    carpet_need = await record_need(cluster, "carpet_weaving", survivor_id=sid)
    carpet = pb.RequestAssistanceRequest(
        request_id=request_id(),
        need_id=carpet_need.need_id,
        data=struct(enterprise="home_workshop"),
        referral_consent=True,
        requested_by="cw-01",
    )
    requested = await cluster.assistance.RequestAssistance(carpet)

    await cluster.eligibility.WithdrawConsent(withdraw_request(sid))
    # A request made before, sent again with its request_id, gets its first answer.
    again = await cluster.assistance.RequestAssistance(carpet)
    assert again.assistance.assistance_id == requested.assistance.assistance_id
    error = await assert_writes_nothing(
        cluster,
        cluster.assistance.RecordNeed(need_request(sid, "spa_rehabilitation")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "CONSENT_WITHDRAWN"
    info, _ = details(error)
    assert info is not None and dict(info.metadata) == {"withdrawn_on": WITHDRAWN_ON.isoformat()}
    assert f"withdrew consent to data processing on {WITHDRAWN_ON}" in (error.details() or "")
    # Needs recorded before stay; assistance for them is no longer requested: not from
    # stock, and no referral to a provider's cohort (its seats untouched).
    refused_requests: list[tuple[str, dict[str, Any]]] = [
        (chair_need.need_id, {"data": struct(seat_width_cm=42)}),
        (course_need.need_id, {"capacity_pool_id": pool.pool_id, "data": struct(level="a1")}),
    ]
    for need_id, fields in refused_requests:
        error = await assert_writes_nothing(
            cluster,
            request(cluster.assistance, need_id, **fields),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert reason_of(error) == "CONSENT_WITHDRAWN"
    got = await cluster.assistance.GetNeed(pb.GetNeedRequest(need_id=chair_need.need_id))
    assert got.need.state == pb.NEED_STATE_OPEN
    # A need recorded before, asked for again with its request_id, gets its first answer.
    replayed = await cluster.assistance.RecordNeed(first_need)
    assert replayed.need.need_id == chair_need.need_id

    intake.consent.recorded_on.CopyFrom(pdate(WITHDRAWN_ON + timedelta(days=1)))
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    course = await request(
        cluster.assistance,
        course_need.need_id,
        capacity_pool_id=pool.pool_id,
        data=struct(level="a1"),
    )
    assert course.provider_id == pool.provider_id
    spa = await cluster.assistance.RecordNeed(need_request(sid, "spa_rehabilitation"))
    assert spa.need.survivor_id == sid


async def test_without_eligibility_to_ask_nothing_is_recorded_and_a_retry_can_succeed(
    cluster: Cluster,
) -> None:
    """Consent that cannot be checked is not assumed: UNAVAILABLE, to retry, and nothing
    written; the same request_id later, with eligibility answering, records the need.
    What the service can refuse on its own it still refuses as it is; a request_id seen
    already gets its first answer without asking."""
    sid = (await cluster.eligibility.RegisterSurvivor(register_request())).survivor.survivor_id
    recorded = need_request(sid)
    chair_need = await record_need(cluster, "wheelchair", survivor_id=sid)
    chair = pb.RequestAssistanceRequest(
        request_id=request_id(),
        need_id=chair_need.need_id,
        data=struct(seat_width_cm=42),
        referral_consent=True,
        requested_by="cw-01",
    )
    first = await cluster.assistance.RequestAssistance(chair)
    course_need = await record_need(cluster, "english_course", survivor_id=sid)
    nowhere = f"127.0.0.1:{free_port()}"
    async with cluster.second_host(ASSISTANCE, eligibility_address=nowhere) as channel:
        cut_off = pb_grpc.AssistanceServiceStub(channel)
        for call in (
            cut_off.RecordNeed(recorded),
            request(cut_off, course_need.need_id, data=struct(level="a1")),
        ):
            error = await assert_writes_nothing(cluster, call, grpc.StatusCode.UNAVAILABLE)
            assert "cannot say whether the survivor's consent stands" in (error.details() or "")
            assert "try again" in (error.details() or "")
        error = await assert_writes_nothing(
            cluster,
            request(cut_off, course_need.need_id, data=struct(level="fluent")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [v.field for v in violations_in(error)] == ["data.level"]
        again = await cut_off.RequestAssistance(chair)
        assert again.assistance.assistance_id == first.assistance.assistance_id
    need = (await cluster.assistance.RecordNeed(recorded)).need
    assert need.survivor_id == sid


async def test_a_need_of_a_survivor_never_registered_gets_no_assistance(
    cluster: Cluster,
) -> None:
    """A need recorded before assistance asked about consent, for a survivor eligibility
    never registered: no assistance is requested for it."""
    db = cluster.hosts["assistance"].db
    assert db is not None
    need_id = new_id("need")
    await db.pool.execute(
        """INSERT INTO needs (need_id, survivor_id, type_id, state, assessed_by,
               district_code, sex, age_band)
           VALUES ($1, $2, 'wheelchair', 'OPEN', 'cw-01', 'saatli', 1, 2)""",
        need_id,
        new_id("srv"),
    )
    error = await assert_writes_nothing(
        cluster,
        request(cluster.assistance, need_id, data=struct(seat_width_cm=42)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    [violation] = violations_in(error)
    assert (violation.field, violation.reason) == ("need_id", "UNKNOWN_SURVIVOR")


async def test_many_survivors_consent_is_read_at_once_in_the_order_asked(
    cluster: Cluster,
) -> None:
    standing, withdrawn = saatli_fish_farmer(), saatli_fish_farmer()
    for intake in (standing, withdrawn):
        await cluster.eligibility.RegisterSurvivor(register_request(intake))
    await cluster.eligibility.WithdrawConsent(withdraw_request(withdrawn.survivor_id))
    unknown = new_id("srv")
    asked = [withdrawn.survivor_id, unknown, standing.survivor_id, withdrawn.survivor_id]
    answer = await cluster.eligibility.BatchGetConsents(
        eligibility_pb.BatchGetConsentsRequest(survivor_ids=asked)
    )
    assert [(c.survivor_id, c.stands) for c in answer.consents] == [
        (withdrawn.survivor_id, False),
        (standing.survivor_id, True),
        (withdrawn.survivor_id, False),
    ]
    for bad in ([], [f"srv-{n:04d}" for n in range(101)], ["not an id"]):
        try:
            await cluster.eligibility.BatchGetConsents(
                eligibility_pb.BatchGetConsentsRequest(survivor_ids=bad)
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError(f"BatchGetConsents of {len(bad)} ids answered")


async def test_needs_asked_for_together_each_get_their_own_survivors_answer(
    cluster: Cluster,
) -> None:
    """Checks that arrive together are asked of eligibility in one call: one survivor's
    refusal is never another's."""
    standing = [await register_survivor(cluster.eligibility) for _ in range(12)]
    withdrawn = await register_survivor(cluster.eligibility)
    await cluster.eligibility.WithdrawConsent(withdraw_request(withdrawn))
    unknown = new_id("srv")
    asked = [*standing[:6], withdrawn, unknown, *standing[6:]]
    outcomes = await asyncio.gather(
        *(cluster.assistance.RecordNeed(need_request(sid)) for sid in asked),
        return_exceptions=True,
    )
    for sid, outcome in zip(asked, outcomes, strict=True):
        if sid == withdrawn:
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert reason_of(outcome) == "CONSENT_WITHDRAWN"
        elif sid == unknown:
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            assert isinstance(outcome, pb.RecordNeedResponse), outcome
            assert outcome.need.survivor_id == sid


async def test_a_service_token_minted_anew_is_used_without_a_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The token assistance asks eligibility with is read again when its file changes:
    refused with one not valid (INTERNAL: the operator's to fix, nothing written), it
    asks with the one written there next, with no restart."""
    token_file = tmp_path / "service-token"
    token_file.write_text("not-a-token\n")
    sid = await register_survivor(cluster.eligibility)
    async with cluster.second_host(ASSISTANCE, service_token_file=token_file) as channel:
        stub = pb_grpc.AssistanceServiceStub(channel)
        await assert_writes_nothing(
            cluster, stub.RecordNeed(need_request(sid)), grpc.StatusCode.INTERNAL
        )
        token_file.write_text(cluster.settings.effective_service_token_file.read_text())
        need = (await stub.RecordNeed(need_request(sid))).need
        assert need.survivor_id == sid


async def test_a_place_that_comes_free_is_not_given_to_a_survivor_who_withdrew_consent(
    cluster: Cluster,
) -> None:
    """Waitlisted before withdrawing consent, a survivor is not given a place that comes
    free (it would refer them to the provider): their waiting request is cancelled by
    `system`, the reason in its event, and the place goes to the next in the queue. A
    step that frees no place asks nothing; one that would, while eligibility cannot
    answer, is refused, to retry, and changes nothing."""
    stub = cluster.assistance
    pool = await create_pool(stub, "computer_course", 1, sessions=4)
    seat = {"capacity_pool_id": pool.pool_id, "data": struct(level="office")}
    holder = await request(stub, (await record_need(cluster, "computer_course")).need_id, **seat)
    withdrawn = await register_survivor(cluster.eligibility)
    first_need = await record_need(cluster, "computer_course", survivor_id=withdrawn)
    first = await request(stub, first_need.need_id, **seat)
    second = await request(stub, (await record_need(cluster, "computer_course")).need_id, **seat)
    assert (first.waitlist_position, second.waitlist_position) == (1, 2)
    await cluster.eligibility.WithdrawConsent(withdraw_request(withdrawn))

    nowhere = f"127.0.0.1:{free_port()}"
    async with cluster.second_host(ASSISTANCE, eligibility_address=nowhere) as channel:
        cut_off = pb_grpc.AssistanceServiceStub(channel)
        attended = await advance(cut_off, holder.assistance_id, "attend", sessions=1)
        assert attended.attended_sessions == 1
        await assert_writes_nothing(
            cluster, advance(cut_off, holder.assistance_id, "drop_out"), grpc.StatusCode.UNAVAILABLE
        )
    await advance(stub, holder.assistance_id, "drop_out")
    read = [
        (await stub.GetAssistance(pb.GetAssistanceRequest(assistance_id=x))).assistance
        for x in (first.assistance_id, second.assistance_id)
    ]
    assert [(a.state, a.waitlist_position) for a in read] == [("cancelled", 0), ("enrolled", 0)]
    assert (read[0].history[-1].action, read[0].history[-1].actor) == ("cancel", "system")
    assert "consent to data processing was withdrawn" in str(read[0].history[-1].data)
    need = await stub.GetNeed(pb.GetNeedRequest(need_id=first_need.need_id))
    assert need.need.state == pb.NEED_STATE_OPEN
    providers = await stub.ListProviders(pb.ListProvidersRequest(type_id="computer_course"))
    [counted] = [p for pr in providers.providers for p in pr.pools if p.pool_id == pool.pool_id]
    assert (counted.reserved, counted.free, counted.waitlisted) == (1, 0, 0)
