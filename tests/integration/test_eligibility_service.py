"""The eligibility service over gRPC, on real PostgreSQL: intake, assessment with
explanations in both languages, pinning to a rule-set version, publishing, what-if."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import sex_pb2
from services.common.errors import reason_of, violations_in
from services.common.programme_time import add_months, programme_today
from services.eligibility.service import SPEC as ELIGIBILITY
from tests.conftest import Cluster
from tests.factories import (
    follow_up_request,
    new_id,
    pdate,
    register_request,
    request_id,
    saatli_fish_farmer,
)
from tests.grpc_errors import details
from tests.lending_helpers import approved_loan, disburse, open_fund, repayment, write_off
from tests.ports import closed_port

SHIPPED = Path("services/eligibility/rulesets/reintegration.yaml").read_text(encoding="utf-8")
ASSESSED_ON = pdate(date(2026, 3, 1))


async def register_and_assess(cluster: Cluster, intake: pb.SurvivorIntake) -> pb.Assessment:
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    response = await cluster.eligibility.AssessEligibility(
        pb.AssessEligibilityRequest(
            request_id=request_id(), survivor_id=intake.survivor_id, assessment_date=ASSESSED_ON
        )
    )
    return response.assessment


async def get_survivor(cluster: Cluster, survivor_id: str) -> pb.Survivor:
    response = await cluster.eligibility.GetSurvivor(pb.GetSurvivorRequest(survivor_id=survivor_id))
    return response.survivor


def decision(assessment: pb.Assessment, programme_id: str) -> pb.ProgrammeDecision:
    return next(d for d in assessment.decisions if d.programme_id == programme_id)


async def test_fish_farmer_qualifies_for_a_start_up_loan_and_a_wheelchair(cluster: Cluster) -> None:
    assessment = await register_and_assess(cluster, saatli_fish_farmer())
    assert assessment.rule_set_id == "reintegration" and assessment.rule_set_version >= 1
    assert decision(assessment, "startup_loan").outcome == pb.OUTCOME_ELIGIBLE
    assert decision(assessment, "wheelchair").outcome == pb.OUTCOME_ELIGIBLE
    assert decision(assessment, "expansion_loan").outcome == pb.OUTCOME_NOT_ELIGIBLE
    assert assessment.priority.total == sum(c.points for c in assessment.priority.components)
    stored = await cluster.eligibility.GetAssessment(
        pb.GetAssessmentRequest(assessment_id=assessment.assessment_id)
    )
    assert stored.assessment == assessment


async def test_refusal_is_explained_in_azerbaijani(cluster: Cluster) -> None:
    intake = saatli_fish_farmer()
    intake.monthly_household_income_minor = 250_000  # 50,000 qəpik per person
    assessment = await register_and_assess(cluster, intake)
    refused = decision(assessment, "startup_loan")
    assert refused.outcome == pb.OUTCOME_NOT_ELIGIBLE
    failed = [r for r in refused.rule_results if not r.passed]
    assert [r.rule_id for r in failed] == ["income_ceiling"]
    # Money in manat and the district by its name, as the survivor reads them.
    assert failed[0].explanation.az == (
        "Ailə üzvü başına aylıq gəlir (500,00 AZN) 300,00 AZN həddini aşır."
    )
    assert failed[0].inputs["income_per_person_minor"] == "50000"
    district = next(r for r in refused.rule_results if r.rule_id == "programme_district")
    assert district.explanation.az == "Saatlı rayonu proqram tərəfindən əhatə olunur."
    assert district.explanation.en == "The district Saatli is served by the programme."


async def test_missing_data_asks_for_review_and_says_which(cluster: Cluster) -> None:
    intake = saatli_fish_farmer()
    del intake.functioning[:]
    assessment = await register_and_assess(cluster, intake)
    wheelchair = decision(assessment, "wheelchair")
    assert wheelchair.outcome == pb.OUTCOME_NEEDS_REVIEW
    assert list(wheelchair.missing_data) == ["walking"]


async def test_no_consent_is_refused_and_nothing_is_stored(cluster: Cluster) -> None:
    intake = saatli_fish_farmer()
    intake.consent.data_processing = False
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RegisterSurvivor(register_request(intake))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(caught.value)
    assert info is not None and info.reason == "CONSENT_REQUIRED"
    assert await cluster.row_counts() == before
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await cluster.eligibility.GetSurvivor(pb.GetSurvivorRequest(survivor_id=intake.survivor_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _missing_field(i: pb.SurvivorIntake) -> None:
    i.ClearField("date_of_birth")


def _sex_not_given(i: pb.SurvivorIntake) -> None:
    i.sex = sex_pb2.SEX_UNSPECIFIED


def _negative_income(i: pb.SurvivorIntake) -> None:
    i.monthly_household_income_minor = -1


def _future_birth(i: pb.SurvivorIntake) -> None:
    # The incident moves too, or "incident before birth" would be the only complaint.
    i.date_of_birth.CopyFrom(pdate(date(date.today().year + 1, 1, 1)))
    i.incident_date.CopyFrom(pdate(date(date.today().year + 1, 6, 1)))


def _incident_before_birth(i: pb.SurvivorIntake) -> None:
    i.incident_date.CopyFrom(pdate(date(1970, 1, 1)))


def _consent_in_future(i: pb.SurvivorIntake) -> None:
    i.consent.recorded_on.CopyFrom(pdate(programme_today() + timedelta(days=1)))


def _consent_before_birth(i: pb.SurvivorIntake) -> None:
    i.consent.recorded_on.CopyFrom(pdate(date(1950, 11, 20)))  # born 1981


def _consent_by_nobody(i: pb.SurvivorIntake) -> None:
    i.consent.recorded_by = "  "


def _unknown_district(i: pb.SurvivorIntake) -> None:
    i.district_code = "atlantis"


def _empty_household(i: pb.SurvivorIntake) -> None:
    i.household_size = 0
    i.dependants = 0


def _business_older_than_its_owner(i: pb.SurvivorIntake) -> None:
    i.existing_business.sector = "beekeeping"
    i.existing_business.years_operating = 70  # born 1981


def _oversized(i: pb.SurvivorIntake) -> None:
    i.injuries.extend(["x" * 64] * 10)
    i.injuries.extend(["y" * 60_000] * 20)


async def test_a_missing_choice_says_it_is_required(cluster: Cluster) -> None:
    """An enum left at its zero value reads as missing, not as a list of numbers."""
    intake = saatli_fish_farmer()
    _sex_not_given(intake)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RegisterSurvivor(register_request(intake))
    [violation] = violations_in(caught.value)
    assert (violation.field, violation.description) == ("intake.sex", "value is required")


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (_missing_field, "intake.date_of_birth"),
        (_sex_not_given, "intake.sex"),
        (_negative_income, "intake.monthly_household_income_minor"),
        (_future_birth, "intake.date_of_birth"),
        (_incident_before_birth, "intake.incident_date"),
        (_consent_in_future, "intake.consent.recorded_on"),
        (_consent_before_birth, "intake.consent.recorded_on"),
        (_consent_by_nobody, "intake.consent.recorded_by"),
        (_unknown_district, "intake.district_code"),
        (_empty_household, "intake.household_size"),
        (_business_older_than_its_owner, "intake.existing_business.years_operating"),
        (_oversized, "(body)"),
    ],
    ids=[
        "missing",
        "sex-not-given",
        "negative-income",
        "future-birth",
        "incident-before-birth",
        "consent-in-future",
        "consent-before-birth",
        "consent-by-nobody",
        "unknown-district",
        "household-0",
        "business-older-than-its-owner",
        "oversized",
    ],
)
async def test_bad_intake_is_refused_with_the_field_and_nothing_stored(
    cluster: Cluster, spoil: object, field: str
) -> None:
    intake = saatli_fish_farmer()
    spoil(intake)  # type: ignore[operator]
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RegisterSurvivor(register_request(intake))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fields = details(caught.value)
    assert field in fields
    # The rule, never the survivor's data (a date of birth was quoted): refusals are logged.
    assert "1981-05-14" not in (caught.value.details() or "")
    assert await cluster.row_counts() == before


async def refused_assessment(cluster: Cluster, **asked: Any) -> grpc.aio.AioRpcError:
    """A registered survivor's assessment asked with these fields: INVALID_ARGUMENT, and
    nothing stored; the error."""
    intake = saatli_fish_farmer()
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    before = await cluster.row_counts()
    request = pb.AssessEligibilityRequest(
        request_id=request_id(), survivor_id=intake.survivor_id, **asked
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.AssessEligibility(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await cluster.row_counts() == before
    return caught.value


async def test_a_reassessment_reason_without_a_reassessment_is_refused(cluster: Cluster) -> None:
    """A reason for a re-assessment that was not asked for: refused, not stored as if."""
    error = await refused_assessment(
        cluster, assessment_date=ASSESSED_ON, reassessment_reason="annual review"
    )
    assert "only for a re-assessment under the latest rule set" in (error.details() or "")


async def test_same_request_id_returns_the_first_answer(cluster: Cluster) -> None:
    intake = saatli_fish_farmer()
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    assess = pb.AssessEligibilityRequest(
        request_id=request_id(), survivor_id=intake.survivor_id, assessment_date=ASSESSED_ON
    )
    first = await cluster.eligibility.AssessEligibility(assess)
    again = await cluster.eligibility.AssessEligibility(assess)
    assert again == first
    listed = await cluster.eligibility.ListAssessments(
        pb.ListAssessmentsRequest(survivor_id=intake.survivor_id)
    )
    assert len(listed.assessments) == 1
    changed = pb.AssessEligibilityRequest()
    changed.CopyFrom(assess)
    changed.assessment_date.CopyFrom(pdate(date(2026, 4, 1)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.AssessEligibility(changed)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def ceiling_change(effective: str, value: int) -> str:
    """The shipped rules with a new income ceiling from a date, as staff would publish."""
    return SHIPPED.replace(
        "      - {from: 2026-01-01, value: 30000}",
        f"      - {{from: 2026-01-01, until: {effective}, value: 30000}}\n"
        f"      - {{from: {effective}, value: {value}}}",
        1,
    )


def publish_request(source: str) -> pb.PublishRuleSetRequest:
    return pb.PublishRuleSetRequest(
        request_id=request_id(),
        source_yaml=source,
        published_by="pm-01",
        change_note="income ceiling from the 2027 budget",
    )


async def publish(cluster: Cluster, source: str) -> pb.PublishRuleSetResponse:
    return await cluster.eligibility.PublishRuleSet(publish_request(source))


@pytest.mark.timeout(60)
async def test_publish_pin_reassess_and_what_if(cluster: Cluster) -> None:
    """One story, in order, because publishing changes the latest version for everyone."""
    # A survivor assessed now is pinned to the current version.
    earlier = saatli_fish_farmer()
    earlier.monthly_household_income_minor = 125_000  # 25,000 per person
    registered = await cluster.eligibility.RegisterSurvivor(register_request(earlier))
    # Not pinned before a first assessment.
    assert (
        registered.survivor.pinned_rule_set_id,
        registered.survivor.pinned_rule_set_version,
    ) == ("", 0)
    first = await register_and_assess(cluster, earlier)
    pinned_version = first.rule_set_version
    survivor = await get_survivor(cluster, earlier.survivor_id)
    assert (survivor.pinned_rule_set_id, survivor.pinned_rule_set_version) == (
        "reintegration",
        pinned_version,
    )

    # What-if: a 20,000 qəpik ceiling from 2026-02-01 would refuse this survivor's loan.
    candidate = ceiling_change("2026-02-01", 20_000)
    what_if = await cluster.eligibility.SimulateRuleSet(
        pb.SimulateRuleSetRequest(source_yaml=candidate, max_examples=100)
    )
    assert what_if.assessments_evaluated >= 1
    changes = {c.programme_id: c for c in what_if.changes}
    assert first.assessment_id in {e.assessment_id for e in changes["startup_loan"].examples}
    example = next(
        e for e in changes["startup_loan"].examples if e.assessment_id == first.assessment_id
    )
    assert (example.before, example.after) == (pb.OUTCOME_ELIGIBLE, pb.OUTCOME_NOT_ELIGIBLE)

    # A version whose own test cases fail is refused, listing the failures.
    broken = candidate.replace("startup_loan: ELIGIBLE", "startup_loan: NOT_ELIGIBLE", 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await publish(cluster, broken)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "test saatli_fish_farmer: startup_loan: expected NOT_ELIGIBLE, got ELIGIBLE" in (
        caught.value.details() or ""
    )

    published = await publish(cluster, candidate)
    assert published.rule_set.version == pinned_version + 1
    assert all(r.passed for r in published.test_results)

    # The same rules again, only a comment added: no second version that says the same.
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as unchanged:
        await publish(cluster, "# re-sent by mistake\n" + candidate)
    assert unchanged.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(unchanged.value) == "RULE_SET_UNCHANGED"
    assert f"version {pinned_version + 1} already says exactly this" in (
        unchanged.value.details() or ""
    )
    assert await cluster.row_counts() == before

    # The earlier survivor stays on the version of their first assessment...
    again = await cluster.eligibility.AssessEligibility(
        pb.AssessEligibilityRequest(
            request_id=request_id(), survivor_id=earlier.survivor_id, assessment_date=ASSESSED_ON
        )
    )
    assert again.assessment.rule_set_version == pinned_version
    assert decision(again.assessment, "startup_loan").outcome == pb.OUTCOME_ELIGIBLE
    assert (await get_survivor(cluster, earlier.survivor_id)).pinned_rule_set_version == (
        pinned_version
    )

    # ...until a re-assessment under the newer version is asked for, with a reason: none,
    # or one of only an invisible character (a zero-width space passed), is refused.
    for reason in ("", "\u200b"):
        with pytest.raises(grpc.aio.AioRpcError) as no_reason:
            await cluster.eligibility.AssessEligibility(
                pb.AssessEligibilityRequest(
                    request_id=request_id(),
                    survivor_id=earlier.survivor_id,
                    assessment_date=ASSESSED_ON,
                    reassess_under_latest=True,
                    reassessment_reason=reason,
                )
            )
        assert [v.field for v in violations_in(no_reason.value)] == ["reassessment_reason"]
    reassess = pb.AssessEligibilityRequest(
        request_id=request_id(),
        survivor_id=earlier.survivor_id,
        assessment_date=ASSESSED_ON,
        reassess_under_latest=True,
        reassessment_reason="annual review under the 2027 rules",
    )
    reassessed = await cluster.eligibility.AssessEligibility(reassess)
    assert reassessed.assessment.rule_set_version == pinned_version + 1
    # Why it was re-assessed stays with the assessment: in its answer, read back, listed,
    # and in the first answer a retry gets; the assessments under the pin carry none.
    why = "annual review under the 2027 rules"
    assert reassessed.assessment.reassessment_reason == why
    assert (await cluster.eligibility.AssessEligibility(reassess)) == reassessed
    read_back = await cluster.eligibility.GetAssessment(
        pb.GetAssessmentRequest(assessment_id=reassessed.assessment.assessment_id)
    )
    assert read_back.assessment == reassessed.assessment
    listed = await cluster.eligibility.ListAssessments(
        pb.ListAssessmentsRequest(survivor_id=earlier.survivor_id)
    )
    reasons = {a.assessment_id: a.reassessment_reason for a in listed.assessments}
    assert reasons.pop(reassessed.assessment.assessment_id) == why
    assert again.assessment.assessment_id in reasons and set(reasons.values()) == {""}
    assert decision(reassessed.assessment, "startup_loan").outcome == pb.OUTCOME_NOT_ELIGIBLE
    # GetSurvivor says the survivor is now pinned to the newer version; so does a
    # re-registration, which keeps the pin.
    assert (await get_survivor(cluster, earlier.survivor_id)).pinned_rule_set_version == (
        pinned_version + 1
    )
    again_registered = await cluster.eligibility.RegisterSurvivor(register_request(earlier))
    assert again_registered.survivor.pinned_rule_set_version == pinned_version + 1

    # A newcomer is assessed under the latest version; before the effective date the old
    # ceiling still applies.
    newcomer = saatli_fish_farmer()
    newcomer.monthly_household_income_minor = 125_000
    await cluster.eligibility.RegisterSurvivor(register_request(newcomer))
    january = await cluster.eligibility.AssessEligibility(
        pb.AssessEligibilityRequest(
            request_id=request_id(),
            survivor_id=newcomer.survivor_id,
            assessment_date=pdate(date(2026, 1, 15)),
        )
    )
    assert january.assessment.rule_set_version == pinned_version + 1
    assert decision(january.assessment, "startup_loan").outcome == pb.OUTCOME_ELIGIBLE

    versions = await cluster.eligibility.ListRuleSets(
        pb.ListRuleSetsRequest(rule_set_id="reintegration")
    )
    assert [r.version for r in versions.rule_sets][-2:] == [pinned_version, pinned_version + 1]
    latest = await cluster.eligibility.GetRuleSet(pb.GetRuleSetRequest(rule_set_id="reintegration"))
    assert latest.rule_set.source_yaml == candidate


async def test_a_rule_set_names_its_programmes_in_both_languages(cluster: Cluster) -> None:
    """Clients show a programme by its name from the rule set, not by its id."""
    latest = (
        await cluster.eligibility.GetRuleSet(pb.GetRuleSetRequest(rule_set_id="reintegration"))
    ).rule_set
    names = {p.programme_id: (p.name.en, p.name.az) for p in latest.programmes}
    assert names["carpet_weaving"] == (
        "Carpet-weaving enterprise support",
        "Xalçaçılıq müəssisəsinə dəstək",
    )
    assert names["startup_loan"][1] == "Biznesə başlamaq üçün mikrokredit"
    assessment = await register_and_assess(cluster, saatli_fish_farmer())
    # Every programme an assessment decides is named by the version that decided it.
    decided = (
        await cluster.eligibility.GetRuleSet(
            pb.GetRuleSetRequest(rule_set_id="reintegration", version=assessment.rule_set_version)
        )
    ).rule_set
    named = {p.programme_id for p in decided.programmes if p.name.en and p.name.az}
    assert {d.programme_id for d in assessment.decisions} <= named
    listed = await cluster.eligibility.ListRuleSets(
        pb.ListRuleSetsRequest(rule_set_id="reintegration")
    )
    assert all(r.programmes for r in listed.rule_sets)


async def test_malformed_rule_set_is_refused_with_rule_and_position(cluster: Cluster) -> None:
    source = SHIPPED.replace(
        "expression: active_loans < params.max_active_loans",
        "expression: active_loans < params.maximum_loans",
        1,
    )
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await publish(cluster, source)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = caught.value.details() or ""
    assert "rules[3].expression (line" in message and "unknown parameter maximum_loans" in message
    assert await cluster.row_counts() == before


# A few hundred bytes standing for 9**8 (43 million) copies of the first list.
ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in itertools.pairwise("abcdefgh")]
    + ["rule_set_id: reintegration"]
)


async def test_a_rule_set_written_with_aliases_is_refused_at_once(cluster: Cluster) -> None:
    """Aliases to aliases (a "billion laughs") are refused as bad YAML before anything
    walks them: the service answers at once and stays healthy (it was held for minutes)."""
    assert len(ALIAS_BOMB) < 400
    before = await cluster.row_counts()
    for call, request in (
        (cluster.eligibility.SimulateRuleSet, pb.SimulateRuleSetRequest(source_yaml=ALIAS_BOMB)),
        (cluster.eligibility.PublishRuleSet, publish_request(ALIAS_BOMB)),
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=10)
        assert time.monotonic() - started < 2
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert "aliases (*name) are not allowed in a rule set" in (caught.value.details() or "")
    assert await cluster.row_counts() == before


async def test_a_rule_set_of_an_unknown_id_is_refused(cluster: Cluster) -> None:
    """A typo in rule_set_id would publish rules that no assessment ever uses."""
    source = SHIPPED.replace("rule_set_id: reintegration", "rule_set_id: reintegraton", 1)
    before = await cluster.row_counts()
    # The what-if too: it said "no changes", there being no assessments under that id.
    for call in (
        publish(cluster, source),
        cluster.eligibility.SimulateRuleSet(pb.SimulateRuleSetRequest(source_yaml=source)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = violations_in(caught.value)
        assert (violation.field, violation.reason) == ("source_yaml", "UNKNOWN_RULE_SET")
        assert "one the service decides with: reintegration" in violation.description
    assert await cluster.row_counts() == before


async def test_a_rule_set_missing_a_key_is_refused_and_the_service_stays_up(
    cluster: Cluster,
) -> None:
    """A rule set cut short (no priority, no rules) held the service at full CPU for
    good: every call to it, health included, timed out until a restart."""
    for call in (
        cluster.eligibility.SimulateRuleSet(pb.SimulateRuleSetRequest(source_yaml=SHIPPED[:300])),
        publish(cluster, "rule_set_id: reintegration\n"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call, 10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority needs a list of components" in (caught.value.details() or "")


async def test_assessments_list_by_district_and_date_with_pages(cluster: Cluster) -> None:
    district = "zangilan"
    ids = []
    for _ in range(3):
        intake = saatli_fish_farmer(new_id("srv"))
        intake.district_code = district
        ids.append((await register_and_assess(cluster, intake)).assessment_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await cluster.eligibility.ListAssessments(
            pb.ListAssessmentsRequest(
                district_code=district,
                from_date=ASSESSED_ON,
                to_date=ASSESSED_ON,
                page_size=2,
                page_token=token,
            )
        )
        seen += [a.assessment_id for a in page.assessments]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.ListAssessments(
            pb.ListAssessmentsRequest(
                district_code="saatli", page_token=token or "bm90LWEtdG9rZW4="
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rules_with_a_parameter_gap_are_refused_pointing_at_it(cluster: Cluster) -> None:
    """A ceiling that ends on 2026-11-01 with nothing after it would leave every later
    assessment undecidable: refused by SimulateRuleSet and PublishRuleSet, naming the
    parameter and where its value is in the YAML."""
    gap = SHIPPED.replace(
        "      - {from: 2026-01-01, value: 30000}",
        "      - {from: 2026-01-01, until: 2026-11-01, value: 30000}",
        1,
    )
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as simulated:
        await cluster.eligibility.SimulateRuleSet(pb.SimulateRuleSetRequest(source_yaml=gap))
    with pytest.raises(grpc.aio.AioRpcError) as published:
        await publish(cluster, gap)
    for caught in (simulated, published):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        message = caught.value.details() or ""
        assert "parameters.income_ceiling_per_person_minor.values[0] (line" in message
        assert (
            "parameter income_ceiling_per_person_minor has no value in force from 2026-11-01"
            in message
        )
    assert await cluster.row_counts() == before


async def test_an_assessment_before_the_rules_are_in_force_is_refused(cluster: Cluster) -> None:
    error = await refused_assessment(cluster, assessment_date=pdate(date(2025, 6, 1)))
    [violation] = violations_in(error)
    assert violation.field == "assessment_date"
    assert violation.description == (
        "the rules are in force from 2026-01-01; 2025-06-01 is before that"
    )


async def test_a_version_published_with_a_gap_refuses_assessments_in_it(cluster: Cluster) -> None:
    """A version stored before gaps were refused still decides the days it covers; a day
    in its gap is refused, naming the parameter, and nothing is stored."""
    rule_set_id = new_id("gap").replace("-", "_")
    source = SHIPPED.replace("rule_set_id: reintegration", f"rule_set_id: {rule_set_id}", 1)
    source = source.replace(
        "      - {from: 2026-01-01, value: 30000}",
        "      - {from: 2026-01-01, until: 2026-11-01, value: 30000}",
        1,
    )
    intake = saatli_fish_farmer()
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    db = cluster.hosts["eligibility"].db
    assert db is not None
    async with db.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO rule_sets (rule_set_id, version, source_yaml, published_by,
                                      change_note)
               VALUES ($1, 1, $2, 'pm-01', 'published before gaps were refused')""",
            rule_set_id,
            source,
        )
        await conn.execute(
            """UPDATE survivors SET pinned_rule_set_id = $2, pinned_rule_set_version = 1
               WHERE survivor_id = $1""",
            intake.survivor_id,
            rule_set_id,
        )

    def assess(day: date) -> pb.AssessEligibilityRequest:
        return pb.AssessEligibilityRequest(
            request_id=request_id(), survivor_id=intake.survivor_id, assessment_date=pdate(day)
        )

    covered = await cluster.eligibility.AssessEligibility(assess(date(2026, 10, 1)))
    assert covered.assessment.rule_set_id == rule_set_id
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.AssessEligibility(assess(date(2026, 11, 15)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = violations_in(caught.value)
    assert violation.field == "assessment_date"
    assert violation.description == (
        "parameter income_ceiling_per_person_minor has no value in force on 2026-11-15"
    )
    assert await cluster.row_counts() == before


async def test_simulating_rules_that_start_after_past_assessments_is_refused(
    cluster: Cluster,
) -> None:
    """Rules in force only from 2027 cannot decide an assessment of 2026 again: the
    simulation says so instead of failing."""
    await register_and_assess(cluster, saatli_fish_farmer())
    later = SHIPPED.replace("from: 2026-01-01", "from: 2027-01-01").replace(
        "assessment_date: 2026-03-01", "assessment_date: 2027-03-01"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.SimulateRuleSet(pb.SimulateRuleSetRequest(source_yaml=later))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = violations_in(caught.value)
    assert violation.field == "source_yaml"
    assert "the rules are in force from 2027-01-01" in violation.description


async def test_rules_that_cannot_decide_a_stored_survivor_are_not_published(
    cluster: Cluster,
) -> None:
    """An expression that fails on some survivors' facts (the first injury of a survivor
    with none) passed its own test cases and was published; each such survivor's
    re-assessment under it was then refused. Publishing replays the stored survivors
    first, as the what-if does."""
    survivor = saatli_fish_farmer()
    del survivor.injuries[:]
    stored = await register_and_assess(cluster, survivor)
    candidate = SHIPPED.replace(
        "expression: walking >= params.wheelchair_min_walking_difficulty",
        "expression: size(injuries[0]) + walking >= params.wheelchair_min_walking_difficulty",
    )
    before = await cluster.row_counts()
    for call in (
        cluster.eligibility.PublishRuleSet(publish_request(candidate)),
        cluster.eligibility.SimulateRuleSet(pb.SimulateRuleSetRequest(source_yaml=candidate)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = violations_in(caught.value)
        assert violation.reason == "RULES_CANNOT_DECIDE"
        assert "the rules cannot decide it" in violation.description
        assert violation.description.startswith("assessment asm-")
    assert await cluster.row_counts() == before
    assert stored.assessment_id


# --- impact follow-ups, per loan, and the reach report --------------------------------


async def reach(cluster: Cluster) -> pb.ReachReport:
    response = await cluster.eligibility.GetReachReport(
        pb.GetReachReportRequest(district_code="saatli")
    )
    return response.report


def change(before: pb.ReachReport, after: pb.ReachReport) -> dict[str, int]:
    return {
        name: getattr(after, name) - getattr(before, name)
        for name in (
            "followed_up_6",
            "followed_up_12",
            "working_at_12",
            "family_members_supported",
        )
    }


async def refused_follow_up(cluster: Cluster, request: pb.RecordFollowUpRequest) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RecordFollowUp(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(caught.value)
    assert info is not None and info.reason == "FOLLOW_UP_RECORDED"
    return caught.value.details() or ""


LENT_FIRST, LENT_SECOND = date(2025, 3, 1), date(2026, 9, 1)
REPAID_AFTER = timedelta(days=30)


async def disbursed_loan(
    cluster: Cluster, fund_id: str, survivor_id: str, on: date, *, repaid: bool = True
) -> str:
    """A loan of the survivor's, disbursed `on` and repaid in full 30 days later (unless
    not `repaid`): its id."""
    loan = await approved_loan(cluster.lending, fund_id=fund_id, survivor_id=survivor_id)
    await disburse(cluster.lending, loan.loan_id, loan.principal_minor, on)
    if repaid:
        await cluster.lending.RecordRepayment(
            repayment(loan.loan_id, loan.principal_minor, on + REPAID_AFTER)
        )
    return loan.loan_id


async def test_a_survivor_is_followed_up_after_each_loan_and_counted_once(
    cluster: Cluster,
) -> None:
    intake = saatli_fish_farmer()
    survivor = intake.survivor_id
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    fund_id = await open_fund(cluster, 1_000_000)
    first, second = [
        await disbursed_loan(cluster, fund_id, survivor, on) for on in (LENT_FIRST, LENT_SECOND)
    ]
    before = await reach(cluster)

    await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor, first, 6, date(2026, 1, 10), working=False, family_members=3)
    )
    await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor, first, 12, date(2026, 7, 10), working=True, family_members=4)
    )
    # The second loan's +6-month follow-up is recorded, not refused as the survivor's.
    recorded = await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor, second, 6, date(2027, 6, 1), working=False, family_members=5)
    )
    assert recorded.follow_up.loan_id == second
    # A second +6-month follow-up of the same loan is refused, as before.
    message = await refused_follow_up(
        cluster,
        follow_up_request(survivor, second, 6, date(2027, 6, 2), working=True, family_members=1),
    )
    assert (
        message == f"the +6-month follow-up of {survivor} after loan {second} is already recorded"
    )

    # Survivors are counted, not follow-ups; family members at the latest follow-up (the
    # second loan's +6); working from the +12 on record (the first loan's).
    assert change(before, await reach(cluster)) == {
        "followed_up_6": 1,
        "followed_up_12": 1,
        "working_at_12": 1,
        "family_members_supported": 5,
    }

    # The second loan's +12: still one survivor at +12, now not working, supporting 6.
    await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor, second, 12, date(2027, 12, 1), working=False, family_members=6)
    )
    await refused_follow_up(
        cluster,
        follow_up_request(survivor, second, 12, date(2027, 12, 2), working=True, family_members=6),
    )
    assert change(before, await reach(cluster)) == {
        "followed_up_6": 1,
        "followed_up_12": 1,
        "working_at_12": 0,
        "family_members_supported": 6,
    }


