"""Rule sets as data: YAML documents whose conditions are CEL expressions.

A rule set declares effective-dated parameters (each with a unit and the policy document
it comes from), programmes, rules with bilingual explanation templates, a data-defined
priority score and its own test cases. Nothing in a rule set is Python: expressions run
on the sandboxed CEL engine, and a rule set is checked before it is accepted — every
expression must compile, read only known facts and declared parameters, and yield the
right type on a sample survivor under every parameter period.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any, Literal, NamedTuple, TypeGuard

import cel
import yaml

from services.common.districts import known_districts
from services.common.money import manat
from services.common.text import has_control_or_format, visible

Outcome = Literal["ELIGIBLE", "NOT_ELIGIBLE", "NEEDS_REVIEW"]
OUTCOMES: tuple[Outcome, ...] = ("ELIGIBLE", "NOT_ELIGIBLE", "NEEDS_REVIEW")
_ID = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
# The last step of a path such as rules[2].explain.pass: `.pass`, or `[2]`.
_PARENT = re.compile(r"(?:\.[^.\[\]]*|\[\d+\])$")
_PARAM_REF = re.compile(r"\bparams\.([A-Za-z_][A-Za-z0-9_]*)")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The variable a CEL macro binds: `injuries.exists(i, i == 'lower_limb_amputation')`.
_MACRO_VARIABLE = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)

# The facts an expression may read, with a sample value of the right type. The sample
# doubles as the type check: every expression is evaluated against it at publish time.
FACT_SAMPLES: Mapping[str, Any] = {
    "age": 40,
    "sex": "female",
    "district": "saatli",
    "incident_type": "landmine",
    "years_since_incident": 5,
    "household_size": 5,
    "dependants": 3,
    "female_headed": True,
    "monthly_income_minor": 50000,
    "income_per_person_minor": 10000,
    "has_business": True,
    "business_years": 2,
    "business_sector": "fish_farming",
    "active_loans": 0,
    "languages": ["az", "en"],
    "injuries": ["lower_limb_amputation"],
    "functioning_recorded": True,
    "max_difficulty": 2,
    "seeing": 0,
    "hearing": 0,
    "walking": 2,
    "cognition": 0,
    "self_care": 1,
    "communication": 0,
}
FUNCTIONING_FACTS = ("seeing", "hearing", "walking", "cognition", "self_care", "communication")
# A survivor's record may lack these (services/eligibility/intake.py): every domain when no
# functioning was recorded (then max_difficulty too, and functioning_recorded is false),
# or any one domain of several.
_RECORDS_LACKING: tuple[tuple[dict[str, Any], tuple[str, ...]], ...] = (
    (
        {"functioning_recorded": False},
        (*FUNCTIONING_FACTS, "max_difficulty"),
    ),
    *(({}, (domain,)) for domain in FUNCTIONING_FACTS),
)
LANGUAGES = ("en", "az")
# How an explanation says a value (its inputs keep the value as it is): money in manat,
# a district by its name, yes or no in the text's language.
MONEY, DISTRICT = "money", "district"
# Codes some facts hold, as an explanation says them in each language (a code not listed
# as it is): "cins: kişi", not "cins: male".
_NAMED: Mapping[str, Mapping[str, Mapping[str, str]]] = {
    "sex": {
        "female": {"en": "female", "az": "qadın"},
        "male": {"en": "male", "az": "kişi"},
    },
    "incident_type": {
        "landmine": {"en": "landmine", "az": "mina"},
        "erw": {"en": "explosive remnants of war", "az": "partlamamış hərbi sursat"},
    },
    "languages": {
        "az": {"en": "Azerbaijani", "az": "Azərbaycan dili"},
        "en": {"en": "English", "az": "ingilis dili"},
    },
}
FACT_KINDS: Mapping[str, str] = {
    **{name: MONEY for name in FACT_SAMPLES if name.endswith("_minor")},
    "district": DISTRICT,
    **{name: name for name in _NAMED},
}
_NONE = {"en": "none", "az": "yoxdur"}
_YES_NO = {"en": ("no", "yes"), "az": ("xeyr", "bəli")}
# The unit word rule sets used to write after an amount ("{x} qəpik", "{x} qəpikdən"):
# an amount now says its own unit, so the word goes (an Azerbaijani ending stays on the
# amount: "150.00 AZN-dən").
_UNIT_AFTER = r"\{{{name}\}} ?qəpik(\w*)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rule set, pointing at where it is in the YAML."""

    path: str
    message: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        where = f" (line {self.line}, column {self.column})" if self.line else ""
        return f"{self.path}{where}: {self.message}"


class NotInForce(ValueError):
    """The rules cannot decide on a day: it is before they are in force, or a parameter
    has no value on it (only a version published before gaps were refused can have one)."""


class CannotDecide(ValueError):
    """An expression failed on a survivor's facts: only a version published before such
    expressions were refused can have one (an optional fact read without `needs`)."""


# A score component's points, as the answer carries them (PriorityScore).
MAX_POINTS = 1000
# Longer expressions are refused: a chain of some 15,000 operators overflows the CEL
# engine's stack and takes the process down; the shipped rules' longest is 143.
MAX_EXPRESSION_LENGTH = 2000


def _values(program: Any, context: Any, components: int) -> Iterator[Any]:
    """Every condition's value then every score component's (the last `components`),
    each of its kind: a condition true or false, points a whole number within
    ±MAX_POINTS. The load's type check tries one survivor; another may take a branch
    that gives something else, and that survivor cannot be decided."""
    try:
        values = program.execute(context)
    except Exception as error:
        raise CannotDecide(_first_line(error)) from None
    split = len(values) - components
    for value in values[:split]:
        if type(value) is not bool:
            raise CannotDecide(f"a condition gave {value!r}, not true or false")
    for value in values[split:]:
        if type(value) is not int or not -MAX_POINTS <= value <= MAX_POINTS:
            raise CannotDecide(
                f"a score component gave {value!r}: points are whole numbers from "
                f"-{MAX_POINTS} to {MAX_POINTS}"
            )
    return iter(values)


