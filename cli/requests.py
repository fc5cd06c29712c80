"""Requests are checked here with the services' own protovalidate rules before they are
sent, so a bad value is refused on the operator's machine and nothing is written."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from cli.inputs import BadInput, iso_date
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.type.v1 import sex_pb2
from services.common.errors import FieldViolation
from services.common.interceptors import shared_validator, violations_of

M = TypeVar("M", bound=Message)

_INTAKE_DATES = ("date_of_birth", "incident_date", "dateOfBirth", "incidentDate")
_SHORT_ENUMS = {
    "sex": sex_pb2.Sex.DESCRIPTOR,
    "incident_type": eligibility_pb.IncidentType.DESCRIPTOR,
    "incidentType": eligibility_pb.IncidentType.DESCRIPTOR,
    "preferred_language": eligibility_pb.Language.DESCRIPTOR,
    "preferredLanguage": eligibility_pb.Language.DESCRIPTOR,
}
_FUNCTIONING_ENUMS = {
    "domain": eligibility_pb.WashingtonGroupDomain.DESCRIPTOR,
    "level": eligibility_pb.DifficultyLevel.DESCRIPTOR,
}


def checked(request: M, *also: FieldViolation) -> M:
    """The request, if the services' validation rules accept it (and there are no
    violations `also`, found by checks of the service's own); else BadInput, naming
    every violation at once."""
    violations = violations_of(request, shared_validator()) + list(also)
    if violations:
        listed = "; ".join(f"{v.field}: {v.description}" for v in violations[:6])
        more = f" (and {len(violations) - 6} more)" if len(violations) > 6 else ""
        raise BadInput(f"{len(violations)} invalid field(s): {listed}{more}")
    return request


def _date(value: Any, what: str) -> Any:
    """YAML dates, 'YYYY-MM-DD' strings and {year, month, day} all become the last."""
    if isinstance(value, dict):
        return value
    parsed = iso_date(str(value), what)
    return {"year": parsed.year, "month": parsed.month, "day": parsed.day}


def _enum(value: Any, enum: EnumDescriptor, what: str) -> Any:
    """An enum value by the API's JSON name, written in full or short (`male` for
    SEX_MALE); a name the enum does not have is refused, listing those it has."""
    if not isinstance(value, str):
        return value  # a number: the parser checks it
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")  # buf style: X_UNSPECIFIED = 0
    name = value.upper() if value.upper().startswith(prefix) else prefix + value.upper()
    if name not in enum.values_by_name or enum.values_by_name[name].number == 0:
        allowed = ", ".join(v.name.removeprefix(prefix).lower() for v in enum.values[1:])
        raise BadInput(f"{what} {value!r} is not one of: {allowed}")
    return name


class _DatesAsText(yaml.SafeLoader):
    """YAML's own loader, with dates left as text: `_date` then names the field of an
    impossible one (1981-02-30) instead of YAML failing without saying where."""


_DatesAsText.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def intake_from_text(text: str, source: str) -> eligibility_pb.SurvivorIntake:
    """A SurvivorIntake from YAML or JSON (the API's JSON form, as in the README's grpcurl
    example); dates may be written 1981-05-14 and enums without prefix (sex: male)."""
    try:
        data = yaml.load(text, Loader=_DatesAsText)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{source} is not valid YAML or JSON{where}") from None
    if isinstance(data, dict) and isinstance(data.get("intake"), dict):
        data = data["intake"]  # a whole RegisterSurvivorRequest body is fine too
    if not isinstance(data, dict):
        raise BadInput(f"{source} must hold a mapping of intake fields")
    for key in _INTAKE_DATES:
        if key in data:
            data[key] = _date(data[key], key)
    consent = data.get("consent")
    if isinstance(consent, dict):
        for key in ("recorded_on", "recordedOn"):
            if key in consent:
                consent[key] = _date(consent[key], f"consent.{key}")
    for key, enum in _SHORT_ENUMS.items():
        if key in data:
            data[key] = _enum(data[key], enum, key)
    if isinstance(data.get("languages"), list):
        data["languages"] = [
            _enum(v, eligibility_pb.Language.DESCRIPTOR, f"languages[{i}]")
            for i, v in enumerate(data["languages"])
        ]
    functioning = data.get("functioning")
    for index, item in enumerate(functioning if isinstance(functioning, list) else []):
        if isinstance(item, dict):
            for key, enum in _FUNCTIONING_ENUMS.items():
                if key in item:
                    item[key] = _enum(item[key], enum, f"functioning[{index}].{key}")
    intake = eligibility_pb.SurvivorIntake()
    try:
        json_format.ParseDict(data, intake)
    except json_format.ParseError as error:
        raise BadInput(f"{source}: {_parse_problem(str(error))}") from None
    return intake


# The protobuf parser's own wording for the mistakes people make in an intake file.
_NOT_WHOLE = re.compile(
    r"^Failed to parse (\w+) field: (?:invalid literal for int\(\) with base 10: (.+?)\.|"
    r"Couldn't parse integer: (.+?) at |int\(\) argument must be)"
)
_NO_FIELD = re.compile(r'has no field named "(\w+)"')


def _parse_problem(message: str) -> str:
    if match := _NOT_WHOLE.match(message):
        field, value = match[1], match[2] or match[3]
        return f"{field} must be a whole number" + (f", not {value}" if value else "")
    if match := _NO_FIELD.search(message):
        return f"an intake has no field {match[1]!r} (see docs/cli.md for one)"
    return message
