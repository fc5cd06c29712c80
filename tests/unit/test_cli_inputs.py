"""The CLI's checks of what the operator typed, made before anything is called."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cli import inputs
from cli.inputs import BadInput
from cli.requests import intake_from_text
from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.type.v1 import sex_pb2
from services.common.money import manat, qepik_and_manat


@pytest.mark.parametrize(
    ("typed", "minor"),
    [("12.50", 1250), ("12.5", 1250), ("1500", 150_000), ("0.01", 1), ("0.10", 10),
     ("99999999.99", 9_999_999_999), ("  7.05 ", 705),
     # as the CLI prints them, and with the decimal comma Azerbaijani staff type
     ("1,300.00", 130_000), ("4,687.5", 468_750), ("312,50", 31_250), ("9,5", 950),
     ("1.000,50", 100_050), ("12.345.678,00", 1_234_567_800)],
)  # fmt: skip
def test_manat_becomes_exact_qepik(typed: str, minor: int) -> None:
    assert inputs.amount_minor(typed) == minor


@pytest.mark.parametrize(
    ("typed", "why"),
    [("12.345", "more than 2 decimals"), ("0.001", "more than 2 decimals"),
     ("-5", "positive"), ("0", "positive"), ("0.00", "positive"), ("abc", "not an amount"),
     ("1e3", "not an amount"), ("nan", "not an amount"), ("1,500", "fifteen hundred"),
     ("1,5,0", "not an amount"), ("1.500.00", "not an amount"),
     ("", "not an amount"), ("100000001", "above the limit"),
     ("١٠", "not an amount"), ("１０", "not an amount")],  # other scripts' digits
)  # fmt: skip
def test_bad_amounts_are_refused(typed: str, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        inputs.amount_minor(typed)


def test_manat_display() -> None:
    assert manat(123456) == "1,234.56"
    assert manat(5) == "0.05"
    assert manat(-250) == "-2.50"
    assert manat(123456789, grouped=False) == "1234567.89"
    assert qepik_and_manat(113000) == "113000 qəpik (1,130.00 AZN)"
    # Azerbaijani writes the decimal comma, and groups thousands with a point.
    assert manat(123456789, lang="az") == "1.234.567,89"
    assert manat(-5, lang="az") == "-0,05" and manat(-5) == "-0.05"


def test_dates_ids_and_languages() -> None:
    assert inputs.iso_date("2026-02-28") == date(2026, 2, 28)
    for bad, why in (("2026-02-30", "real calendar"), ("2026-2-3", "YYYY-MM-DD"),
                     ("1850-01-01", "1900-2100"), ("", "YYYY-MM-DD"),
                     ("２０２６-01-01", "YYYY-MM-DD")):  # fmt: skip
        with pytest.raises(BadInput, match=why):
            inputs.iso_date(bad)
    assert inputs.identifier(" srv-saatli-001 ", "survivor id") == "srv-saatli-001"
    for bad in ("ab", "bad id", "-leading", "x" * 65):
        with pytest.raises(BadInput, match="not a valid id"):
            inputs.identifier(bad, "survivor id")
    assert inputs.language("AZ") == "az"
    with pytest.raises(BadInput, match="unknown language"):
        inputs.language("ru")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        inputs.existing_file(tmp_path / "nope.yaml", "intake file")
    with pytest.raises(BadInput, match="not a file"):
        inputs.existing_file(tmp_path, "intake file")


def test_intake_yaml_with_friendly_dates_and_enums() -> None:
    intake = intake_from_text(
        """
        survivor_id: srv-001
        date_of_birth: 1981-05-14
        sex: male
        district_code: saatli
        incident_date: "2003-09-02"
        incident_type: landmine
        functioning: [{domain: walking, level: a_lot_of_difficulty}]
        household_size: 5
        languages: [azerbaijani]
        preferred_language: azerbaijani
        consent: {data_processing: true, recorded_on: 2026-02-20, recorded_by: cw-01}
        """,
        "intake.yaml",
    )
    assert intake.sex == sex_pb2.SEX_MALE
    assert (intake.date_of_birth.year, intake.date_of_birth.month) == (1981, 5)
    assert intake.incident_type == pb.INCIDENT_TYPE_LANDMINE
    assert intake.functioning[0].level == pb.DIFFICULTY_LEVEL_A_LOT_OF_DIFFICULTY
    assert intake.consent.recorded_on.day == 20


def test_intake_in_the_api_json_form() -> None:
    intake = intake_from_text(
        '{"intake": {"survivor_id": "srv-002", "sex": "SEX_FEMALE",'
        ' "date_of_birth": {"year": 1990, "month": 1, "day": 2}}}',
        "intake.json",
    )
    assert intake.survivor_id == "srv-002" and intake.date_of_birth.year == 1990


@pytest.mark.parametrize(
    ("text", "why"),
    [("[1, 2]", "mapping"), ("survivor_id: [x", "not valid YAML"),
     ("no_such_field: 1", "no_such_field"),
     ("sex: femal", "sex 'femal' is not one of: female, male"),
     ("sex: unspecified", "sex 'unspecified' is not one of"),
     ("languages: [azerbaijani, klingon]", r"languages\[1\] 'klingon' is not one of: .*english"),
     ("functioning: [{domain: walking, level: lots}]",
      r"functioning\[0\].level 'lots' is not one of: no_difficulty, some_difficulty"),
     ("date_of_birth: 14/05/1981", "YYYY-MM-DD"),
     ("household_size: five", r"^intake.yaml: household_size must be a whole number, not 'five'$"),
     ("household_size: 2.5", r"^intake.yaml: household_size must be a whole number, not 2.5$"),
     ("dependants: [1]", r"^intake.yaml: dependants must be a whole number$"),
     ("no_such_field: 1", r"^intake.yaml: an intake has no field 'no_such_field'")],
)  # fmt: skip
def test_bad_intake_files(text: str, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        intake_from_text(text, "intake.yaml")


def test_data_pairs_are_json_values_or_text() -> None:
    assert inputs.data_pairs(["seat_width_cm=44", "kind=manual", "ok=true", "notes=a=b"], "d") == {
        "seat_width_cm": 44,
        "kind": "manual",
        "ok": True,
        "notes": "a=b",
    }
    for bad, why in ((["44"], "KEY=VALUE"), (["a b=1"], "KEY=VALUE"), (["k=1", "k=2"], "twice")):
        with pytest.raises(BadInput, match=why):
            inputs.data_pairs(bad, "--data")


def test_an_income_may_be_zero_but_not_negative() -> None:
    assert inputs.amount_minor("0", "--income", allow_zero=True) == 0
    assert inputs.amount_minor("900.50", "--income", allow_zero=True) == 90_050
    with pytest.raises(BadInput, match="must not be negative"):
        inputs.amount_minor("-1", "--income", allow_zero=True)


def test_actions_and_required_text() -> None:
    assert inputs.action(" allocate_from_stock ") == "allocate_from_stock"
    for bad in ("Deliver", "de-liver", "x", ""):
        with pytest.raises(BadInput, match="is not valid"):
            inputs.action(bad)
    with pytest.raises(BadInput, match="--reason is required"):
        inputs.text("", "--reason", 10)
    for blank in ("  ", "\u200b", "\u00a0\t"):
        with pytest.raises(BadInput, match="--reason is blank: it holds only spaces or invisible"):
            inputs.text(blank, "--reason", 10)
    with pytest.raises(BadInput, match="longer than 10"):
        inputs.text("x" * 11, "--reason", 10)