class RuleSetError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Text:
    en: str
    az: str

    def render(self, en: Mapping[str, str], az: Mapping[str, str]) -> Text:
        """The text with each placeholder replaced by its value as said in that language.
        Safe: load() admits only {fact} and {parameter} placeholders, and every value is
        already a display string."""
        return Text(self.en.format_map(en), self.az.format_map(az))

    def without_unit_words(self, amounts: Iterable[str]) -> Text:
        """The text without the unit word after each amount placeholder: the amount
        already says "120.00 AZN"."""
        en, az = self.en, self.az
        for name in amounts:
            pattern = re.compile(_UNIT_AFTER.format(name=re.escape(name)))
            en, az = (pattern.sub(_keep_ending(name), text) for text in (en, az))
        return Text(en, az)

    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.en)) | set(_PLACEHOLDER.findall(self.az))

    def well_formed(self) -> bool:
        """Braces appear only as {name} placeholders."""
        return all(
            "{" not in rest and "}" not in rest
            for rest in (_PLACEHOLDER.sub("", self.en), _PLACEHOLDER.sub("", self.az))
        )


def _keep_ending(name: str) -> Any:
    def replace(match: re.Match[str]) -> str:
        ending = match.group(1)
        return f"{{{name}}}" + (f"-{ending}" if ending else "")

    return replace


def _display(value: Any) -> str:
    """A value as a rule's inputs show it (as the facts hold it)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_display(v) for v in value)
    return str(value)


def _said(value: Any, kind: str | None, language: str) -> str:
    """A value as an explanation in `language` says it: money in manat ("120.00 AZN"),
    a district by its name ("Saatlı"), a code by its name ("kişi"), yes or no and an
    empty list ("yoxdur") in that language."""
    if isinstance(value, bool):
        return _YES_NO[language][value]
    if isinstance(value, list | tuple):
        return ", ".join(_said(v, kind, language) for v in value) or _NONE[language]
    codes = _NAMED.get(kind or "")
    if codes is not None and isinstance(value, str):
        return codes.get(value, {}).get(language, value)
    if kind == MONEY and isinstance(value, int):
        return f"{manat(value, lang=language)} AZN"
    if kind == DISTRICT and isinstance(value, str):
        names = known_districts().get(value)
        return names[language] if names else value
    return str(value)


def parameter_kind(name: str, unit: str) -> str | None:
    """Money for a parameter counted in qəpik, district for one of district codes."""
    if name.endswith("_minor") or unit.strip().lower().startswith("qəpik"):
        return MONEY
    if unit.strip().lower().startswith("district"):
        return DISTRICT
    return None


@dataclass(frozen=True)
class Period:
    start: date
    end: date | None  # exclusive; None means until the next period starts
    value: Any


@dataclass(frozen=True)
class Parameter:
    name: str
    unit: str
    policy_ref: str
    periods: tuple[Period, ...]

    def at(self, day: date) -> Any:
        """The value in force on `day`, or None when none is (before the first period)."""
        index = self.index_at(day)
        return None if index < 0 else self.periods[index].value

    def index_at(self, day: date) -> int:
        """Which period is in force on `day`, or -1 when none is."""
        for index in range(len(self.periods) - 1, -1, -1):
            period = self.periods[index]
            if period.start <= day:
                return index if period.end is None or day < period.end else -1
        return -1

    @cached_property
    def kind(self) -> str | None:
        return parameter_kind(self.name, self.unit)


@dataclass(frozen=True)
class Rule:
    id: str
    programmes: tuple[str, ...]
    effect: Literal["require", "review"]
    expression: str
    program: Any
    needs: tuple[str, ...]
    reads: tuple[str, ...]
    params_read: tuple[str, ...]
    explain_pass: Text
    explain_fail: Text


@dataclass(frozen=True)
class ScoreComponent:
    name: str
    expression: str
    program: Any
    explanation: Text


@dataclass(frozen=True)
class TestCase:
    id: str
    assessment_date: date
    intake: Mapping[str, Any]
    expect: Mapping[str, Outcome]


class _PeriodContext:
    """A CEL context holding one period's parameters; a survivor's facts are supplied
    through a resolver, so evaluating a survivor converts only the facts rules read.
    Evaluation is synchronous, so one context can serve every request of a process."""

    def __init__(self, params: dict[str, Any], kinds: Mapping[str, str | None]) -> None:
        self.params = params
        self.shown_params = {name: _display(value) for name, value in params.items()}
        # Per language, how explanations say each parameter.
        self.said_params = {
            language: {name: _said(v, kinds.get(name), language) for name, v in params.items()}
            for language in LANGUAGES
        }
        # Serialized trace fragments of this period, built by services/eligibility/trace.py.
        self.fragments: dict[Any, tuple[bytes, int]] = {}
        self.cel = cel.Context({"params": params})

    def bind(self, facts: Mapping[str, Any]) -> None:
        """Make `facts` the survivor the next evaluation reads (the dict's own `get` as
        the resolver: no Python frame per variable read)."""
        self.cel.set_variable_resolver(facts.get)


@dataclass(frozen=True)
class RuleSet:
    rule_set_id: str
    description: str
    parameters: Mapping[str, Parameter]
    programmes: Mapping[str, Text]
    rules: tuple[Rule, ...]
    priority: tuple[ScoreComponent, ...]
    tests: tuple[TestCase, ...]
    source: str
    by_programme: Mapping[str, tuple[Rule, ...]]

    @cached_property  # read on every evaluation; the rules never change
    def optional_facts(self) -> frozenset[str]:
        """Facts some rule needs and a survivor may not have."""
        return frozenset(name for rule in self.rules for name in rule.needs)

    _contexts: dict[tuple[int, ...], _PeriodContext] = field(
        default_factory=dict, compare=False, repr=False
    )
    _combined: dict[frozenset[str], Any] = field(default_factory=dict, compare=False, repr=False)
    _by_day: dict[date, _PeriodContext] = field(default_factory=dict, compare=False, repr=False)

    def params_at(self, day: date) -> dict[str, Any]:
        return {name: p.at(day) for name, p in self.parameters.items()}

    @cached_property
    def kinds(self) -> dict[str, str | None]:
        """How explanations say each fact and parameter (see `_said`)."""
        return {**FACT_KINDS, **{name: p.kind for name, p in self.parameters.items()}}

    @cached_property
    def first_day(self) -> date | None:
        """The first day any parameter has a value: the rules are in force from then on."""
        return min((p.periods[0].start for p in self.parameters.values()), default=None)

    def not_in_force(self, day: date) -> str | None:
        """Why the rules cannot decide on `day` (a day before they are in force, or a
        parameter without a value on it), or None when they can."""
        if self.first_day is not None and day < self.first_day:
            return f"the rules are in force from {self.first_day}; {day} is before that"
        for name, parameter in self.parameters.items():
            if parameter.index_at(day) < 0:
                return f"parameter {name} has no value in force on {day}"
        return None

    def context_at(self, day: date) -> _PeriodContext:
        """The CEL context for the parameters in force on `day`, built once per period:
        turning parameter lists into CEL values is the costly part of an evaluation.
        Raises NotInForce for a day on which some parameter has no value."""
        context = self._by_day.get(day)
        if context is not None:
            return context
        key = tuple(p.index_at(day) for p in self.parameters.values())
        if -1 in key:
            raise NotInForce(self.not_in_force(day) or f"the rules cannot decide on {day}")
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = _PeriodContext(self.params_at(day), self.kinds)
        if len(self._by_day) > 10_000:
            self._by_day.clear()
        self._by_day[day] = context
        return context

    def combined(self, missing: frozenset[str]) -> Any:
        """One CEL program giving every evaluable condition, then every score component,
        as a list: one evaluation per survivor instead of one per rule. Rules whose
        `needs` are missing are left out (they ask for review). Cached per missing set;
        each part was compiled and checked on its own at load."""
        program = self._combined.get(missing)
        if program is None:
            parts = [r.expression for r in self.rules if not missing.intersection(r.needs)]
            parts += [c.expression for c in self.priority]
            # Each part on lines of its own: a `//` comment ending one ends with its line,
            # and does not swallow the parts after it.
            program = self._combined[missing] = cel.compile(
                "[" + ",".join(f"(\n{part}\n)" for part in parts) + "]"
            )
        return program

    def change_dates(self) -> list[date]:
        """Every day some parameter's value starts or ends."""
        return sorted(
            {
                day
                for p in self.parameters.values()
                for period in p.periods
                for day in (period.start, period.end)
                if day is not None
            }
        )


