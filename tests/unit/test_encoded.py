"""A response put together from encoded parts is what protobuf itself would send, and
the interceptor chain serves it as it is."""

from __future__ import annotations

import pytest

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from services.common.encoded import Encoded, holding, serializer_passing_encoded, served


@pytest.mark.parametrize("survivors", [0, 1, 20, 5_000])  # lengths of 1, 2 and 3 bytes
def test_a_response_holding_an_encoded_message_is_protobufs_own_encoding(
    survivors: int,
) -> None:
    assessment = pb.Assessment(
        assessment_id="asm-1", survivor_id="srv-" + "x" * survivors, rule_set_version=3
    )
    encoded = holding(pb.GetAssessmentResponse, "assessment", assessment.SerializeToString())
    expected = pb.GetAssessmentResponse(assessment=assessment)
    assert encoded.data == expected.SerializeToString()
    assert encoded.message() == expected


def test_the_chain_serves_an_encoded_response_as_is_and_serializes_any_other() -> None:
    serialize = serializer_passing_encoded(pb.GetAssessmentResponse.SerializeToString)
    assert serialize is not None
    response = pb.GetAssessmentResponse(assessment=pb.Assessment(assessment_id="asm-1"))
    assert serialize(response) == response.SerializeToString()
    # Header then decisions: two encodings of one message, served without a parse.
    parts = (
        pb.Assessment(assessment_id="asm-2").SerializeToString()
        + pb.Assessment(
            decisions=[pb.ProgrammeDecision(programme_id="wheelchair")]
        ).SerializeToString()
    )
    encoded = holding(pb.GetAssessmentResponse, "assessment", parts)
    assert isinstance(encoded, Encoded)
    served = pb.GetAssessmentResponse.FromString(serialize(encoded))
    assert served.assessment.assessment_id == "asm-2"
    assert [d.programme_id for d in served.assessment.decisions] == ["wheelchair"]
    assert serializer_passing_encoded(None) is None


def test_an_encoding_of_another_response_type_is_not_served() -> None:
    encoded = holding(pb.GetAssessmentResponse, "assessment", b"")
    returned: object = served(pb.GetAssessmentResponse, encoded)
    assert returned is encoded
    with pytest.raises(TypeError, match="GetAssessmentResponse served as AssessEligibility"):
        served(pb.AssessEligibilityResponse, encoded)  # type: ignore[misc]


def test_a_page_of_encoded_messages_with_other_fields_is_protobufs_own_encoding() -> None:
    page = [pb.Assessment(assessment_id=f"asm-{n}", rule_set_version=n) for n in range(3)]
    response = pb.ListAssessmentsResponse
    encoded = holding(
        response,
        "assessments",
        *[a.SerializeToString() for a in page],
        rest=response(next_page_token="token-2"),
    )
    expected = response(assessments=page, next_page_token="token-2")
    assert encoded.data == expected.SerializeToString()
    empty = holding(response, "assessments", rest=response(next_page_token=""))
    assert empty.data == b"" and empty.message() == response()
