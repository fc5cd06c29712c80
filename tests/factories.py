"""Builders for valid requests; tests change one thing at a time from these."""

from __future__ import annotations

import uuid
from datetime import date

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common.protoconv import proto_date


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def request_id() -> str:
    return str(uuid.uuid4())


# Tests write dates as `pdate(date(2026, 3, 1))`.
pdate = proto_date


def saatli_fish_farmer(survivor_id: str | None = None) -> eligibility_pb.SurvivorIntake:
    """The programme's own case: a fish farmer in Saatli who lost a leg to a landmine."""
    pb = eligibility_pb
    return pb.SurvivorIntake(
        survivor_id=survivor_id or new_id("srv"),
        date_of_birth=pdate(date(1981, 5, 14)),
        sex=sex_pb2.SEX_MALE,
        district_code="saatli",
        incident_date=pdate(date(2003, 9, 2)),
        incident_type=pb.INCIDENT_TYPE_LANDMINE,
        injuries=["lower_limb_amputation"],
        functioning=[
            pb.FunctioningDifficulty(
                domain=pb.WASHINGTON_GROUP_DOMAIN_WALKING,
                level=pb.DIFFICULTY_LEVEL_A_LOT_OF_DIFFICULTY,
            ),
            pb.FunctioningDifficulty(
                domain=pb.WASHINGTON_GROUP_DOMAIN_COGNITION,
                level=pb.DIFFICULTY_LEVEL_NO_DIFFICULTY,
            ),
        ],
        household_size=5,
        dependants=3,
        monthly_household_income_minor=60_000,
        languages=[pb.LANGUAGE_AZERBAIJANI],
        preferred_language=pb.LANGUAGE_AZERBAIJANI,
        consent=pb.Consent(
            data_processing=True, recorded_on=pdate(date(2026, 2, 20)), recorded_by="cw-01"
        ),
    )


def register_request(
    intake: eligibility_pb.SurvivorIntake | None = None,
) -> eligibility_pb.RegisterSurvivorRequest:
    return eligibility_pb.RegisterSurvivorRequest(
        request_id=request_id(), intake=intake or saatli_fish_farmer()
    )


def follow_up_request(
    survivor_id: str,
    loan_id: str,
    months: int,
    on: date,
    *,
    recorded_by: str = "tester",
    working: bool = True,
    family_members: int = 3,
) -> eligibility_pb.RecordFollowUpRequest:
    """An impact follow-up of 900 AZN a month of household income, as recorded at
    eligibility's desk."""
    return eligibility_pb.RecordFollowUpRequest(
        request_id=request_id(),
        follow_up=eligibility_pb.FollowUp(
            survivor_id=survivor_id,
            loan_id=loan_id,
            months_after=months,
            household_income_minor=90_000,
            working=working,
            family_members_supported=family_members,
            recorded_by=recorded_by,
            recorded_on=pdate(on),
        ),
    )


async def register_survivor(eligibility: eligibility_grpc.EligibilityServiceStub) -> str:
    """A new survivor registered with consent to data processing: what assistance asks
    of eligibility before it records a need; their id."""
    intake = saatli_fish_farmer()
    await eligibility.RegisterSurvivor(register_request(intake))
    return intake.survivor_id


def need_request(
    survivor_id: str,
    type_id: str = "wheelchair",
    *,
    district: str = "saatli",
    sex: sex_pb2.Sex.ValueType = sex_pb2.SEX_FEMALE,
    age_band: age_band_pb2.AgeBand.ValueType = age_band_pb2.AGE_BAND_35_59,
    assessed_by: str = "cw-01",
) -> assistance_pb.RecordNeedRequest:
    return assistance_pb.RecordNeedRequest(
        request_id=request_id(),
        survivor_id=survivor_id,
        type_id=type_id,
        assessed_by=assessed_by,
        district_code=district,
        sex=sex,
        age_band=age_band,
    )