# --- results ---------------------------------------------------------------------------


class RuleResult(NamedTuple):  # tuples: built thousands of times a second
    rule_id: str
    passed: bool
    missing: tuple[str, ...]
    inputs: Mapping[str, str]
    explanation: Text


class ProgrammeDecision(NamedTuple):  # tuples: built thousands of times a second
    programme_id: str
    outcome: Outcome
    rule_results: tuple[RuleResult, ...]
    missing_data: tuple[str, ...]


class ScorePart(NamedTuple):  # tuples: built thousands of times a second
    name: str
    points: int
    explanation: Text


@dataclass(frozen=True)
class Decision:
    decisions: tuple[ProgrammeDecision, ...]
    priority_total: int
    priority_parts: tuple[ScorePart, ...]

    def outcomes(self) -> dict[str, Outcome]:
        return {d.programme_id: d.outcome for d in self.decisions}


# --- evaluation ------------------------------------------------------------------------


def condition_values(
    rule_set: RuleSet, facts: Mapping[str, Any], day: date
) -> tuple[_PeriodContext, frozenset[str], Iterator[Any]]:
    """The period's context, the optional facts absent, and the values of every
    evaluable condition then every score component, in order (as `evaluate` reads them)."""
    period = rule_set.context_at(day)
    period.bind(facts)
    absent = frozenset(name for name in rule_set.optional_facts if name not in facts)
    return period, absent, _values(rule_set.combined(absent), period.cel, len(rule_set.priority))


class _Shown(dict[str, str]):
    """`evaluate`'s display strings of the facts and parameters (a rule's inputs), made
    on demand."""

    def __init__(self, facts: Mapping[str, Any], shown_params: Mapping[str, str]) -> None:
        super().__init__()
        self.facts = facts
        self.shown_params = shown_params

    def __missing__(self, name: str) -> str:
        if name in self.shown_params:
            return self.shown_params[name]
        value = self[name] = _display(self.facts[name])
        return value


_NOT_RECORDED = {"en": "not recorded", "az": "qeyd olunmayıb"}


class _Said(dict[str, str]):
    """How an explanation in one language says the facts and parameters, made on
    demand: money in manat, a district by its name, a fact not recorded as such."""

    def __init__(
        self,
        facts: Mapping[str, Any],
        period: _PeriodContext,
        kinds: Mapping[str, str | None],
        language: str,
    ) -> None:
        super().__init__(period.said_params[language])  # parameters first, as said
        self.facts = facts
        self.kinds = kinds
        self.language = language

    def __missing__(self, name: str) -> str:
        if name in self.facts:
            value = _said(self.facts[name], self.kinds.get(name), self.language)
        else:  # an optional fact the survivor's record lacks
            value = _NOT_RECORDED[self.language]
        self[name] = value
        return value


