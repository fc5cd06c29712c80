"""The assistance catalogue: every assistance type is a plugin, found through the
`mineaction.assistance_types` entry-point group, so a new type needs no core change.

A plugin is one `AssistanceTypePlugin` value. It declares everything the core needs to
run the type: names in both languages, the JSON Schema of its request data, its lifecycle
(states, and transitions named by action with the effects each one has), its capacity
model, its follow-up schedule and, optionally, eligibility rules for the eligibility
service. The core validates the declaration when the catalogue loads, so a broken plugin
stops start-up with a message that names it instead of failing a survivor's request later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, Literal

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
import yaml

ENTRY_POINT_GROUP = "mineaction.assistance_types"

CapacityModel = Literal["stock", "seats", "session_slots", "none"]
CAPACITY_MODELS: tuple[CapacityModel, ...] = ("stock", "seats", "session_slots", "none")

# The kinds of provider the programme works with (ProviderKind without its prefix).
PROVIDER_KINDS = ("CLINIC", "SPA_CENTRE", "TRAINING_CENTRE", "SUPPLIER", "WORKSHOP")

# The core adds these to every lifecycle: a request waits in WAITLISTED while its pool is
# full, and CANCEL ends any unfinished assistance. Plugins may not redeclare them.
WAITLISTED = "waitlisted"
CANCELLED = "cancelled"
CANCEL = "cancel"
PROMOTE = "promote"
REQUEST = "request"
_CORE_ACTIONS = (CANCEL, PROMOTE, REQUEST)

_ID = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_ACTION = re.compile(r"^[a-z][a-z_]{1,39}$")
# An action that records attendance takes the number of sessions attended in this key.
ATTENDANCE_KEY = "sessions"

_SESSIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {ATTENDANCE_KEY: {"type": "integer", "minimum": 1}},
    "required": [ATTENDANCE_KEY],
    "additionalProperties": False,
}
# An action that declares no data takes none: keys it never reads would be stored in the
# item's history as given (free text, perhaps about the person).
EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "additionalProperties": False}


class PluginError(Exception):
    """A plugin's declaration is inconsistent; start-up stops with this message."""


@dataclass(frozen=True)
class State:
    """One lifecycle state. `terminal` states have no way out."""

    state_id: str
    name_en: str
    name_az: str
    terminal: bool = False


@dataclass(frozen=True)
class Transition:
    """An action that moves an assistance from one of `from_states` to `to_state`.

    Effects the core applies:
    - `releases_capacity`: the reserved place is freed and goes to the next one waiting;
    - `delivers`: the assistance counts as delivered (and follow-ups are scheduled);
    - `meets_need`: the need it addresses is met;
    - `records_attendance`: `data.sessions` sessions are added; never beyond the course;
    - `requires_full_attendance`: refused until every session of the course is attended.
    `data_schema` is the JSON Schema of the data the action carries.
    """

    action: str
    from_states: tuple[str, ...]
    to_state: str
    data_schema: Mapping[str, Any] = field(default_factory=lambda: EMPTY_SCHEMA)
    releases_capacity: bool = False
    delivers: bool = False
    meets_need: bool = False
    records_attendance: bool = False
    requires_full_attendance: bool = False


