"""The plugin declaration is checked when the catalogue loads: a broken plugin stops
start-up with a message naming it, instead of failing a survivor's request later."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import services.assistance
from services.assistance.capacity import load_reference_data
from services.assistance.catalogue import (
    CANCEL,
    WAITLISTED,
    AssistanceTypePlugin,
    PluginError,
    State,
    Transition,
    load_catalogue,
)
from services.assistance.plugins.builtin import COMPUTER_COURSE, WHEELCHAIR
from services.assistance.records import check_data
from services.common.errors import InvalidArgument


def minimal(**changes: Any) -> AssistanceTypePlugin:
    fields: dict[str, Any] = {
        "type_id": "home_visit",
        "name_en": "Home visit",
        "name_az": "Ev ziyarəti",
        "capacity_model": "none",
        "data_schema": {"type": "object"},
        "states": (
            State("planned", "Planned", "Planlaşdırıldı"),
            State("done", "Done", "Edildi", terminal=True),
        ),
        "initial_state": "planned",
        "transitions": (Transition("visit", ("planned",), "done", delivers=True),),
    }
    fields.update(changes)
    return AssistanceTypePlugin(**fields)


def test_the_shipped_types_are_found_through_their_entry_points() -> None:
    catalogue = load_catalogue()
    assert {
        "wheelchair",
        "spa_rehabilitation",
        "english_course",
        "computer_course",
        "carpet_weaving",
    } <= set(catalogue)


def test_the_core_adds_waitlisting_and_cancelling_to_every_lifecycle() -> None:
    assert WAITLISTED in WHEELCHAIR.all_states
    cancel = WHEELCHAIR.transition_for(CANCEL)
    assert cancel is not None and cancel.releases_capacity
    assert "followed_up" not in cancel.from_states
    # Cancelled before delivery only, as the catalogue lists it: a delivered chair's
    # unit is used (the service refuses it, ALREADY_DELIVERED).
    assert set(cancel.from_states) == {
        "waitlisted",
        "fitting_assessment",
        "procurement",
        "allocated",
    }
    assert WAITLISTED not in minimal().all_states


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"type_id": "Home Visit"}, "type_id must match"),
        ({"name_az": " "}, "Azerbaijani"),
        ({"capacity_model": "cups"}, "capacity_model"),
        ({"data_schema": {"type": "object", "minProperties": "x"}}, "invalid JSON Schema"),
        ({"data_schema": {"type": "array"}}, "must describe an object"),
        ({"initial_state": "nowhere"}, "not a declared state"),
        ({"initial_state": "done"}, "cannot be terminal"),
        (
            {
                "states": (
                    State("planned", "P", "P"),
                    State("waitlisted", "W", "W"),
                    State("done", "D", "D", terminal=True),
                )
            },
            "core's own",
        ),
        ({"transitions": (Transition("visit", ("planned",), "gone"),)}, "undeclared states"),
        ({"transitions": (Transition("cancel", ("planned",), "done"),)}, "core one"),
        (
            {
                "transitions": (
                    Transition("visit", ("planned",), "done"),
                    Transition("redo", ("done",), "planned"),
                )
            },
            "terminal state",
        ),
        ({"transitions": ()}, "cannot be reached"),
        (
            {"transitions": (Transition("visit", ("planned",), "done", records_attendance=True),)},
            "no course length",
        ),
        ({"follow_up_days": (0,)}, "follow_up_days must be at most 20 whole numbers"),
        # Each of these loaded, then failed survivors' requests or the type list (INTERNAL).
        ({"follow_up_days": (1.5,)}, "follow_up_days must be"),
        ({"follow_up_days": (3661,)}, "from 1 to 3660"),
        ({"follow_up_days": tuple(range(1, 22))}, "at most 20"),
        ({"follow_up_days": 30}, "as a tuple"),
        ({"data_schema": True}, "must be a JSON Schema object"),
        (
            {"data_schema": {"type": "object", "properties": {"x": {"$ref": "#/$defs/none"}}}},
            "'#/\\$defs/none' points nowhere",
        ),
        (
            {
                "course_length_key": "sessions",
                "transitions": (
                    Transition(
                        "visit", ("planned",), "done", {"type": "object"}, records_attendance=True
                    ),
                ),
            },
            "records attendance: its data must require 'sessions'",
        ),
        (
            {
                "course_length_key": "sessions",
                "data_schema": {
                    "type": "object",
                    "properties": {"sessions": {"type": "integer", "minimum": 1}},
                    "required": ["sessions"],
                },
                "transitions": (
                    Transition(
                        "visit",
                        ("planned",),
                        "done",
                        {"type": "object", "properties": {"sessions": {"type": "integer"}}},
                        records_attendance=True,
                    ),
                ),
            },
            "a whole number of at least 1",
        ),
        (
            {
                "course_length_key": "sessions",
                "transitions": (Transition("visit", ("planned",), "done", delivers=True),),
            },
            "course_length_key 'sessions' must be a required property of data_schema",
        ),
        (
            {
                "transitions": (
                    Transition("visit", ("planned",), "done", requires_full_attendance=True),
                )
            },
            "counts attendance but no course length",
        ),
        (
            {
                "states": (
                    State("planned", "P", "P"),
                    State("stuck", "S", "S"),
                    State("done", "D", "D", terminal=True),
                ),
                "transitions": (
                    Transition("visit", ("planned",), "done"),
                    Transition("park", ("planned",), "stuck"),
                ),
            },
            "states \\['stuck'\\] are not terminal, yet no action leaves them",
        ),
        ({"provider_kinds": ("HOSPITAL",)}, "provider_kinds"),
        ({"eligibility_rules_yaml": "rules: {"}, "not YAML"),
        ({"eligibility_rules_yaml": "programmes: []"}, "'rules' list"),
    ],
)
def test_an_inconsistent_declaration_is_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(PluginError, match=problem):
        minimal(**changes)


def test_data_violations_name_the_field_that_breaks_the_schema() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_data(WHEELCHAIR.validator, {"seat_width_cm": 20, "kind": "jet"})
    fields = {v.field for v in err.value.violations}
    assert fields == {"data.seat_width_cm", "data.kind"}
    with pytest.raises(InvalidArgument) as err:
        check_data(COMPUTER_COURSE.validator, {})
    assert [v.field for v in err.value.violations] == ["data.level"]
    check_data(COMPUTER_COURSE.validator, {"level": "office"})


def test_a_plugin_can_be_derived_from_another() -> None:
    # Frozen dataclasses: a variant is declared with replace() and checked again.
    variant = replace(minimal(), type_id="phone_call", name_en="Phone call")
    assert variant.transition_for("visit") is not None
    with pytest.raises(PluginError):
        replace(minimal(), initial_state="done")


def test_every_shipped_pool_is_at_a_provider_that_delivers_its_type() -> None:
    """The reference data's pools are all loaded (one at a provider of the wrong kind would
    be skipped), and every shipped type says who delivers it."""
    catalogue = load_catalogue()
    data = load_reference_data(Path(services.assistance.__file__).parent / "reference.yaml")
    for provider in data["providers"]:
        for pool in provider["pools"]:
            kinds = catalogue[pool["type_id"]].provider_kinds
            assert provider["kind"] in kinds, (pool["pool_id"], provider["kind"], kinds)
    assert all(plugin.provider_kinds for plugin in catalogue.values())