def _render(
    text: Text, facts: Mapping[str, Any], period: _PeriodContext, kinds: Mapping[str, str | None]
) -> Text:
    return text.render(_Said(facts, period, kinds, "en"), _Said(facts, period, kinds, "az"))


def rule_result(
    rule_set: RuleSet,
    rule: Rule,
    passed: bool,
    missing: tuple[str, ...],
    facts: Mapping[str, Any],
    period: _PeriodContext,
) -> RuleResult:
    """One rule's result exactly as `evaluate` builds it."""
    shown = _Shown(facts, period.shown_params)
    inputs = {name: shown[name] for name in rule.reads if name in facts}
    inputs.update({f"params.{n}": period.shown_params[n] for n in rule.params_read})
    template = rule.explain_pass if passed and not missing else rule.explain_fail
    return RuleResult(
        rule.id,
        passed and not missing,
        missing,
        inputs,
        _render(template, facts, period, rule_set.kinds),
    )


def score_part(
    rule_set: RuleSet,
    component: ScoreComponent,
    points: int,
    facts: Mapping[str, Any],
    period: _PeriodContext,
) -> ScorePart:
    """One score component exactly as `evaluate` builds it."""
    return ScorePart(
        component.name, points, _render(component.explanation, facts, period, rule_set.kinds)
    )


def evaluate(rule_set: RuleSet, facts: Mapping[str, Any], day: date) -> Decision:
    """Decide every programme for one survivor's facts, as of `day`. Raises NotInForce
    for a day the rules cannot decide on (`RuleSet.not_in_force`)."""
    period = rule_set.context_at(day)
    shown_params = period.shown_params
    period.bind(facts)
    absent = frozenset(name for name in rule_set.optional_facts if name not in facts)
    values = _values(rule_set.combined(absent), period.cel, len(rule_set.priority))
    shown = {name: _display(value) for name, value in facts.items()}
    shown.update(shown_params)
    en = _Said(facts, period, rule_set.kinds, "en")
    az = _Said(facts, period, rule_set.kinds, "az")
    results: dict[str, RuleResult] = {}
    for rule in rule_set.rules:
        inputs = {name: shown[name] for name in rule.reads if name in facts}
        inputs.update({f"params.{n}": shown_params[n] for n in rule.params_read})
        missing = tuple(name for name in rule.needs if name in absent)
        if missing:
            explanation = rule.explain_fail.render(en, az)
            results[rule.id] = RuleResult(rule.id, False, missing, inputs, explanation)
            continue
        passed: bool = next(values)
        template = rule.explain_pass if passed else rule.explain_fail
        results[rule.id] = RuleResult(rule.id, passed, (), inputs, template.render(en, az))
    decisions = tuple(
        _decide(programme_id, own, results) for programme_id, own in rule_set.by_programme.items()
    )
    parts = tuple(
        ScorePart(c.name, next(values), c.explanation.render(en, az)) for c in rule_set.priority
    )
    return Decision(decisions, sum(p.points for p in parts), parts)


def _decide(
    programme_id: str, rules: Iterable[Rule], results: Mapping[str, RuleResult]
) -> ProgrammeDecision:
    own = [(rule, results[rule.id]) for rule in rules]
    missing = tuple(sorted({m for _, r in own for m in r.missing}))
    if any(rule.effect == "require" and not r.passed and not r.missing for rule, r in own):
        outcome: Outcome = "NOT_ELIGIBLE"
    elif missing or any(not r.passed for _, r in own):
        outcome = "NEEDS_REVIEW"
    else:
        outcome = "ELIGIBLE"
    return ProgrammeDecision(programme_id, outcome, tuple(r for _, r in own), missing)


# --- loading and checking --------------------------------------------------------------


# A number YAML 1.1 reads in another base: 030000 as octal (12,288), 0x12, 0b11.
_OTHER_BASE = re.compile(r"^[-+]?(?:0[0-9_]+|0[xX][0-9a-fA-F_]+|0[bB][01_]+|0o[0-7_]+)$")
_OTHER_BASE_TAG = "tag:mineaction.az,2026:other-base"
_BASE_10_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")


def _base_10_only() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    """SafeLoader's implicit types without YAML 1.1's base-60 numbers (`1:30` as 90): a
    long run of them (`1:1:1:...`) takes seconds to convert, and a rule set has no use
    for them; such a scalar stays text. Nor its octal, hex and binary whole numbers: a
    value written 030000 was read as 12,288 qəpik; such a scalar is refused where it
    stands (_OTHER_BASE)."""
    sexagesimal = (
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
    )
    resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = []
        for tag, pattern in pairs:
            if tag == "tag:yaml.org,2002:int":
                kept.append((tag, _BASE_10_INT))
                continue
            source = pattern.pattern
            for alternative in sexagesimal:
                source = source.replace(alternative, "")
            kept.append((tag, re.compile(source, pattern.flags)))
        resolvers[first] = kept
    for first in "-+0":
        resolvers.setdefault(first, []).append((_OTHER_BASE_TAG, _OTHER_BASE))
    return resolvers


