"""A survivor withdraws consent to data processing: from then on nothing uses their data
(no assessment, no follow-up, no what-if over their records) until they give it again,
and what was recorded before stays readable. On real PostgreSQL, over gRPC."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import grpc
import pytest

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from services.common.errors import reason_of, violations_in
from services.common.protoconv import from_proto_date
from tests.conftest import Cluster
from tests.factories import (
    follow_up_request,
    new_id,
    pdate,
    register_request,
    request_id,
    saatli_fish_farmer,
)

SHIPPED = Path("services/eligibility/rulesets/reintegration.yaml").read_text(encoding="utf-8")
ASSESSED_ON = pdate(date(2026, 3, 1))
WITHDRAWN_ON = date(2026, 3, 5)  # the fish farmer consented on 2026-02-20


async def registered_and_assessed(cluster: Cluster) -> tuple[pb.SurvivorIntake, pb.Assessment]:
    intake = saatli_fish_farmer()
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    assessed = await cluster.eligibility.AssessEligibility(assess_request(intake.survivor_id))
    return intake, assessed.assessment


def assess_request(survivor_id: str) -> pb.AssessEligibilityRequest:
    return pb.AssessEligibilityRequest(
        request_id=request_id(), survivor_id=survivor_id, assessment_date=ASSESSED_ON
    )


def withdraw_request(
    survivor_id: str, on: date = WITHDRAWN_ON, recorded_by: str = ""
) -> pb.WithdrawConsentRequest:
    return pb.WithdrawConsentRequest(
        request_id=request_id(),
        survivor_id=survivor_id,
        withdrawn_on=pdate(on),
        recorded_by=recorded_by,
    )


async def refused(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def evaluated_by_a_what_if(cluster: Cluster) -> int:
    what_if = await cluster.eligibility.SimulateRuleSet(
        pb.SimulateRuleSetRequest(source_yaml=SHIPPED, max_examples=1)
    )
    return what_if.assessments_evaluated


async def test_after_a_withdrawal_nothing_uses_the_survivors_data(cluster: Cluster) -> None:
    intake, earlier = await registered_and_assessed(cluster)
    sid = intake.survivor_id

    withdrawn = (await cluster.eligibility.WithdrawConsent(withdraw_request(sid))).survivor
    assert from_proto_date(withdrawn.consent_withdrawal.withdrawn_on) == WITHDRAWN_ON
    assert withdrawn.consent_withdrawal.recorded_by == "tester"  # the caller, when empty
    shown = await cluster.eligibility.GetSurvivor(pb.GetSurvivorRequest(survivor_id=sid))
    assert shown.survivor.consent_withdrawal == withdrawn.consent_withdrawal

    before = await cluster.row_counts()
    error = await refused(
        cluster.eligibility.AssessEligibility(assess_request(sid)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "CONSENT_WITHDRAWN"
    assert "2026-03-05" in (error.details() or "")
    # Refused before lending is asked: the loan named does not even exist.
    error = await refused(
        cluster.eligibility.RecordFollowUp(
            follow_up_request(sid, new_id("loan"), 6, date(2026, 9, 1))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "CONSENT_WITHDRAWN"
    assert await cluster.row_counts() == before

    # What was decided while consent stood stays readable, as it was.
    stored = await cluster.eligibility.GetAssessment(
        pb.GetAssessmentRequest(assessment_id=earlier.assessment_id)
    )
    assert stored.assessment == earlier


async def test_what_ifs_pass_over_a_withdrawn_survivor_until_consent_is_given_again(
    cluster: Cluster,
) -> None:
    intake, _ = await registered_and_assessed(cluster)
    with_them = await evaluated_by_a_what_if(cluster)

    await cluster.eligibility.WithdrawConsent(withdraw_request(intake.survivor_id))
    assert await evaluated_by_a_what_if(cluster) == with_them - 1

    intake.consent.recorded_on.CopyFrom(pdate(WITHDRAWN_ON + timedelta(days=5)))
    intake.consent.recorded_by = "cw-02"
    again = (await cluster.eligibility.RegisterSurvivor(register_request(intake))).survivor
    assert not again.HasField("consent_withdrawal")
    # The withdrawal the survivor's record no longer shows is kept, with the new consent.
    db = cluster.hosts["eligibility"].db
    assert db is not None
    events = await db.pool.fetch(
        """SELECT event, event_date, recorded_by FROM consent_events
           WHERE survivor_id = $1 ORDER BY recorded_at""",
        intake.survivor_id,
    )
    assert [tuple(e) for e in events] == [
        ("WITHDRAWN", WITHDRAWN_ON, "tester"),
        ("GIVEN_AGAIN", WITHDRAWN_ON + timedelta(days=5), "cw-02"),
    ]
    assert await evaluated_by_a_what_if(cluster) == with_them
    # The intake file from before, sent again, would put back the consent withdrawn.
    before = await cluster.row_counts()
    intake.consent.recorded_on.CopyFrom(pdate(date(2026, 2, 20)))
    error = await refused(
        cluster.eligibility.RegisterSurvivor(register_request(intake)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "CONSENT_OUT_OF_DATE"
    assert "given on 2026-03-10" in (error.details() or "")
    assert await cluster.row_counts() == before
    reassessed = await cluster.eligibility.AssessEligibility(assess_request(intake.survivor_id))
    assert reassessed.assessment.survivor_id == intake.survivor_id


async def test_registering_again_with_the_consent_that_was_withdrawn_changes_nothing(
    cluster: Cluster,
) -> None:
    """The intake file still carries the first consent's date: that consent is the one
    withdrawn, so the record is neither used nor changed."""
    intake, _ = await registered_and_assessed(cluster)
    await cluster.eligibility.WithdrawConsent(withdraw_request(intake.survivor_id))
    before = await cluster.row_counts()
    changed = pb.SurvivorIntake()
    changed.CopyFrom(intake)
    changed.household_size = 7
    error = await refused(
        cluster.eligibility.RegisterSurvivor(register_request(changed)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "CONSENT_WITHDRAWN"
    assert "dated on or after 2026-03-05 and after the consent withdrawn (2026-02-20)" in (
        error.details() or ""
    )
    assert await cluster.row_counts() == before
    shown = await cluster.eligibility.GetSurvivor(
        pb.GetSurvivorRequest(survivor_id=intake.survivor_id)
    )
    assert shown.survivor.intake.household_size == intake.household_size
    assert shown.survivor.HasField("consent_withdrawal")

    # Given again on the day of the withdrawal, it counts.
    changed.consent.recorded_on.CopyFrom(pdate(WITHDRAWN_ON))
    again = await cluster.eligibility.RegisterSurvivor(register_request(changed))
    assert again.survivor.intake.household_size == 7
    assert not again.survivor.HasField("consent_withdrawal")


async def test_a_withdrawal_on_the_day_of_consent_is_not_undone_by_the_same_intake(
    cluster: Cluster,
) -> None:
    """Consent given and withdrawn on one day: the intake sent again as it was carries the
    consent withdrawn, not one given since (it cleared the withdrawal)."""
    intake = saatli_fish_farmer()  # consent given on 2026-02-20
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    await cluster.eligibility.WithdrawConsent(
        withdraw_request(intake.survivor_id, date(2026, 2, 20))
    )
    error = await refused(
        cluster.eligibility.RegisterSurvivor(register_request(intake)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "CONSENT_WITHDRAWN"
    shown = await cluster.eligibility.GetSurvivor(
        pb.GetSurvivorRequest(survivor_id=intake.survivor_id)
    )
    assert shown.survivor.HasField("consent_withdrawal")


async def test_a_withdrawal_is_recorded_once(cluster: Cluster) -> None:
    intake, _ = await registered_and_assessed(cluster)
    request = withdraw_request(intake.survivor_id)
    first = await cluster.eligibility.WithdrawConsent(request)
    assert await cluster.eligibility.WithdrawConsent(request) == first  # a retry: its answer

    before = await cluster.row_counts()
    later = withdraw_request(intake.survivor_id, WITHDRAWN_ON + timedelta(days=1))
    error = await refused(
        cluster.eligibility.WithdrawConsent(later), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "CONSENT_ALREADY_WITHDRAWN"
    assert await cluster.row_counts() == before
    shown = await cluster.eligibility.GetSurvivor(
        pb.GetSurvivorRequest(survivor_id=intake.survivor_id)
    )
    assert from_proto_date(shown.survivor.consent_withdrawal.withdrawn_on) == WITHDRAWN_ON


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda r: r.ClearField("withdrawn_on"), "withdrawn_on", "required"),
        # The fish farmer consented on 2026-02-20.
        (
            lambda r: r.withdrawn_on.CopyFrom(pdate(date(2026, 2, 19))),
            "withdrawn_on",
            "BEFORE_CONSENT",
        ),
        (lambda r: setattr(r, "survivor_id", "a b"), "survivor_id", "string.pattern"),
        (lambda r: setattr(r, "request_id", "not-a-uuid"), "request_id", "string.uuid"),
    ],
)
async def test_a_bad_withdrawal_is_refused_and_changes_nothing(
    cluster: Cluster, change: object, field: str, reason: str
) -> None:
    intake, _ = await registered_and_assessed(cluster)
    request = withdraw_request(intake.survivor_id)
    change(request)  # type: ignore[operator]
    before = await cluster.row_counts()
    error = await refused(
        cluster.eligibility.WithdrawConsent(request), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (field, reason) in {(v.field, v.reason) for v in violations_in(error)}
    assert await cluster.row_counts() == before
    shown = await cluster.eligibility.GetSurvivor(
        pb.GetSurvivorRequest(survivor_id=intake.survivor_id)
    )
    assert not shown.survivor.HasField("consent_withdrawal")


async def test_withdrawing_for_someone_not_registered_is_not_found(cluster: Cluster) -> None:
    before = await cluster.row_counts()
    await refused(
        cluster.eligibility.WithdrawConsent(withdraw_request(new_id("srv"))),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await cluster.row_counts() == before
