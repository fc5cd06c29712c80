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
here by hand is a length-delimited field around a whole message (services/common/encoded.py).
tests/unit/test_eligibility_rules.py checks the result against the reference on many
generated survivors.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.type.v1 import localized_text_pb2
from services.common.encoded import field
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


class _Plan:
    """What a rule set's structure fixes, computed once per rule set."""

    def __init__(self, rule_set: rules.RuleSet) -> None:
        index = {rule.id: i for i, rule in enumerate(rule_set.rules)}
        facts = set(rules.FACT_SAMPLES)
        # Every fact, absent ones as _ABSENT and lists as tuples: what the cache keys read.
        self.blank: dict[str, Any] = dict.fromkeys(rules.FACT_SAMPLES, _ABSENT)
        self.list_facts = tuple(n for n in rules.FACT_SAMPLES if _is_list_fact(n))
        self.rule_set = rule_set
        # Per rule: the facts its result depends on (those it reads, needs, or names),
        # read from the complete facts in one call.
        self.rules = tuple(
            (i, _reader(dict.fromkeys([*rule.reads, *rule.needs, *_named_facts(rule, facts)])))
            for i, rule in enumerate(rule_set.rules)
        )
        # The facts the score's explanations name.
        self.score_key = _reader(
            sorted({n for c in rule_set.priority for n in c.explanation.placeholders() & facts})
        )
        # Per programme: (id, its rules' indexes, which they require), and a reader of
        # its rules' fragment serials.
        self.programmes = tuple(
            (
                (
                    programme_id,
                    tuple(index[rule.id] for rule in own),
                    tuple(rule.effect == "require" for rule in own),
                ),
                _reader(index[rule.id] for rule in own),
            )
            for programme_id, own in rule_set.by_programme.items()
        )
        self._missing: dict[frozenset[str], tuple[tuple[str, ...], ...]] = {}

    def missing(self, absent: frozenset[str]) -> tuple[tuple[str, ...], ...]:
        """Per rule, which of its `needs` are absent (few distinct sets: cached)."""
        found = self._missing.get(absent)
        if found is None:
            found = self._missing[absent] = tuple(
                tuple(name for name in rule.needs if name in absent) for rule in self.rule_set.rules
            )
        return found

    def complete(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        full = self.blank.copy()
        full.update(facts)
        for name in self.list_facts:
            if isinstance(full[name], list):
                full[name] = tuple(full[name])
        return full


def _reader(keys: Iterable[Any]) -> Callable[[Any], Any]:
    """The values at `keys` of a mapping or list, in one call (a constant when there
    are none)."""
    keys = tuple(keys)
    return operator.itemgetter(*keys) if keys else _nothing


def _nothing(_: object) -> tuple[()]:
    return ()


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
    full = plan.complete(facts)
    # Per rule: (passed, missing, fragment); and the fragment's serial number.
    results: list[tuple[bool, tuple[str, ...], bytes]] = []
    serials: list[int] = []
    for (i, read), missing in zip(plan.rules, plan.missing(absent), strict=True):
        passed = False if missing else next(values) is True
        key: tuple[Any, ...] = (i, passed, missing, read(full))
        entry = cache.get(key)
        if entry is None:
            r = rules.rule_result(rule_set, rule_set.rules[i], passed, missing, facts, period)
            entry = cache[key] = (
                pb.ProgrammeDecision(rule_results=[rule_result_message(r)]).SerializeToString(),
                next(_serials),
            )
        results.append((passed, missing, entry[0]))
        serials.append(entry[1])
    parts = []
    for number, (programme, read_serials) in enumerate(plan.programmes):
        key = ("programme", number, read_serials(serials))
        entry = cache.get(key)
        if entry is None:  # a rule's fragment is new; its outcome seldom is
            own = [results[i] for i in programme[1]]
            state = ("header", number, *[(passed, missing) for passed, missing, _ in own])
            header = cache.get(state)
            if header is None:
                header = cache[state] = (_header(programme, own), 0)
            fragments = b"".join([fragment for _, _, fragment in own])
            entry = cache[key] = (field(_DECISIONS, header[0] + fragments), 0)
        parts.append(entry[0])
    points = tuple(map(int, values))  # what is left: the score components, in order
    key = ("priority", points, plan.score_key(full))
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
            score_component_message(rules.score_part(rule_set, component, value, facts, period))
        )
    return field(_PRIORITY, score.SerializeToString())


def _header(
    programme: tuple[str, tuple[int, ...], tuple[bool, ...]],
    own: list[tuple[bool, tuple[str, ...], bytes]],
) -> bytes:
    """One programme's decision as `rules._decide` makes it (id, outcome, missing data),
    encoded without its rule results, which follow it."""
    programme_id, _, required = programme
    missing = tuple(sorted({m for _, miss, _ in own for m in miss}))
    refused = zip(required, own, strict=True)
    if any(req and not passed and not miss for req, (passed, miss, _) in refused):
        outcome: rules.Outcome = "NOT_ELIGIBLE"
    elif missing or any(not passed for passed, *_ in own):
        outcome = "NEEDS_REVIEW"
    else:
        outcome = "ELIGIBLE"
    return pb.ProgrammeDecision(
        programme_id=programme_id, outcome=OUTCOME[outcome], missing_data=list(missing)
    ).SerializeToString()