class _MarkedSafeLoader(yaml.SafeLoader):
    """SafeLoader whose values that cannot be read (a date of 2026-02-30, a 5,000-digit
    integer) are refused at their line and column, like any other YAML error."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as error:
            problem = f"cannot be read: {_first_line(error)[:200]}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


class _RuleSetYaml(_MarkedSafeLoader):
    """YAML as a rule set may be written: no aliases (`*name`). A few hundred bytes of
    aliases to aliases stand for billions of nodes, and every check that walks the
    document (positions, types, the comparison with the published version) would walk
    them all, holding the service for minutes. Nothing in a rule set needs them."""

    yaml_implicit_resolvers = _base_10_only()

    def construct_other_base(self, node: yaml.Node) -> Any:
        message = (
            f"{node.value} is not a number in base 10: write it without a leading zero, "
            "0x or 0b (YAML would read it in another base: 030000 as 12288)"
        )
        raise yaml.constructor.ConstructorError(None, None, message, node.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A key given twice is refused where it is given again: YAML would keep the
        last one silently (an `expression` written twice decides by the second)."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                message = f"{key!r} is given twice in this mapping"
                raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            message = "aliases (*name) are not allowed in a rule set"
            raise yaml.composer.ComposerError(None, None, message, mark)
        return super().compose_node(parent, index)


_RuleSetYaml.add_constructor(_OTHER_BASE_TAG, _RuleSetYaml.construct_other_base)


def parse_yaml(source: str, *, published: bool = False) -> Any:
    """A rule set's YAML as data: yaml.YAMLError when it is not YAML, or (unless it is a
    version published already, read as it was accepted then) uses aliases, or holds a
    number or a nesting too large to read."""
    loader = _MarkedSafeLoader if published else _RuleSetYaml  # safe: no arbitrary objects
    try:
        return yaml.load(source, Loader=loader)
    except RecursionError:  # [[[[...
        raise yaml.YAMLError("cannot be read: nested too deeply") from None


class _Positions:
    """Maps a path like rules[2].expression to its line and column in the YAML."""

    def __init__(self, source: str) -> None:
        self.marks: dict[str, tuple[int, int]] = {}
        try:
            root = yaml.compose(source, Loader=_RuleSetYaml)
        except (yaml.YAMLError, ValueError, RecursionError):  # said by the load itself
            root = None
        if root is not None:
            self._walk(root, "")

    def _walk(self, node: yaml.Node, path: str) -> None:
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = f"{path}.{key.value}" if path else str(key.value)
                self._walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, f"{path}[{index}]")

    def problem(self, path: str, message: str) -> Problem:
        """Where `path` is; for something missing (a rule without `explain`), where the
        nearest thing holding it is."""
        where = path
        while where and where not in self.marks:
            # One step up; a top-level key (no dot or index left) is held by the root.
            parent = _PARENT.sub("", where)
            where = parent if parent != where else ""
        line, column = self.marks.get(where, (0, 0))
        return Problem(path, message, line, column)


class _Loader:
    def __init__(self, source: str, published: bool = False) -> None:
        # A version published already is read as it was accepted then: checks added
        # since do not make it unreadable.
        self.published = published
        self.source = source
        self.positions = _Positions(source)
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(self.positions.problem(path, message))

    def get(
        self, data: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...]
    ) -> Any:
        value = data.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            self.fail(f"{path}.{key}" if path else key, f"{key} is required ({_names(kind)})")
            return None
        return value

    def text(self, data: Any, path: str) -> Text:
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) and data.get(k) for k in ("en", "az")
        ):
            self.fail(path, "needs both en and az text")
            return Text("", "")
        for language in ("en", "az"):
            self.shown(data[language], f"{path}.{language}")
        return Text(data["en"], data["az"])

    def shown(self, value: str, path: str) -> None:
        """Text a survivor or staff read: not blank (only spaces, " " passed as an
        explanation) and without control or invisible formatting characters (a NUL, a
        right-to-left override turning the sentence around). Line breaks are text."""
        if self.published:
            return
        if not visible(value):
            self.fail(path, "must not be blank: not only spaces or invisible characters")
        elif has_control_or_format(value.replace("\n", "")):
            self.fail(path, "must not contain control or invisible formatting characters")

    def compile(self, expression: Any, path: str) -> Any:
        if not isinstance(expression, str) or not expression.strip():
            self.fail(path, "expression is required")
            return None
        # Versions published already were evaluated whole when published, and stay readable.
        if len(expression) > MAX_EXPRESSION_LENGTH and not self.published:
            self.fail(
                path,
                f"is {len(expression)} characters long; at most {MAX_EXPRESSION_LENGTH} "
                "(split it into several rules)",
            )
            return None
        try:
            return cel.compile(expression)
        except ValueError as error:
            self.fail(path, f"does not compile: {_first_line(error)}")
            return None


def _is_day(value: Any) -> TypeGuard[date]:
    """A date as 2026-11-01, not a time of day (2026-11-01 00:00:00 reads as a datetime,
    which is a date too, and cannot be compared with one)."""
    return type(value) is date


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    names = {"str": "text", "dict": "a mapping", "list": "a list", "int": "a whole number"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in _kinds(kind))


def _first_line(error: Exception) -> str:
    text = str(error)
    detail = text.split("ERROR: <input>:", 1)
    return detail[1].splitlines()[0].strip() if len(detail) > 1 else text.splitlines()[0]


def load(source: str, *, published: bool = False) -> RuleSet:
    """Parse and check a rule set; raise RuleSetError listing every problem found.

    `published` loads a version already published: the checks added since it was
    published (a parameter without a value on some day, a test case before the rules'
    first day) do not make it unreadable; the days it cannot decide on are refused when
    an assessment asks for one (`RuleSet.not_in_force`)."""
    loader = _Loader(source, published)
    try:
        data = parse_yaml(source, published=published)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = getattr(error, "problem", None) or str(error)
        raise RuleSetError([Problem("(document)", f"bad YAML: {problem}", line, column)]) from None
    if not isinstance(data, dict):
        raise RuleSetError([Problem("(document)", "a rule set must be a YAML mapping")])

    rule_set_id = loader.get(data, "rule_set_id", "", str) or ""
    if rule_set_id and not _ID.match(rule_set_id):
        loader.fail("rule_set_id", "must be lower-case letters, digits and _")
    places: dict[str, list[int]] = {}
    parameters = _load_parameters(loader, data.get("parameters"), places)
    if not published:  # checks added since: versions published before stay readable
        _check_coverage(loader, parameters, places)
        _check_values_of_kind(loader, parameters, places)
    amounts = [n for n, kind in FACT_KINDS.items() if kind == MONEY] + [
        n for n, p in parameters.items() if p.kind == MONEY
    ]
    programmes = {
        pid: loader.text(name, f"programmes.{pid}")
        for pid, name in (loader.get(data, "programmes", "", dict) or {}).items()
    }
    for pid in programmes:
        if not _ID.match(str(pid)):
            loader.fail(f"programmes.{pid}", "programme id must be lower-case letters, digits, _")
    rules = _load_rules(loader, data.get("rules"), programmes, parameters, amounts)
    priority = _load_priority(loader, data.get("priority"), parameters, amounts)
    first_day = min((p.periods[0].start for p in parameters.values()), default=None)
    tests = _load_tests(loader, data.get("tests", []), programmes, None if published else first_day)
    if loader.problems:
        raise RuleSetError(loader.problems)
    rule_set = RuleSet(
        rule_set_id=rule_set_id,
        description=str(data.get("description", "")),
        parameters=parameters,
        programmes=programmes,
        rules=tuple(rules),
        priority=tuple(priority),
        tests=tuple(tests),
        source=source,
        by_programme={pid: tuple(r for r in rules if pid in r.programmes) for pid in programmes},
    )
    _check_placeholders(loader, rule_set)
    _type_check(loader, rule_set)
    if not published:  # a check added since: versions published before stay readable
        _check_records_lacking(loader, rule_set)
    if loader.problems:
        raise RuleSetError(loader.problems)
    return rule_set


def _load_parameters(
    loader: _Loader, raw: Any, places: dict[str, list[int]]
) -> dict[str, Parameter]:
    """The parameters; `places` gets, for each one whose values are well formed, where
    its values are in the YAML, in date order."""
    if not isinstance(raw, dict):
        loader.fail("parameters", "parameters is required (a mapping)")
        return {}
    parameters = {}
    for name, spec in raw.items():
        path = f"parameters.{name}"
        if not isinstance(spec, dict):
            loader.fail(path, "must be a mapping with unit, policy_ref and values")
            continue
        unit = loader.get(spec, "unit", path, str)
        policy_ref = loader.get(spec, "policy_ref", path, str)
        for key, value in (("unit", unit), ("policy_ref", policy_ref)):
            if value is not None:  # a blank one dropped the parameter without a word
                loader.shown(value, f"{path}.{key}")
        before = len(loader.problems)
        periods: list[tuple[int, Period]] = []  # with each value's place in the YAML
        for index, entry in enumerate(loader.get(spec, "values", path, list) or []):
            where = f"{path}.values[{index}]"
            if not isinstance(entry, dict) or "value" not in entry:
                loader.fail(where, "each value needs from and value")
                continue
            if entry["value"] is None and not loader.published:
                # Nothing to type-check at load: it failed at every assessment instead.
                loader.fail(f"{where}.value", "value is required: null is no value")
                continue
            start, end = entry.get("from"), entry.get("until")
            if not _is_day(start) or (end is not None and not _is_day(end)):
                loader.fail(where, "from (and until, if given) must be dates like 2026-01-01")
                continue
            if end is not None and end <= start:
                loader.fail(where, "until must be after from")
                continue
            periods.append((index, Period(start, end, entry["value"])))
        periods.sort(key=lambda p: p[1].start)
        for (first, earlier), (second, later) in itertools.pairwise(periods):
            if earlier.start == later.start or (
                earlier.end is not None and earlier.end > later.start
            ):
                loader.fail(
                    f"{path}.values[{second}]",
                    f"effective dates overlap: values[{second}] from {later.start} and "
                    f"values[{first}] from {earlier.start}"
                    + (f" until {earlier.end}" if earlier.end else ""),
                )
        if unit and policy_ref and periods:
            parameters[str(name)] = Parameter(
                str(name), unit, policy_ref, tuple(p for _, p in periods)
            )
            if len(loader.problems) == before:
                places[str(name)] = [index for index, _ in periods]
    return parameters


def _check_values_of_kind(
    loader: _Loader, parameters: Mapping[str, Parameter], places: Mapping[str, list[int]]
) -> None:
    """A parameter in qəpik holds whole, non-negative amounts: a ceiling of -30000 (or
    300.00) would decide every survivor by a figure no policy document can give. One of
    district codes holds the programme's districts (services/common/districts.yaml): a
    misspelt one (`ganca`) would leave that district's survivors out, unnoticed."""
    districts = known_districts()
    for name, parameter in parameters.items():
        if parameter.kind not in (MONEY, DISTRICT) or name not in places:
            continue
        for index, period in zip(places[name], parameter.periods, strict=True):
            value, where = period.value, f"parameters.{name}.values[{index}].value"
            if parameter.kind == MONEY and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                loader.fail(
                    where,
                    f"parameter {name} is an amount in qəpik: a whole number, not negative "
                    f"(got {value!r})",
                )
            if parameter.kind == DISTRICT:
                codes = value if isinstance(value, list) else [value]
                for code in codes:
                    if not isinstance(code, str) or code not in districts:
                        loader.fail(
                            where,
                            f"unknown district {code!r} in {name}: district codes are those "
                            "of services/common/districts.yaml",
                        )


