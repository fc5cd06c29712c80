"""The survivor intake record: checks the proto annotations cannot express, and the
facts a rule set reads."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import asyncpg
from google.protobuf import json_format

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common.districts import district_violations
from services.common.errors import FieldViolation
from services.common.protoconv import from_proto_date

_LEVEL = {
    pb.DIFFICULTY_LEVEL_NO_DIFFICULTY: 0,
    pb.DIFFICULTY_LEVEL_SOME_DIFFICULTY: 1,
    pb.DIFFICULTY_LEVEL_A_LOT_OF_DIFFICULTY: 2,
    pb.DIFFICULTY_LEVEL_CANNOT_DO_AT_ALL: 3,
}
_DOMAIN = {
    pb.WASHINGTON_GROUP_DOMAIN_SEEING: "seeing",
    pb.WASHINGTON_GROUP_DOMAIN_HEARING: "hearing",
    pb.WASHINGTON_GROUP_DOMAIN_WALKING: "walking",
    pb.WASHINGTON_GROUP_DOMAIN_COGNITION: "cognition",
    pb.WASHINGTON_GROUP_DOMAIN_SELF_CARE: "self_care",
    pb.WASHINGTON_GROUP_DOMAIN_COMMUNICATION: "communication",
}
_LANGUAGE = {pb.LANGUAGE_AZERBAIJANI: "az", pb.LANGUAGE_ENGLISH: "en"}


def _short_names(enum: Any, prefix: str) -> dict[int, str]:
    """An enum's values as the facts spell them: SEX_FEMALE -> female."""
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.DESCRIPTOR.values}


_SEX = _short_names(sex_pb2.Sex, "SEX_")
_INCIDENT_TYPE = _short_names(pb.IncidentType, "INCIDENT_TYPE_")


def years_between(start: date, end: date) -> int:
    return end.year - start.year - ((end.month, end.day) < (start.month, start.day))


def age_band(age: int) -> int:
    if age < 18:
        return age_band_pb2.AGE_BAND_UNDER_18
    if age < 35:
        return age_band_pb2.AGE_BAND_18_34
    if age < 60:
        return age_band_pb2.AGE_BAND_35_59
    return age_band_pb2.AGE_BAND_60_PLUS


def intake_violations(intake: pb.SurvivorIntake, today: date, field: str) -> list[FieldViolation]:
    """What protovalidate cannot check: the district list, and dates (and a business's
    years) against today (the programme's date in Baku) and the date of birth."""
    violations = district_violations(intake.district_code, f"{field}.district_code")
    born = from_proto_date(intake.date_of_birth)
    if born > today:
        violations.append(
            FieldViolation(f"{field}.date_of_birth", "must not be in the future", "date.past")
        )
    if from_proto_date(intake.incident_date) > today:
        violations.append(
            FieldViolation(f"{field}.incident_date", "must not be in the future", "date.past")
        )
    if (
        intake.HasField("existing_business")
        and born <= today
        and intake.existing_business.years_operating > years_between(born, today)
    ):
        violations.append(
            FieldViolation(
                f"{field}.existing_business.years_operating",
                "must not exceed the survivor's age in years",
                "years.within_age",
            )
        )
    if intake.consent.HasField("recorded_on"):
        consented = from_proto_date(intake.consent.recorded_on)
        where = f"{field}.consent.recorded_on"
        if consented > today:
            violations.append(FieldViolation(where, "must not be in the future", "date.past"))
        if consented < born:
            violations.append(
                FieldViolation(
                    where,
                    # The rule, never the value: refusals are logged (personal data).
                    "must not be before the date of birth",
                    "date.after_birth",
                )
            )
    return violations


def facts(intake: pb.SurvivorIntake, day: date) -> dict[str, Any]:
    """The facts a rule set reads, as of `day`. A functioning domain that was not
    recorded is absent, so rules that need it ask for review."""
    age = years_between(from_proto_date(intake.date_of_birth), day)
    result: dict[str, Any] = {
        "age": age,
        "sex": _SEX[intake.sex],
        "district": intake.district_code,
        "incident_type": _INCIDENT_TYPE[intake.incident_type],
        "years_since_incident": years_between(from_proto_date(intake.incident_date), day),
        "household_size": intake.household_size,
        "dependants": intake.dependants,
        "female_headed": intake.female_headed_household,
        "monthly_income_minor": intake.monthly_household_income_minor,
        "income_per_person_minor": intake.monthly_household_income_minor // intake.household_size,
        "has_business": intake.HasField("existing_business"),
        "business_years": intake.existing_business.years_operating,
        "business_sector": intake.existing_business.sector,
        "active_loans": intake.active_programme_loans,
        "languages": [_LANGUAGE[lang] for lang in intake.languages],
        "injuries": list(intake.injuries),
    }
    levels = {_DOMAIN[f.domain]: _LEVEL[f.level] for f in intake.functioning}
    result.update(levels)
    result["functioning_recorded"] = bool(levels)
    if levels:
        result["max_difficulty"] = max(levels.values())
    return result


def intake_json(intake: pb.SurvivorIntake) -> str:
    """The intake as stored beside its bytes: JSON that reports and SQL can read."""
    return json.dumps(json_format.MessageToDict(intake, preserving_proto_field_name=True))


def stored_intake(row: asyncpg.Record) -> pb.SurvivorIntake:
    """The intake of a stored row from its protobuf bytes (`intake_pb`); rows written
    before those existed have only the JSON (`intake`)."""
    if row["intake_pb"] is not None:
        return pb.SurvivorIntake.FromString(row["intake_pb"])
    return json_format.ParseDict(json.loads(row["intake"]), pb.SurvivorIntake())


def intake_from_dict(data: dict[str, Any]) -> pb.SurvivorIntake:
    """A rule-set test case's intake, written in the API's JSON form."""
    intake = pb.SurvivorIntake()
    try:
        json_format.ParseDict(_dates_as_objects(data), intake)
    except json_format.ParseError as error:
        raise ValueError(str(error)) from None
    return intake


def _dates_as_objects(data: Any) -> Any:
    """YAML reads 2020-01-31 as a date; the API's JSON form of google.type.Date is an
    object."""
    if isinstance(data, date):
        return {"year": data.year, "month": data.month, "day": data.day}
    if isinstance(data, dict):
        return {k: _dates_as_objects(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_dates_as_objects(v) for v in data]
    return data
