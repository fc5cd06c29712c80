"""A rule across fields is reported on the field to correct (a pause ending before it
starts names end_date, not the request)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from datetime import date

from google.protobuf.descriptor import Descriptor

import mineaction
from buf.validate import validate_pb2
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.interceptors import CROSS_FIELD_RULES, shared_validator, violations_of
from tests.factories import pdate


def _messages() -> Iterator[Descriptor]:
    def nested(message: Descriptor) -> Iterator[Descriptor]:
        yield message
        for inner in message.nested_types:
            yield from nested(inner)

    for info in pkgutil.walk_packages(mineaction.__path__, "mineaction."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            for message in module.DESCRIPTOR.message_types_by_name.values():
                yield from nested(message)


def test_every_rule_across_fields_names_a_field_of_its_message() -> None:
    found = {}
    for message in _messages():
        for rule in message.GetOptions().Extensions[validate_pb2.message].cel:
            found[rule.id] = message
    assert found, "no message-level rule found: the walk is broken"
    assert set(found) == set(CROSS_FIELD_RULES)
    for rule_id, message in found.items():
        assert CROSS_FIELD_RULES[rule_id] in message.fields_by_name, rule_id


def test_a_pause_that_ends_before_it_starts_is_reported_on_its_end_date() -> None:
    request = lending_pb.PauseDelinquencyRequest(
        request_id="8c1f6a52-0d2c-4d0e-9a1e-000000000005",
        loan_id="loan-0001",
        start_date=pdate(date(2026, 5, 10)),
        end_date=pdate(date(2026, 5, 1)),
        reason="hospitalised",
        requested_by="cw-01",
    )
    [violation] = violations_of(request, shared_validator())
    assert (violation.field, violation.reason) == ("end_date", "pause_delinquency.date_range")


def test_a_pause_without_an_end_date_is_told_only_that_it_needs_one() -> None:
    """It was also told its end "must not be before start_date": an end it never gave."""
    request = lending_pb.PauseDelinquencyRequest(
        request_id="8c1f6a52-0d2c-4d0e-9a1e-000000000005",
        loan_id="loan-0001",
        start_date=pdate(date(2026, 5, 10)),
        reason="hospitalised",
        requested_by="cw-01",
    )
    [violation] = violations_of(request, shared_validator())
    assert (violation.field, violation.description) == ("end_date", "value is required")