def _check_coverage(
    loader: _Loader, parameters: Mapping[str, Parameter], places: Mapping[str, list[int]]
) -> None:
    """Every parameter has a value in force on every day from the rule set's first day
    on: its first value starts that day, each value runs until the next one starts, and
    the last runs on (no `until`). Otherwise an assessment on a day without a value
    could not be decided."""
    first = min((p.periods[0].start for p in parameters.values()), default=None)
    for name, parameter in parameters.items():
        if name not in places:  # its values are refused already
            continue
        where = [f"parameters.{name}.values[{index}]" for index in places[name]]
        periods = parameter.periods
        if first is not None and periods[0].start > first:
            loader.fail(
                where[0],
                f"parameter {name} has no value in force on {first}, when the rule set's "
                f"other values start; its first value starts on {periods[0].start}",
            )
        for index, (earlier, later) in enumerate(itertools.pairwise(periods)):
            if earlier.end is not None and earlier.end < later.start:
                loader.fail(
                    where[index],
                    f"parameter {name} has no value in force from {earlier.end} until "
                    f"{later.start}",
                )
        if periods[-1].end is not None:
            loader.fail(
                where[-1],
                f"parameter {name} has no value in force from {periods[-1].end}: leave out "
                "until on its last value (it stays in force until a later value starts)",
            )