@dataclass(frozen=True)
class AssistanceTypePlugin:
    """What a plugin declares about its assistance type."""

    type_id: str
    name_en: str
    name_az: str
    capacity_model: CapacityModel
    # JSON Schema (draft 2020-12) of the data given with RequestAssistance.
    data_schema: Mapping[str, Any]
    states: tuple[State, ...]
    initial_state: str
    transitions: tuple[Transition, ...]
    # Days after delivery at which a follow-up is due.
    follow_up_days: tuple[int, ...] = ()
    # Where a course's length comes from, if the type records attendance: this key of the
    # request data (a prescribed number of sessions), or the capacity pool's `sessions`
    # (a cohort's length). Exactly one, so attendance can never run past the course.
    course_length_key: str | None = None
    course_length_from_pool: bool = False
    # Rules for the eligibility service, in its rule-set YAML (rules-as-data); optional.
    eligibility_rules_yaml: str = ""
    # The kinds of provider that deliver it (PROVIDER_KINDS); its capacity pools are
    # opened only at such providers. Empty: any kind.
    provider_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_plugin(self)

    @cached_property
    def all_states(self) -> dict[str, State]:
        """The plugin's states plus the core's own (waitlisted, cancelled)."""
        states = {s.state_id: s for s in self.states}
        if self.uses_capacity:
            states[WAITLISTED] = State(WAITLISTED, "Waitlisted", "Gözləmə siyahısında")
        states[CANCELLED] = State(CANCELLED, "Cancelled", "Ləğv edildi", terminal=True)
        return states

    @cached_property
    def all_transitions(self) -> tuple[Transition, ...]:
        """The plugin's transitions plus cancel from every unfinished state an item is in
        before it is delivered (once delivered, its unit or seat is used)."""
        before = self._states_before_delivery
        cancellable = tuple(
            s for s, state in self.all_states.items() if not state.terminal and s in before
        )
        cancel = Transition(CANCEL, cancellable, CANCELLED, releases_capacity=True)
        return (*self.transitions, cancel)

    @cached_property
    def _states_before_delivery(self) -> frozenset[str]:
        """The states reached from the first one (or the waitlist) by steps that deliver
        nothing."""
        reached = {self.initial_state, WAITLISTED}
        frontier = list(reached)
        while frontier:
            state = frontier.pop()
            for t in self.transitions:
                if not t.delivers and state in t.from_states and t.to_state not in reached:
                    reached.add(t.to_state)
                    frontier.append(t.to_state)
        return frozenset(reached)

    @property
    def uses_capacity(self) -> bool:
        return self.capacity_model != "none"

    @property
    def has_course(self) -> bool:
        return self.course_length_key is not None or self.course_length_from_pool

    def transition_for(self, action: str) -> Transition | None:
        return next((t for t in self.all_transitions if t.action == action), None)

    @cached_property
    def validator(self) -> jsonschema.protocols.Validator:
        return _validator(self.data_schema)

    def action_validator(self, transition: Transition) -> jsonschema.protocols.Validator:
        return self._action_validators[transition.action]

    @cached_property
    def _action_validators(self) -> dict[str, jsonschema.protocols.Validator]:
        return {t.action: _validator(t.data_schema) for t in self.all_transitions}


def attendance_transition(action: str, from_states: Iterable[str], to_state: str) -> Transition:
    """The usual 'record attendance' action: data {"sessions": n}, n >= 1."""
    return Transition(
        action, tuple(from_states), to_state, _SESSIONS_SCHEMA, records_attendance=True
    )


def _validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# What a survivor's request may ask of follow-ups (AssistanceType.follow_up_days).
MAX_FOLLOW_UPS, MAX_FOLLOW_UP_DAY = 20, 3660


def _check_plugin(plugin: AssistanceTypePlugin) -> None:
    """Every rule of the declaration; anything else wrong with it (a value of the wrong
    type where a check reads it) is a PluginError naming the plugin all the same."""
    try:
        _check_declaration(plugin)
    except PluginError:
        raise
    except Exception as error:
        raise PluginError(
            f"assistance type {getattr(plugin, 'type_id', '?')!r}: the declaration cannot be "
            f"read ({type(error).__name__}: {error})"
        ) from None


def _refs(schema: Any) -> Iterable[str]:
    """Every `$ref` in a JSON Schema."""
    if isinstance(schema, Mapping):
        if isinstance(schema.get("$ref"), str):
            yield schema["$ref"]
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def _check_schema(schema: Any, fail: Any) -> None:
    """A JSON Schema (draft 2020-12) of an object, whose every `$ref` resolves: one that
    points nowhere failed every request of the type (INTERNAL)."""
    if not isinstance(schema, Mapping):
        raise fail("every data schema must be a JSON Schema object (a mapping)")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except jsonschema.SchemaError as error:
        raise fail(f"invalid JSON Schema: {error.message}") from None
    if schema.get("type") != "object":
        raise fail("every data schema must describe an object")
    resolver = referencing.Registry().resolver_with_root(
        referencing.jsonschema.DRAFT202012.create_resource(dict(schema))
    )
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise fail(f"$ref {ref!r} points nowhere in its schema") from None


# Data an attendance action must refuse (none, none or fewer sessions, a fraction), and
# data it must take: attendance counts whole sessions, one or more at a time.
_NOT_ATTENDANCE: tuple[dict[str, Any], ...] = (
    {},
    {ATTENDANCE_KEY: 0},
    {ATTENDANCE_KEY: -2},
    {ATTENDANCE_KEY: 1.5},
)
_ATTENDANCE = {ATTENDANCE_KEY: 1}


