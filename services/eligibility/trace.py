"""An assessment's decisions and priority score as protobuf bytes, fast.

`rules.evaluate` is the reference: it builds every rule result, renders every
explanation and leaves the message to `service.decision_to_proto`. That Python work,
not CEL, was most of an assessment's cost. Here the same results are assembled from
serialized fragments cached per rule-set period: a rule's result (its inputs and its
rendered explanation in both languages) depends only on whether it passed, which of its
`needs` are missing, and the values of the facts it reads or names in its explanations,
and those repeat across survivors. A cache miss builds the fragment with the reference
code itself (`rules.rule_result`), so a fragment is exactly what the reference gives.

Concatenated protobuf encodings of one message type parse as the merge of the messages,
and a repeated field keeps the order of its elements: a programme decision is its header
(id, outcome, missing data) followed by one fragment per rule, each fragment being the
encoding of a ProgrammeDecision holding that one rule result. The only encoding written
here by hand is a length-delimited field (tag, length, bytes) around a whole message.
tests/unit/test_eligibility_rules.py checks the result against the reference on many
generated survivors.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import date
from typing import Any

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.type.v1 import localized_text_pb2
from services.eligibility import rules

OUTCOME = {
    "ELIGIBLE": pb.OUTCOME_ELIGIBLE,
    "NOT_ELIGIBLE": pb.OUTCOME_NOT_ELIGIBLE,
    "NEEDS_REVIEW": pb.OUTCOME_NEEDS_REVIEW,
}
_ABSENT = object()
_serials = itertools.count(1)  # never reused, so a programme's key names its fragments
# A period's fragments are dropped all at once past this many (a bound on memory; the
# next assessments rebuild what they use).
MAX_FRAGMENTS = 200_000


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2): tag, varint length, payload."""
    out = bytearray()
    for value in ((field_number << 3) | 2, len(payload)):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


_DECISIONS = pb.Assessment.DESCRIPTOR.fields_by_name["decisions"].number
_PRIORITY = pb.Assessment.DESCRIPTOR.fields_by_name["priority"].number


def _text(text: rules.Text) -> localized_text_pb2.LocalizedText:
    return localized_text_pb2.LocalizedText(en=text.en, az=text.az)


def rule_result_message(r: rules.RuleResult) -> pb.RuleResult:
    """A rule's result as the API shows it (the reference and the fragments alike)."""
    return pb.RuleResult(
        rule_id=r.rule_id, passed=r.passed, inputs=dict(r.inputs), explanation=_text(r.explanation)
    )


def score_component_message(part: rules.ScorePart) -> pb.ScoreComponent:
    return pb.ScoreComponent(
        name=part.name, points=part.points, explanation=_text(part.explanation)
    )


def _key_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class _Plan:
    """What a rule set's structure fixes, computed once per rule set."""

    def __init__(self, rule_set: rules.RuleSet) -> None:
        index = {rule.id: i for i, rule in enumerate(rule_set.rules)}
        facts = set(rules.FACT_SAMPLES)
        # The facts a rule's result depends on: those it reads, needs, or names; list
        # facts apart, as they key the cache as tuples.
        keys = [
            tuple(dict.fromkeys([*rule.reads, *rule.needs, *_named_facts(rule, facts)]))
            for rule in rule_set.rules
        ]
        self.rules = tuple(
            (
                i,
                rule.needs,
                tuple(n for n in names if not _is_list_fact(n)),
                tuple(n for n in names if _is_list_fact(n)),
            )
            for i, (rule, names) in enumerate(zip(rule_set.rules, keys, strict=True))
        )
        # The facts the score's explanations name.
        self.score_keys = tuple(
            sorted({n for c in rule_set.priority for n in c.explanation.placeholders() & facts})
        )
        self.programmes = tuple(
            (
                programme_id,
                tuple(index[rule.id] for rule in own),
                tuple(rule.effect == "require" for rule in own),
            )
            for programme_id, own in rule_set.by_programme.items()
        )


def _is_list_fact(name: str) -> bool:
    return isinstance(rules.FACT_SAMPLES[name], list)