def _load_rules(
    loader: _Loader,
    raw: Any,
    programmes: Mapping[str, Text],
    parameters: Mapping[str, Parameter],
    amounts: list[str],
) -> list[Rule]:
    if not isinstance(raw, list) or not raw:
        loader.fail("rules", "rules is required (a non-empty list)")
        return []
    rules, seen = [], set()
    decided: set[str] = set()
    for index, spec in enumerate(raw):
        path = f"rules[{index}]"
        if not isinstance(spec, dict):
            loader.fail(path, "each rule must be a mapping")
            continue
        rule_id = loader.get(spec, "id", path, str)
        if rule_id in seen:
            loader.fail(f"{path}.id", f"duplicate rule id {rule_id}")
        seen.add(rule_id)
        if isinstance(rule_id, str) and not _ID.match(rule_id) and not loader.published:
            # An empty id dropped the rule silently, and with it a condition of the loan.
            loader.fail(f"{path}.id", f"rule id {rule_id!r}: lower-case letters, digits and _")
        targets = loader.get(spec, "programmes", path, list) or []
        decided.update(target for target in targets if isinstance(target, str))
        if not targets and not loader.published:
            loader.fail(f"{path}.programmes", "a rule decides at least one programme")
        for target in targets:
            if target not in programmes:
                loader.fail(f"{path}.programmes", f"unknown programme {target}")
        effect = spec.get("effect", "require")
        if effect not in ("require", "review"):
            loader.fail(f"{path}.effect", "effect must be require or review")
        expression = spec.get("expression")
        program = loader.compile(expression, f"{path}.expression")
        needs = spec.get("needs", [])
        if not isinstance(needs, list) and not loader.published:
            # A single name (`needs: self_care`) was read letter by letter; a version
            # published so is read as it decided then.
            loader.fail(f"{path}.needs", "needs is a list of facts, e.g. [self_care]")
            needs = []
        for need in needs if isinstance(needs, list) else []:
            if need not in FACT_SAMPLES:
                loader.fail(f"{path}.needs", f"unknown fact {need}")
        explain = spec.get("explain") or {}
        explain_pass = loader.text(explain.get("pass"), f"{path}.explain.pass")
        explain_fail = loader.text(explain.get("fail"), f"{path}.explain.fail")
        explain_pass = explain_pass.without_unit_words(amounts)
        explain_fail = explain_fail.without_unit_words(amounts)
        if program is None or not rule_id or not isinstance(expression, str):
            continue
        reads, params_read = _references(
            loader, program, expression, parameters, f"{path}.expression"
        )
        rules.append(
            Rule(
                rule_id,
                tuple(targets),
                effect,
                expression,
                program,
                tuple(needs),
                reads,
                params_read,
                explain_pass,
                explain_fail,
            )
        )
    for programme in programmes:
        if programme not in decided and not loader.published:
            # Nothing would refuse it: every survivor came out eligible.
            loader.fail(f"programmes.{programme}", f"no rule decides programme {programme}")
    return rules


