"""What a caller chose (ids, map keys, a trace header) reaches the logs, the audit log and
error messages only short: a value of megabytes, or a name put in an id, was kept as
written."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from services.assistance.plugins.builtin import WHEELCHAIR
from services.assistance.records import check_data
from services.common.errors import InvalidArgument
from services.common.storable import kept, kept_request_id, kept_trace_id, unstorable_values


def test_ids_are_kept_as_given_when_they_are_ids_and_described_otherwise() -> None:
    uuid = "8c1f6a52-0d2c-4d0e-9a1e-000000000005"
    assert kept_request_id(uuid) == uuid
    assert kept_request_id("Leyla Mammadova 1977-03-29") == "(not a UUID: 26 characters)"
    assert kept_trace_id("trace-01:ab.c_d") == "trace-01:ab.c_d"
    assert kept_trace_id("Leyla Mammadova") == "(not an id: 15 characters)"
    assert kept("L" * 100) == "L" * 64 + "… (100 characters)"
    assert kept("a\x00b") == "a\\x00b"


def test_a_long_key_in_data_is_cut_in_the_refusal() -> None:
    data = struct_pb2.Struct()
    data.update({"k" * 100_000 + "\x00": 1})
    request = pb.AdvanceAssistanceRequest(data=data)
    [violation] = unstorable_values(request)
    assert len(violation.field) < 120, violation.field
    deliver = WHEELCHAIR.transition_for("deliver")
    assert deliver is not None
    validator = WHEELCHAIR.action_validator(deliver)
    given = {"serial_number": "S-1", "fitted_by": "pt"}
    with pytest.raises(InvalidArgument) as refused:
        check_data(validator, {**given, "n" * 100_000: 1})
    assert len(str(refused.value)) < 500, len(str(refused.value))
    with pytest.raises(InvalidArgument) as refused:
        check_data(validator, given | {f"k{n:05}": n for n in range(50_000)})
    assert "k00000, k00001, k00002, k00003, k00004 and 49995 more" in str(refused.value)
    assert len(str(refused.value)) < 500, len(str(refused.value))
