"""A list's or report's filter that names nothing the programme has (a misspelt district,
an assistance type or state no plugin declares) is INVALID_ARGUMENT on that field in
every service, as on a write: a monitoring officer's typo used to answer with an empty
list or a report of zeros."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.errors import violations_in
from tests.conftest import Cluster

Call = Callable[[Cluster], Awaitable[Any]]

REFUSED: list[tuple[str, Call, str, str]] = [
    ("ListLoans", lambda c: c.lending.ListLoans(
        lending_pb.ListLoansRequest(district_code="saatly")),
     "district_code", "unknown district 'saatly'"),
    ("ListAssessments", lambda c: c.eligibility.ListAssessments(
        eligibility_pb.ListAssessmentsRequest(district_code="saatly")),
     "district_code", "unknown district 'saatly'"),
    ("GetReachReport", lambda c: c.eligibility.GetReachReport(
        eligibility_pb.GetReachReportRequest(district_code="saatly")),
     "district_code", "unknown district 'saatly'"),
    ("ListNeeds/district", lambda c: c.assistance.ListNeeds(
        assistance_pb.ListNeedsRequest(district_code="saatly")),
     "district_code", "unknown district 'saatly'"),
    ("ListNeeds/type", lambda c: c.assistance.ListNeeds(
        assistance_pb.ListNeedsRequest(type_id="wheelchairs")),
     "type_id", "unknown assistance type 'wheelchairs'"),
    ("ListAssistance/state", lambda c: c.assistance.ListAssistance(
        assistance_pb.ListAssistanceRequest(state="bogus")),
     "state", "unknown state 'bogus': the states are "),
    ("ListAssistance/state of type", lambda c: c.assistance.ListAssistance(
        assistance_pb.ListAssistanceRequest(type_id="wheelchair", state="enrolled")),
     "state", "unknown state 'enrolled' of wheelchair: the states are "),
    ("ListAssistance/district", lambda c: c.assistance.ListAssistance(
        assistance_pb.ListAssistanceRequest(district_code="saatly")),
     "district_code", "unknown district 'saatly'"),
    ("ListProviders/district", lambda c: c.assistance.ListProviders(
        assistance_pb.ListProvidersRequest(district_code="saatly")),
     "district_code", "unknown district 'saatly'"),
    ("ListProviders/type", lambda c: c.assistance.ListProviders(
        assistance_pb.ListProvidersRequest(type_id="wheelchairs")),
     "type_id", "unknown assistance type 'wheelchairs'"),
]  # fmt: skip


@pytest.mark.parametrize(("rpc", "call", "field", "says"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_a_filter_naming_nothing_known_is_invalid_argument(
    cluster: Cluster, rpc: str, call: Call, field: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(cluster)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
    found = {v.field: v.description for v in violations_in(refused.value)}
    assert found[field].startswith(says), found


async def test_known_filters_still_list(cluster: Cluster) -> None:
    """The same filters with names the programme has answer as before."""
    await cluster.lending.ListLoans(lending_pb.ListLoansRequest(district_code="saatli"))
    await cluster.eligibility.GetReachReport(
        eligibility_pb.GetReachReportRequest(district_code="saatli")
    )
    await cluster.assistance.ListNeeds(
        assistance_pb.ListNeedsRequest(district_code="saatli", type_id="wheelchair")
    )
    await cluster.assistance.ListAssistance(
        assistance_pb.ListAssistanceRequest(type_id="wheelchair", state="waitlisted")
    )
    await cluster.assistance.ListAssistance(assistance_pb.ListAssistanceRequest(state="enrolled"))
    await cluster.assistance.ListProviders(
        assistance_pb.ListProvidersRequest(district_code="saatli", type_id="english_course")
    )