def _references(
    loader: _Loader, program: Any, expression: str, parameters: Mapping[str, Any], path: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The facts and the parameters an expression reads, each known (in every branch:
    the type check evaluates only the branches the sample facts take)."""
    bound = set(_MACRO_VARIABLE.findall(expression))
    for name in sorted(bound & (set(FACT_SAMPLES) | {"params"})):
        loader.fail(path, f"the macro's variable {name} is a fact's name too: name it otherwise")
    reads = tuple(v for v in program.references()["variables"] if v != "params" and v not in bound)
    for name in reads:
        if name not in FACT_SAMPLES:
            loader.fail(path, f"unknown fact {name}")
    params_read = tuple(dict.fromkeys(_PARAM_REF.findall(expression)))
    for name in params_read:
        if name not in parameters:
            loader.fail(path, f"unknown parameter {name}")
    return reads, params_read


def _load_priority(
    loader: _Loader, raw: Any, parameters: Mapping[str, Any], amounts: list[str]
) -> list[ScoreComponent]:
    components = []
    spec_list = (raw or {}).get("components", []) if isinstance(raw, dict) else None
    if not isinstance(spec_list, list):
        loader.fail("priority", "priority needs a list of components")
        return []
    names: set[str] = set()
    for index, spec in enumerate(spec_list):
        path = f"priority.components[{index}]"
        name = loader.get(spec, "name", path, str) if isinstance(spec, dict) else None
        if name is None:
            continue
        if name in names and not loader.published:
            loader.fail(f"{path}.name", f"duplicate score component {name}")
        names.add(name)
        program = loader.compile(spec.get("points"), f"{path}.points")
        text = loader.text(spec.get("explain"), f"{path}.explain").without_unit_words(amounts)
        if program is not None:
            _references(loader, program, spec["points"], parameters, f"{path}.points")
            components.append(ScoreComponent(name, spec["points"], program, text))
    return components


def _load_tests(
    loader: _Loader, raw: Any, programmes: Mapping[str, Text], first_day: date | None
) -> list[TestCase]:
    """The test cases; each must be assessed on or after `first_day` (when given), the
    rules' first day."""
    tests, ids = [], set()
    for index, spec in enumerate(raw if isinstance(raw, list) else []):
        path = f"tests[{index}]"
        if not isinstance(spec, dict):
            loader.fail(path, "each test case must be a mapping")
            continue
        case_id = loader.get(spec, "id", path, str)
        if case_id in ids and not loader.published:
            loader.fail(f"{path}.id", f"duplicate test case {case_id}")
        ids.add(case_id)
        day = spec.get("assessment_date")
        if not _is_day(day):
            loader.fail(f"{path}.assessment_date", "assessment_date must be a date")
        elif first_day is not None and day < first_day:
            loader.fail(
                f"{path}.assessment_date",
                f"{day} is before {first_day}, when the rule set's values start",
            )
        intake = loader.get(spec, "intake", path, dict)
        expect = loader.get(spec, "expect", path, dict) or {}
        for programme_id, outcome in expect.items():
            if programme_id not in programmes:
                loader.fail(f"{path}.expect.{programme_id}", f"unknown programme {programme_id}")
            if outcome not in OUTCOMES:
                loader.fail(f"{path}.expect.{programme_id}", f"outcome must be one of {OUTCOMES}")
        if case_id and _is_day(day) and intake is not None:
            tests.append(TestCase(case_id, day, intake, expect))
    return tests


def _check_placeholders(loader: _Loader, rule_set: RuleSet) -> None:
    """Explanations may name only facts and parameters, as {name}."""
    known = set(FACT_SAMPLES) | set(rule_set.parameters)
    texts = [
        (f"rules[{i}].explain.{kind}", text)
        for i, rule in enumerate(rule_set.rules)
        for kind, text in (("pass", rule.explain_pass), ("fail", rule.explain_fail))
    ] + [
        (f"priority.components[{i}].explain", c.explanation)
        for i, c in enumerate(rule_set.priority)
    ]
    for path, text in texts:
        if not text.well_formed():
            loader.fail(path, "braces may only enclose a fact or parameter name, as {age}")
        for name in sorted(text.placeholders() - known):
            loader.fail(path, f"unknown placeholder {{{name}}}")


def _type_check(loader: _Loader, rule_set: RuleSet) -> None:
    """Evaluate each expression on the sample facts under every parameter period; a
    condition must give a bool and a score component a whole number."""
    days = rule_set.change_dates() or [date.today()]
    for day in days:
        params = rule_set.params_at(day)
        if any(value is None for value in params.values()):
            continue  # a day without some value: _check_coverage says which
        context = cel.Context({**FACT_SAMPLES, "params": params})
        for index, rule in enumerate(rule_set.rules):
            _expect_type(loader, rule.program, context, f"rules[{index}].expression", bool, day)
        for index, component in enumerate(rule_set.priority):
            _expect_type(
                loader, component.program, context, f"priority.components[{index}].points", int, day
            )


def _check_records_lacking(loader: _Loader, rule_set: RuleSet) -> None:
    """Evaluate each expression as for a survivor whose record lacks a fact it may lack
    (a rule whose `needs` name it is not evaluated then): one that reads it anyway would
    fail every such assessment."""
    days = rule_set.change_dates() or [date.today()]
    params = next(
        (p for d in days if None not in (p := rule_set.params_at(d)).values()),
        None,
    )
    if params is None:
        return  # a day without some value: _check_coverage says which
    # An expression the type check refused already is not told to list a fact in needs:
    # it fails for every survivor, not only for one lacking the fact.
    failed = {problem.path for problem in loader.problems}
    for changed, lacking in _RECORDS_LACKING:
        facts = {k: v for k, v in FACT_SAMPLES.items() if k not in lacking} | changed
        context = cel.Context({**facts, "params": params})
        said = ", ".join(lacking) if len(lacking) == 1 else "functioning answers"
        checks: list[tuple[str, Any, str]] = [
            (f"rules[{i}].expression", r.program, "list it in needs")
            for i, r in enumerate(rule_set.rules)
            if not set(r.needs) & set(lacking)
        ] + [
            (f"priority.components[{i}].points", c.program, "read it only when recorded")
            for i, c in enumerate(rule_set.priority)
        ]
        for path, program, advice in checks:
            if path in failed:
                continue
            try:
                program.execute(context)
            except Exception as error:
                failed.add(path)
                loader.fail(
                    path,
                    f"fails for a survivor whose record has no {said}: {advice} "
                    f"({_first_line(error)})",
                )


def _expect_type(
    loader: _Loader, program: Any, context: Any, path: str, kind: type, day: date
) -> None:
    try:
        value = program.execute(context)
    except Exception as error:
        loader.fail(path, f"type error with parameters in force on {day}: {_first_line(error)}")
        return
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        loader.fail(path, f"must give {kind.__name__}, gives {type(value).__name__}")
    elif isinstance(value, int) and not -MAX_POINTS <= value <= MAX_POINTS and not loader.published:
        loader.fail(path, f"gives {value} points; at most {MAX_POINTS} either way")


# --- the programme's own test cases ----------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    failures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return not self.failures


def run_tests(rule_set: RuleSet, facts_of: Any) -> list[CaseResult]:
    """Run the rule set's own cases. `facts_of(intake_dict, day)` turns a case's intake
    into facts (it raises ValueError for an intake the service would refuse)."""
    results = []
    for case in rule_set.tests:
        try:
            facts = facts_of(case.intake, case.assessment_date)
        except ValueError as error:
            results.append(CaseResult(case.id, (f"intake is not valid: {error}",)))
            continue
        try:
            outcomes = evaluate(rule_set, facts, case.assessment_date).outcomes()
        except Exception as error:  # an expression that fails on this intake's facts
            failure = f"the rules cannot decide it: {_first_line(error)}"
            results.append(CaseResult(case.id, (failure,)))
            continue
        failures = tuple(
            f"{programme}: expected {expected}, got {outcomes.get(programme)}"
            for programme, expected in case.expect.items()
            if outcomes.get(programme) != expected
        )
        results.append(CaseResult(case.id, failures))
    return results