def _check_declaration(plugin: AssistanceTypePlugin) -> None:
    def fail(problem: str) -> PluginError:
        return PluginError(f"assistance type {plugin.type_id!r}: {problem}")

    if not _ID.match(plugin.type_id):
        raise fail("type_id must match " + _ID.pattern)
    if not plugin.name_en.strip() or not plugin.name_az.strip():
        raise fail("needs a name in English and in Azerbaijani")
    if plugin.capacity_model not in CAPACITY_MODELS:
        raise fail(f"capacity_model must be one of {CAPACITY_MODELS}")
    if unknown_kinds := set(plugin.provider_kinds) - set(PROVIDER_KINDS):
        raise fail(f"provider_kinds {sorted(unknown_kinds)} are not among {PROVIDER_KINDS}")
    for schema in (plugin.data_schema, *(t.data_schema for t in plugin.transitions)):
        _check_schema(schema, fail)
    state_ids = [s.state_id for s in plugin.states]
    if len(set(state_ids)) != len(state_ids):
        raise fail("state ids must be unique")
    for state_id in state_ids:
        if not _ID.match(state_id):
            raise fail(f"state {state_id!r} must match {_ID.pattern}")
        if state_id in (WAITLISTED, CANCELLED):
            raise fail(f"state {state_id!r} is the core's own; choose another id")
    if plugin.initial_state not in state_ids:
        raise fail(f"initial_state {plugin.initial_state!r} is not a declared state")
    terminal = {s.state_id for s in plugin.states if s.terminal}
    if plugin.initial_state in terminal:
        raise fail("initial_state cannot be terminal")
    actions = [t.action for t in plugin.transitions]
    if len(set(actions)) != len(actions):
        raise fail("each action may be declared once (list several from_states instead)")
    for t in plugin.transitions:
        if not _ACTION.match(t.action) or t.action in _CORE_ACTIONS:
            raise fail(f"action {t.action!r} must match {_ACTION.pattern} and not be a core one")
        unknown = {*t.from_states, t.to_state} - set(state_ids)
        if unknown or not t.from_states:
            raise fail(f"action {t.action!r} names undeclared states {sorted(unknown)}")
        if terminal & set(t.from_states):
            raise fail(f"action {t.action!r} leaves a terminal state")
        if (t.records_attendance or t.requires_full_attendance) and not plugin.has_course:
            raise fail(f"action {t.action!r} counts attendance but no course length is declared")
        if t.records_attendance:
            check = _validator(t.data_schema)
            if not check.is_valid(_ATTENDANCE) or any(map(check.is_valid, _NOT_ATTENDANCE)):
                raise fail(
                    f"action {t.action!r} records attendance: its data must require "
                    f"{ATTENDANCE_KEY!r}, a whole number of at least 1 (attendance_transition "
                    "declares it so)"
                )
    key = plugin.course_length_key
    if key is not None and (
        key not in plugin.data_schema.get("properties", {})
        or key not in plugin.data_schema.get("required", [])
    ):
        raise fail(
            f"course_length_key {key!r} must be a required property of data_schema: the "
            "number of sessions each request prescribes"
        )
    if plugin.course_length_key is not None and plugin.course_length_from_pool:
        raise fail("declare course_length_key or course_length_from_pool, not both")
    if plugin.course_length_from_pool and not plugin.uses_capacity:
        raise fail("course_length_from_pool needs a capacity model with pools")
    days = plugin.follow_up_days
    if (
        not isinstance(days, tuple | list)
        or len(days) > MAX_FOLLOW_UPS
        or any(type(d) is not int or not 1 <= d <= MAX_FOLLOW_UP_DAY for d in days)
    ):
        raise fail(
            f"follow_up_days must be at most {MAX_FOLLOW_UPS} whole numbers of days from 1 to "
            f"{MAX_FOLLOW_UP_DAY}, as a tuple (got {days!r})"
        )
    reachable = {plugin.initial_state}
    while True:
        more = {t.to_state for t in plugin.transitions if reachable & set(t.from_states)}
        if more <= reachable:
            break
        reachable |= more
    if unreachable := set(state_ids) - reachable:
        raise fail(f"states {sorted(unreachable)} cannot be reached from the initial state")
    leaving = {s for t in plugin.transitions for s in t.from_states}
    if dead_ends := set(state_ids) - terminal - leaving:
        raise fail(f"states {sorted(dead_ends)} are not terminal, yet no action leaves them")
    if plugin.eligibility_rules_yaml:
        try:
            rules = yaml.safe_load(plugin.eligibility_rules_yaml)
        except yaml.YAMLError as error:
            raise fail(f"eligibility_rules_yaml is not YAML: {error}") from None
        if not isinstance(rules, dict) or not isinstance(rules.get("rules"), list):
            raise fail("eligibility_rules_yaml must be a mapping with a 'rules' list")


def load_catalogue() -> dict[str, AssistanceTypePlugin]:
    """Every installed assistance type, keyed by type id."""
    catalogue: dict[str, AssistanceTypePlugin] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        plugin = entry_point.load()
        if not isinstance(plugin, AssistanceTypePlugin):
            raise PluginError(f"entry point {entry_point.name} is not an AssistanceTypePlugin")
        if plugin.type_id in catalogue:
            raise PluginError(f"two plugins declare assistance type {plugin.type_id}")
        catalogue[plugin.type_id] = plugin
    return catalogue