def _named_facts(rule: rules.Rule, facts: set[str]) -> list[str]:
    return sorted((rule.explain_pass.placeholders() | rule.explain_fail.placeholders()) & facts)


_plans: dict[int, tuple[rules.RuleSet, _Plan]] = {}


def _plan(rule_set: rules.RuleSet) -> _Plan:
    entry = _plans.get(id(rule_set))
    if entry is None or entry[0] is not rule_set:
        entry = _plans[id(rule_set)] = (rule_set, _Plan(rule_set))
    return entry[1]


def assessment_trace(rule_set: rules.RuleSet, facts: Mapping[str, Any], day: date) -> bytes:
    """The `decisions` and `priority` fields of an Assessment, encoded: equal to
    `decision_to_proto(rules.evaluate(rule_set, facts, day))` once parsed."""
    plan = _plan(rule_set)
    period, absent, values = rules.condition_values(rule_set, facts, day)
    cache = period.fragments
    if len(cache) > MAX_FRAGMENTS:
        cache.clear()
    get = facts.get
    absent_values = itertools.repeat(_ABSENT)
    # Per rule: (passed, missing, fragment); and the fragment's serial number.
    results: list[tuple[bool, tuple[str, ...], bytes]] = []
    serials: list[int] = []
    for i, needs, scalar_keys, list_keys in plan.rules:
        missing = tuple(name for name in needs if name in absent) if absent else ()
        passed = False if missing else next(values) is True
        key = (
            i,
            passed,
            missing,
            *map(get, scalar_keys, absent_values),
            *[_key_value(get(n, _ABSENT)) for n in list_keys],
        )
        entry = cache.get(key)
        if entry is None:
            r = rules.rule_result(rule_set.rules[i], passed, missing, facts, period)
            entry = cache[key] = (
                pb.ProgrammeDecision(rule_results=[rule_result_message(r)]).SerializeToString(),
                next(_serials),
            )
        results.append((passed, missing, entry[0]))
        serials.append(entry[1])
    parts = []
    for number, programme in enumerate(plan.programmes):
        indexes = programme[1]
        key = ("programme", number, *[serials[i] for i in indexes])
        entry = cache.get(key)
        if entry is None:
            own = [results[i] for i in indexes]
            entry = cache[key] = (_decision(programme, own), 0)
        parts.append(entry[0])
    points = tuple(int(next(values)) for _ in rule_set.priority)
    key = ("priority", points, *[_key_value(get(n, _ABSENT)) for n in plan.score_keys])
    entry = cache.get(key)
    if entry is None:
        entry = cache[key] = (_priority(rule_set, points, facts, period), 0)
    parts.append(entry[0])
    return b"".join(parts)


def _priority(
    rule_set: rules.RuleSet, points: tuple[int, ...], facts: Mapping[str, Any], period: Any
) -> bytes:
    """The priority score, as `rules.evaluate` makes it, as an Assessment field."""
    score = pb.PriorityScore(total=sum(points))
    for component, value in zip(rule_set.priority, points, strict=True):
        score.components.append(
            score_component_message(rules.score_part(component, value, facts, period))
        )
    return _length_delimited(_PRIORITY, score.SerializeToString())


def _decision(
    programme: tuple[str, tuple[int, ...], tuple[bool, ...]],
    own: list[tuple[bool, tuple[str, ...], bytes]],
) -> bytes:
    """One programme's decision, as `rules._decide` makes it, as an Assessment field."""
    programme_id, _, required = programme
    missing = tuple(sorted({m for _, miss, _ in own for m in miss}))
    refused = zip(required, own, strict=True)
    if any(req and not passed and not miss for req, (passed, miss, _) in refused):
        outcome: rules.Outcome = "NOT_ELIGIBLE"
    elif missing or any(not passed for passed, *_ in own):
        outcome = "NEEDS_REVIEW"
    else:
        outcome = "ELIGIBLE"
    header = pb.ProgrammeDecision(
        programme_id=programme_id, outcome=OUTCOME[outcome], missing_data=list(missing)
    ).SerializeToString()
    return _length_delimited(_DECISIONS, header + b"".join(fragment for _, _, fragment in own))
