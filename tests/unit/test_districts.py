"""One district list for every service: the shipped data that names districts names
only districts on it, so reports by district add up across services."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.common.districts import district_violations, known_districts, require_known_district
from services.common.errors import InvalidArgument

SERVICES = Path(__file__).resolve().parents[2] / "services"


def test_every_shipped_provider_is_in_a_known_district() -> None:
    shipped = yaml.safe_load((SERVICES / "assistance" / "reference.yaml").read_text("utf-8"))
    districts = {p["provider_id"]: p["district_code"] for p in shipped["providers"]}
    assert districts
    assert {p: d for p, d in districts.items() if d not in known_districts()} == {}


def test_the_shipped_programme_districts_are_known() -> None:
    rule_set = yaml.safe_load(
        (SERVICES / "eligibility" / "rulesets" / "reintegration.yaml").read_text("utf-8")
    )
    values = rule_set["parameters"]["programme_districts"]["values"]
    named = {code for value in values for code in value["value"]}
    assert named and named <= known_districts().keys()


def test_every_district_has_its_names_in_both_languages() -> None:
    assert all(names["en"] and names["az"] for names in known_districts().values())


def test_an_unknown_district_is_a_field_violation() -> None:
    assert district_violations("saatli", "intake.district_code") == []
    (violation,) = district_violations("saatly", "intake.district_code")
    assert (violation.field, violation.description, violation.reason) == (
        "intake.district_code",
        "unknown district 'saatly'",
        "district.known",
    )
    require_known_district("naftalan")
    with pytest.raises(InvalidArgument) as refused:
        require_known_district("saatly")
    assert [v.field for v in refused.value.violations] == ["district_code"]
