"""Assessments that arrive together share a transaction (services/eligibility/assessing.py);
what each caller sees is what one transaction per call would give."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

import grpc
import pytest

from mineaction.audit.v1 import audit_service_pb2 as audit_pb
from mineaction.audit.v1 import audit_service_pb2_grpc as audit_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as pb_grpc
from services.common.encoded import Encoded
from services.common.idempotency import payload_hash
from services.eligibility.assessing import Assessor, _Call
from services.eligibility.rulebook import RuleBook
from tests.conftest import Cluster
from tests.factories import pdate, register_request, request_id, saatli_fish_farmer
from tests.locks import queued_behind

ASSESSED_ON = pdate(date(2026, 3, 1))


def assess(survivor_id: str, **fields: object) -> pb.AssessEligibilityRequest:
    request = pb.AssessEligibilityRequest(
        request_id=request_id(), survivor_id=survivor_id, assessment_date=ASSESSED_ON
    )
    for name, value in fields.items():
        if name == "assessment_date":
            request.assessment_date.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    return request


async def registered(cluster: Cluster, count: int) -> list[str]:
    survivors = [saatli_fish_farmer() for _ in range(count)]
    for survivor in survivors:
        await cluster.eligibility.RegisterSurvivor(register_request(survivor))
    return [s.survivor_id for s in survivors]


async def outcomes(
    stub: pb_grpc.EligibilityServiceStub, requests: list[pb.AssessEligibilityRequest]
) -> list[pb.AssessEligibilityResponse | grpc.StatusCode]:
    """Every request sent at once; each one's answer or error code, in order."""

    async def one(request: pb.AssessEligibilityRequest) -> object:
        try:
            return await stub.AssessEligibility(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code()

    return list(await asyncio.gather(*(one(r) for r in requests)))


def case_worker(cluster: Cluster, subject: str) -> grpc.aio.Channel:
    return cluster.channel("eligibility", cluster.token_for("case_worker", subject=subject))


async def assessments_of(cluster: Cluster, survivor_id: str) -> list[pb.Assessment]:
    listed = await cluster.eligibility.ListAssessments(
        pb.ListAssessmentsRequest(survivor_id=survivor_id)
    )
    return list(listed.assessments)


async def audit_entries(cluster: Cluster, subject: str) -> list[audit_pb.AuditEntry]:
    token = cluster.token_for("auditor", subject="auditor-gc")
    async with cluster.channel("eligibility", token) as channel:
        response = await audit_grpc.AuditServiceStub(channel).ListAuditEntries(
            audit_pb.ListAuditEntriesRequest(subject=subject, page_size=200), timeout=10
        )
    return list(response.audit_entries)


@pytest.mark.timeout(60)
async def test_fifty_concurrent_duplicates_have_one_effect(cluster: Cluster) -> None:
    (survivor_id,) = await registered(cluster, 1)
    request = assess(survivor_id)
    subject = f"cw-{uuid.uuid4().hex[:6]}"
    async with case_worker(cluster, subject) as ch:
        answers = await outcomes(pb_grpc.EligibilityServiceStub(ch), [request] * 50)
    assert all(a == answers[0] for a in answers)
    assert isinstance(answers[0], pb.AssessEligibilityResponse)
    stored = await assessments_of(cluster, survivor_id)
    assert [a.assessment_id for a in stored] == [answers[0].assessment.assessment_id]
    assert stored[0] == answers[0].assessment
    # Every call is audited once: the effect with its transaction, the replays after.
    entries = await audit_entries(cluster, subject)
    assert [(e.request_id, e.code) for e in entries] == [(request.request_id, "OK")] * 50


@pytest.mark.timeout(60)
async def test_refused_calls_among_many_leave_nothing_and_the_rest_commit(
    cluster: Cluster,
) -> None:
    survivors = await registered(cluster, 12)
    good = [assess(s) for s in survivors]
    unknown = assess("srv-nobody-registered")
    before_birth = assess(survivors[0], assessment_date=pdate(date(1970, 1, 1)))
    no_reason = assess(survivors[1], reassess_under_latest=True)
    refused = [unknown, before_birth, no_reason]
    subject = f"cw-{uuid.uuid4().hex[:6]}"
    async with case_worker(cluster, subject) as ch:
        stub = pb_grpc.EligibilityServiceStub(ch)
        answers = await outcomes(stub, good[:6] + refused + good[6:])
        assert answers[6:9] == [
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.INVALID_ARGUMENT,
        ]
        accepted = answers[:6] + answers[9:]
        assert all(isinstance(a, pb.AssessEligibilityResponse) for a in accepted)
        for survivor_id, answer in zip(survivors, accepted, strict=True):
            assert isinstance(answer, pb.AssessEligibilityResponse)
            assert answer.assessment.survivor_id == survivor_id
            assert [a.assessment_id for a in await assessments_of(cluster, survivor_id)] == [
                answer.assessment.assessment_id
            ]
        # A refused call kept nothing, not even its request_id: sent again corrected, it
        # is a first call.
        before_birth.assessment_date.CopyFrom(ASSESSED_ON)
        corrected = await stub.AssessEligibility(before_birth)
    assert len(await assessments_of(cluster, survivors[0])) == 2
    assert corrected.assessment.survivor_id == survivors[0]
    codes = sorted((e.request_id, e.code) for e in await audit_entries(cluster, subject))
    expected = [(r.request_id, "OK") for r in good] + [
        (unknown.request_id, "NOT_FOUND"),
        (before_birth.request_id, "INVALID_ARGUMENT"),
        (no_reason.request_id, "INVALID_ARGUMENT"),
        (before_birth.request_id, "OK"),
    ]
    assert codes == sorted(expected)


@pytest.mark.timeout(60)
async def test_concurrent_first_assessments_of_one_survivor_agree_on_the_pin(
    cluster: Cluster,
) -> None:
    (survivor_id,) = await registered(cluster, 1)
    answers = await outcomes(cluster.eligibility, [assess(survivor_id) for _ in range(10)])
    versions = {a.assessment.rule_set_version for a in answers}
    assert len(versions) == 1
    assert len(await assessments_of(cluster, survivor_id)) == 10
    later = await cluster.eligibility.AssessEligibility(assess(survivor_id))
    assert {later.assessment.rule_set_version} == versions


@pytest.mark.timeout(60)
async def test_an_intake_changed_while_deciding_is_decided_again(cluster: Cluster) -> None:
    """The survivor is re-registered (moved to Fuzuli) after the group read it and before
    it wrote: the call runs again on what is stored now, never on the stale intake."""
    survivor = saatli_fish_farmer()
    await cluster.eligibility.RegisterSurvivor(register_request(survivor))
    moved = pb.SurvivorIntake()
    moved.CopyFrom(survivor)
    moved.district_code = "fuzuli"
    db = cluster.hosts["eligibility"].db
    assert db is not None
    decided: list[str] = []

    class MovedMeanwhile(Assessor):
        async def _decide(self, conn, call, row, pins):  # type: ignore[no-untyped-def]
            decided.append(row["survivor_id"])
            if len(decided) == 1:
                await cluster.eligibility.RegisterSurvivor(register_request(moved))
            return await super()._decide(conn, call, row, pins)

    answer = await MovedMeanwhile(db, RuleBook()).assess(assess(survivor.survivor_id))
    assert decided == [survivor.survivor_id] * 2
    assert isinstance(answer, Encoded)  # a fresh assessment is served as its encoding
    assert answer.message().assessment.district_code == "fuzuli"
    stored = await assessments_of(cluster, survivor.survivor_id)
    assert [a.district_code for a in stored] == ["fuzuli"]


async def _publish_the_same_rules_again(cluster: Cluster) -> int:
    """A newer version of the shipped rules that decides alike (its policy reference
    revised); returns its number."""
    latest = await cluster.eligibility.GetRuleSet(pb.GetRuleSetRequest(rule_set_id="reintegration"))
    revised = latest.rule_set.source_yaml.replace(
        'policy_ref: "', f'policy_ref: "(revised {uuid.uuid4().hex[:6]}) ', 1
    )
    published = await cluster.eligibility.PublishRuleSet(
        pb.PublishRuleSetRequest(
            request_id=request_id(),
            source_yaml=revised,
            published_by="pm-01",
            change_note="policy reference revised",
        )
    )
    return published.rule_set.version


@pytest.mark.timeout(60)
async def test_a_first_assessment_during_a_re_registration_pins_the_survivor(
    cluster: Cluster,
) -> None:
    """The write found the survivor re-registered once it got the row, and left the pin
    unset: the survivor's next plain assessment went to whatever version was latest."""
    (survivor_id,) = await registered(cluster, 1)
    db = cluster.hosts["eligibility"].db
    assert db is not None
    re_registering = "UPDATE survivors SET district_code = district_code WHERE survivor_id = $1"
    [answer] = await queued_behind(
        db, re_registering, survivor_id, cluster.eligibility.AssessEligibility(assess(survivor_id))
    )
    assert isinstance(answer, pb.AssessEligibilityResponse), answer
    survivor = await cluster.eligibility.GetSurvivor(pb.GetSurvivorRequest(survivor_id=survivor_id))
    assert survivor.survivor.pinned_rule_set_version == answer.assessment.rule_set_version


@pytest.mark.timeout(60)
async def test_a_re_assessment_sent_again_leaves_the_pin_as_it_moved_it(cluster: Cluster) -> None:
    """Sent again in one group with a plain assessment of the same survivor, a
    re-assessment was decided anew under the newest version, and moved the survivor to it
    through the plain call (no reason given)."""
    (survivor_id,) = await registered(cluster, 1)
    await cluster.eligibility.AssessEligibility(assess(survivor_id))
    moved_to = await _publish_the_same_rules_again(cluster)
    reassess = assess(survivor_id, reassess_under_latest=True, reassessment_reason="annual review")
    first = await cluster.eligibility.AssessEligibility(reassess)
    assert first.assessment.rule_set_version == moved_to
    await _publish_the_same_rules_again(cluster)
    db = cluster.hosts["eligibility"].db
    assert db is not None
    assessor = Assessor(db, RuleBook())
    plain = assess(survivor_id)
    # One group holding both: the retry and a plain assessment after it.
    retried, after = await assessor._run(
        [_Call(r, date(2026, 3, 1), payload_hash(r), None) for r in (reassess, plain)]
    )
    assert isinstance(retried, pb.AssessEligibilityResponse)
    assert retried.assessment.assessment_id == first.assessment.assessment_id
    assert isinstance(after, Encoded)
    assert after.message().assessment.rule_set_version == moved_to
    survivor = await cluster.eligibility.GetSurvivor(pb.GetSurvivorRequest(survivor_id=survivor_id))
    assert survivor.survivor.pinned_rule_set_version == moved_to