async def test_a_follow_up_names_a_loan_of_its_own_survivor(cluster: Cluster) -> None:
    """The loan book decides: a loan it does not know, or another survivor's, is refused
    on follow_up.loan_id and nothing is recorded; with the loan book out of reach the
    call is UNAVAILABLE (retry it), not recorded unchecked."""
    intake = saatli_fish_farmer()
    survivor = intake.survivor_id
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    fund_id = await open_fund(cluster, 1_000_000)
    someone_elses = await disbursed_loan(cluster, fund_id, new_id("srv"), LENT_FIRST)
    own = await disbursed_loan(cluster, fund_id, survivor, LENT_SECOND)
    not_lent = await approved_loan(cluster.lending, fund_id=fund_id, survivor_id=survivor)
    rows_before = await cluster.row_counts()
    for loan_id, visited, field, reason in (
        (new_id("loan"), date(2026, 7, 10), "follow_up.loan_id", "UNKNOWN_LOAN"),
        (someone_elses, date(2026, 7, 10), "follow_up.loan_id", "LOAN_OF_ANOTHER_SURVIVOR"),
        (not_lent.loan_id, date(2026, 7, 10), "follow_up.loan_id", "LOAN_NOT_DISBURSED"),
        (own, LENT_SECOND + timedelta(days=1), "follow_up.recorded_on", "BEFORE_LOAN_CLOSED"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cluster.eligibility.RecordFollowUp(
                follow_up_request(survivor, loan_id, 6, visited, working=True, family_members=2)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = violations_in(caught.value)
        assert (violation.field, violation.reason) == (field, reason), violation
    closed = LENT_SECOND + REPAID_AFTER
    for request, field, reason, says in (
        # A +12 visit on the day the loan closed took the slot of the real one, and
        # counted as working a year on; from a month before its day it is taken.
        (
            follow_up_request(survivor, own, 12, closed),
            "follow_up.recorded_on",
            "BEFORE_FOLLOW_UP_WINDOW",
            f"can be made: from {add_months(closed, 12) - timedelta(days=30)}",
        ),
        # An unknown survivor is said so first, before lending is asked about the loan.
        (
            follow_up_request(new_id("srv"), someone_elses, 6, date(2026, 7, 10)),
            "follow_up.survivor_id",
            "UNKNOWN_SURVIVOR",
            "survivor is not registered",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cluster.eligibility.RecordFollowUp(request)
        [violation] = violations_in(caught.value)
        assert (violation.field, violation.reason) == (field, reason), violation
        assert says in violation.description, violation
    # A loan still being repaid has no follow-ups yet (a +6 recorded on the day of its
    # disbursement was counted in the reach report, and took the slot of the real one).
    active = await disbursed_loan(cluster, fund_id, survivor, LENT_SECOND, repaid=False)
    rows_before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RecordFollowUp(
            follow_up_request(survivor, active, 6, LENT_SECOND, working=True, family_members=2)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(caught.value)[0].reason == "LOAN_NOT_CLOSED"  # type: ignore[union-attr]
    assert f"loan {active} is ACTIVE: its follow-ups come after it is repaid" in str(
        caught.value.details()
    )
    assert await cluster.row_counts() == rows_before
    # Nor has a loan written off: it was never repaid.
    gone = await disbursed_loan(cluster, fund_id, survivor, LENT_SECOND, repaid=False)
    await write_off(cluster.lending, gone, LENT_SECOND + REPAID_AFTER)
    rows_before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RecordFollowUp(
            follow_up_request(survivor, gone, 6, date(2027, 4, 1), working=False)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(caught.value)[0].reason == "LOAN_WRITTEN_OFF"  # type: ignore[union-attr]
    assert await cluster.row_counts() == rows_before

    lending_down = f"127.0.0.1:{closed_port()}"
    async with cluster.second_host(ELIGIBILITY, lending_address=lending_down) as cut:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.EligibilityServiceStub(cut).RecordFollowUp(
                follow_up_request(
                    survivor, own, 6, date(2027, 3, 10), working=True, family_members=2,
                )
            )  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert "cannot say whose loan" in (caught.value.details() or "")
    assert await cluster.row_counts() == rows_before


async def test_a_follow_up_without_a_loan_is_recorded_once(cluster: Cluster) -> None:
    intake = saatli_fish_farmer()
    survivor = intake.survivor_id
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    before = await reach(cluster)
    await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor, "", 12, date(2026, 7, 10), working=True, family_members=3)
    )
    # The +6 visit written down later, with a later date: the +12 stays the latest.
    await cluster.eligibility.RecordFollowUp(
        follow_up_request(survivor, "", 6, date(2026, 8, 1), working=True, family_members=2)
    )
    message = await refused_follow_up(
        cluster,
        follow_up_request(survivor, "", 12, date(2026, 7, 11), working=True, family_members=3),
    )
    assert message == f"the +12-month follow-up of {survivor} is already recorded"
    assert change(before, await reach(cluster)) == {
        "followed_up_6": 1,
        "followed_up_12": 1,
        "working_at_12": 1,
        "family_members_supported": 3,
    }


@pytest.mark.parametrize("loan_id", ["x", "-loan-1", "loan 1", "l" * 65])
async def test_a_malformed_loan_id_on_a_follow_up_is_refused(
    cluster: Cluster, loan_id: str
) -> None:
    intake = saatli_fish_farmer()
    await cluster.eligibility.RegisterSurvivor(register_request(intake))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.eligibility.RecordFollowUp(
            follow_up_request(
                intake.survivor_id, loan_id, 6, date(2026, 1, 10), working=True, family_members=2
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(caught.value)[1]) == {"follow_up.loan_id"}


async def test_assessments_and_follow_ups_dated_after_today_are_refused(cluster: Cluster) -> None:
    """A real clock's default (the test cluster accepts later dates, for journeys under
    time skipping): a second eligibility host on the same database, without them. An
    assessment or a follow-up visit dated after today, or a visit before the survivor's
    birth, is INVALID_ARGUMENT on its date and nothing is written."""
    async with cluster.second_host(ELIGIBILITY, eligibility_accept_future_dates=False) as channel:
        eligibility = pb_grpc.EligibilityServiceStub(channel)
        intake = saatli_fish_farmer()
        await eligibility.RegisterSurvivor(register_request(intake))
        tomorrow = programme_today() + timedelta(days=1)
        refusals = [
            (
                eligibility.AssessEligibility(
                    pb.AssessEligibilityRequest(
                        request_id=request_id(),
                        survivor_id=intake.survivor_id,
                        assessment_date=pdate(tomorrow),
                    )
                ),
                "assessment_date",
                "must not be after today",
            ),
            (
                eligibility.RecordFollowUp(
                    follow_up_request(
                        intake.survivor_id, "", 6, tomorrow, working=True, family_members=1
                    )
                ),
                "follow_up.recorded_on",
                "must not be after today",
            ),
            (
                eligibility.RecordFollowUp(
                    follow_up_request(
                        intake.survivor_id, "", 6, date(1950, 1, 1), working=True, family_members=1
                    )
                ),
                "follow_up.recorded_on",
                "before the survivor's date of birth",
            ),
            (  # after the birth, before the incident of 2 September 2003
                eligibility.AssessEligibility(
                    pb.AssessEligibilityRequest(
                        request_id=request_id(),
                        survivor_id=intake.survivor_id,
                        assessment_date=pdate(date(2003, 9, 1)),
                    )
                ),
                "assessment_date",
                "is before the survivor's incident",
            ),
        ]
        for call, field, says in refusals:
            before = await cluster.row_counts()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert details(refused.value)[1] == [field]
            assert says in (refused.value.details() or "")
            # The rule, never the survivor's data: refusals are logged.
            assert "1981-05-14" not in (refused.value.details() or "")
            assert await cluster.row_counts() == before
        # Today is a day that has come.
        today = await eligibility.AssessEligibility(
            pb.AssessEligibilityRequest(
                request_id=request_id(),
                survivor_id=intake.survivor_id,
                assessment_date=pdate(programme_today()),
            )
        )
        assert today.assessment.assessment_id


def without_carpet_weaving(source: str) -> str:
    """The rules with the carpet-weaving programme taken out, its rule and case line too."""
    source = source.replace(
        "  carpet_weaving: {en: Carpet-weaving enterprise support, "
        "az: Xalçaçılıq müəssisəsinə dəstək}\n",
        "",
        1,
    )
    source = source.replace("computer_course, carpet_weaving]", "computer_course]", 1)
    source = source.replace("expansion_loan, carpet_weaving]", "expansion_loan]")
    start = source.index("  - id: weaving_self_care")
    source = source[:start] + source[source.index("\npriority:", start) :]
    return source.replace("      carpet_weaving: ELIGIBLE\n", "", 1)


async def test_a_what_if_counts_a_programme_the_rules_no_longer_decide(
    cluster: Cluster,
) -> None:
    """Taking a programme out changes every stored decision of it: the what-if said
    nothing of it (it compared only the programmes the candidate decides)."""
    assessed = await register_and_assess(cluster, saatli_fish_farmer())
    assert "carpet_weaving" in {d.programme_id for d in assessed.decisions}
    what_if = await cluster.eligibility.SimulateRuleSet(
        pb.SimulateRuleSetRequest(source_yaml=without_carpet_weaving(SHIPPED), max_examples=100)
    )
    changes = {c.programme_id: c for c in what_if.changes}
    weaving = changes["carpet_weaving"]
    assert weaving.changed_count == what_if.assessments_evaluated >= 1
    assert weaving.examples and all(
        e.after == pb.OUTCOME_UNSPECIFIED and e.before != pb.OUTCOME_UNSPECIFIED
        for e in weaving.examples
    )
