"""Every declared RPC, fed bad input: INVALID_ARGUMENT with field violations, never
INTERNAL, and not one row written anywhere."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from datetime import date
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory, struct_pb2
from google.protobuf.message import Message

from mineaction.assistance.v1 import assistance_service_pb2
from mineaction.audit.v1 import audit_service_pb2
from mineaction.eligibility.v1 import eligibility_service_pb2
from mineaction.lending.v1 import lending_service_pb2
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common import pagination
from services.common.auth import ROLES, AccessPolicy, Principal
from services.common.errors import violations_in
from services.common.interceptors import bind_actor, shared_validator, violations_of
from tests.conftest import DEFAULT_SUBJECT, Cluster
from tests.factories import pdate, register_request, request_id, saatli_fish_farmer
from tests.grpc_errors import details
from tests.lending_helpers import repayment

SERVICES = {
    "eligibility": eligibility_service_pb2.DESCRIPTOR.services_by_name["EligibilityService"],
    "lending": lending_service_pb2.DESCRIPTOR.services_by_name["LendingService"],
    "assistance": assistance_service_pb2.DESCRIPTOR.services_by_name["AssistanceService"],
}
# Every service process also hosts the audit service; one host is enough here.
AUDIT = audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"]
POLICY = AccessPolicy.load()
CALLER = Principal(DEFAULT_SUBJECT, frozenset(ROLES))


def all_methods() -> Iterator[tuple[str, descriptor.MethodDescriptor]]:
    for name, service in [*SERVICES.items(), ("lending", AUDIT)]:
        for method in service.methods:
            yield name, method


def expected_violations(method: descriptor.MethodDescriptor, request: Message) -> set[str]:
    """What the contract refuses once the server has filled the actor field (an empty
    actor field means the caller)."""
    bound = type(request)()
    bound.CopyFrom(request)
    rule = POLICY.rule(f"/{method.containing_service.full_name}/{method.name}")
    if rule is not None and rule.actor_field:
        bind_actor(bound, rule.actor_field, CALLER)
    return {v.field for v in violations_of(bound, shared_validator())}


def invalid_requests(method: descriptor.MethodDescriptor) -> list[Message]:
    """An empty request, plus the usual mistakes, keeping those the contract refuses."""
    request_class: Any = message_factory.GetMessageClass(method.input_type)
    fields = method.input_type.fields_by_name
    candidates = [request_class()]
    if "page_size" in fields:
        candidates.append(request_class(page_size=-1))
    if "page_token" in fields:
        candidates.append(request_class(page_token="x" * 600))
    if "request_id" in fields:
        candidates.append(request_class(request_id="not-a-uuid"))
    if "district_code" in fields:
        candidates.append(request_class(district_code="Not a district!"))
    return [c for c in candidates if expected_violations(method, c)]


def call(cluster: Cluster, service: str, method: descriptor.MethodDescriptor) -> Any:
    return cluster.channels[service].unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=bytes,
    )


@pytest.mark.parametrize(
    ("service", "method"), list(all_methods()), ids=lambda v: getattr(v, "name", v)
)
async def test_invalid_request_is_refused_with_field_violations(
    cluster: Cluster, service: str, method: descriptor.MethodDescriptor
) -> None:
    requests = invalid_requests(method)
    assert requests, f"{method.name}: the contract accepts even an empty request"
    before = await cluster.row_counts()
    rpc = call(cluster, service, method)
    for request in requests:
        expected = expected_violations(method, request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        info, fields = details(caught.value)
        assert info is not None and info.reason == "INVALID_ARGUMENT"
        assert set(fields) == expected
        # The message names the count and the first five; the rest are in the details.
        message = caught.value.details() or ""
        assert message.startswith(f"{len(fields)} invalid field(s): "), message
        assert message.count(": ") == min(len(fields), 5) + 1, message
        if len(fields) > 5:
            assert message.endswith(f"; {len(fields) - 5} more in the details"), message
    assert await cluster.row_counts() == before


@pytest.mark.parametrize(
    ("service", "method"), list(all_methods()), ids=lambda v: getattr(v, "name", v)
)
async def test_malformed_bytes_are_invalid_argument_not_internal(
    cluster: Cluster, service: str, method: descriptor.MethodDescriptor
) -> None:
    rpc = cluster.channels[service].unary_unary(
        f"/{method.containing_service.full_name}/{method.name}"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(b"\xff\xff\xff\x0fnot protobuf", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fields = details(caught.value)
    assert fields == ["(body)"]


def _forged(key: list[Any], query: Any) -> str:
    """A token as the service would issue it for this query, around a key it never issued."""
    return pagination.encode(key, query)


def _edited(key: list[Any], query: Any) -> str:
    """A genuine token for this query whose key was then changed by hand."""
    payload = json.loads(base64.urlsafe_b64decode(pagination.encode(key, query)))
    payload["k"] = [*key[:-1], "edited"]
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


async def test_edited_or_forged_page_tokens_are_invalid_argument(cluster: Cluster) -> None:
    """A page token is opaque: one edited by hand, or forged with a key of the wrong kind
    (an impossible date, a number beyond the column), is INVALID_ARGUMENT on page_token,
    never INTERNAL."""
    assessments = {"survivor_id": "", "district_code": "", "from": None, "to": None}
    assistance = dict.fromkeys(("survivor_id", "type_id", "state", "district_code", "pool_id"), "")
    needs = dict.fromkeys(("survivor_id", "type_id", "state", "district_code"), "")
    calls = [
        (cluster.eligibility.ListAssessments, eligibility_service_pb2.ListAssessmentsRequest,
         _forged(["2026-13-45", "asm-x"], assessments)),
        (cluster.eligibility.ListAssessments, eligibility_service_pb2.ListAssessmentsRequest,
         _edited(["2026-01-05", "asm-x"], assessments)),
        (cluster.eligibility.ListRuleSets, eligibility_service_pb2.ListRuleSetsRequest,
         _forged(["reintegration", 2**40], {"rule_set_id": ""})),
        (cluster.assistance.ListAssistance, assistance_service_pb2.ListAssistanceRequest,
         _forged([2**70], assistance)),
        (cluster.assistance.ListAssistance, assistance_service_pb2.ListAssistanceRequest,
         _forged(["12"], assistance)),
        (cluster.assistance.ListNeeds, assistance_service_pb2.ListNeedsRequest,
         _forged([2**70], needs)),
        (cluster.assistance.ListNeeds, assistance_service_pb2.ListNeedsRequest,
         _edited([12], needs)),
        (cluster.lending.ListLoans, lending_service_pb2.ListLoansRequest,
         _forged([12], {"survivor_id": "", "state": "", "district": ""})),
        (cluster.lending.ListLoans, lending_service_pb2.ListLoansRequest,
         _forged(["loan-a\x00b"], {"survivor_id": "", "state": "", "district": ""})),
        (cluster.lending.ListLoanProducts, lending_service_pb2.ListLoanProductsRequest,
         _forged(["\ud800"], {})),
    ]  # fmt: skip
    for method, request_class, token in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request_class(page_token=token))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        assert details(refused.value)[1] == ["page_token"]


async def test_a_page_token_issued_before_tokens_covered_their_key_still_pages(
    cluster: Cluster,
) -> None:
    """Tokens issued before a token's digest covered its key (a client paging while the
    service is upgraded) still give the next page."""
    first = await cluster.lending.ListLoanProducts(
        lending_service_pb2.ListLoanProductsRequest(page_size=2)
    )
    payload = json.loads(base64.urlsafe_b64decode(first.next_page_token))
    payload["q"] = pagination._fingerprint({})  # the digest of the query alone
    earlier = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    pages = [
        await cluster.lending.ListLoanProducts(
            lending_service_pb2.ListLoanProductsRequest(page_size=2, page_token=token)
        )
        for token in (first.next_page_token, earlier)
    ]
    assert pages[0].loan_products and pages[0] == pages[1]


def _application(**fields: Any) -> lending_service_pb2.SubmitLoanApplicationRequest:
    request = lending_service_pb2.SubmitLoanApplicationRequest(
        request_id=request_id(),
        survivor_id="srv-nul-0001",
        product_id="small_trade",
        amount_minor=120_000,
        currency_code="AZN",
        district_code="saatli",
        borrower_sex=sex_pb2.SEX_FEMALE,
        borrower_age_band=age_band_pb2.AGE_BAND_35_59,
        purpose="a stall at the market",
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


# A NaN (exponent all ones, mantissa not zero) none of whose eight bytes is zero.
NAN_WITHOUT_A_ZERO_BYTE = struct.unpack("<d", bytes([0x11] * 6 + [0xF1, 0x7F]))[0]


def _data(**values: Any) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(values)
    return data


async def test_values_postgresql_cannot_store_are_invalid_argument_on_their_field(
    cluster: Cluster,
) -> None:
    """A NUL character in any text (free text, an id, a map key) and a number that is not
    finite pass every field's own rules, and failed as INTERNAL at the insert: now refused
    on their field, nothing written, and the refusal still audited."""
    intake = saatli_fish_farmer()
    intake.injuries.append("leg\x00")
    cases: list[tuple[Any, Message, str, str]] = [
        (cluster.lending.SubmitLoanApplication, _application(purpose="ab\x00cd"), "purpose",
         "string.no_nul"),
        # An escape sequence in free text reached staff terminals: the screen cleared, a
        # line forged in a statement.
        (cluster.lending.ReverseRepayment,
         lending_service_pb2.ReverseRepaymentRequest(
             request_id=request_id(), loan_id="loan-0001", transaction_id="txn-0001",
             reason="bounced\x1b[2J\x1b[31m\r\nFAKE LINE", reversed_by="acc-07"),
         "reason", "string.no_control"),
        (cluster.lending.SubmitLoanApplication, _application(purpose="loom\x07\x9b31m"),
         "purpose", "string.no_control"),
        (cluster.assistance.AdvanceAssistance,
         assistance_service_pb2.AdvanceAssistanceRequest(
             request_id=request_id(), assistance_id="asst-0001", action="deliver",
             data=_data(note="left at the door\x08\x08\x08")),
         "data.note", "string.no_control"),
        (cluster.eligibility.RegisterSurvivor, register_request(intake),
         f"intake.injuries[{len(intake.injuries) - 1}]", "string.no_nul"),
        (cluster.assistance.RequestAssistance,
         assistance_service_pb2.RequestAssistanceRequest(
             request_id=request_id(), need_id="need-0001", provider_id="baku-mobility-aids",
             data=_data(seat_width_cm=float("nan")), referral_consent=True),
         "data.seat_width_cm", "double.finite"),
        (cluster.assistance.RequestAssistance,  # a NaN whose eight bytes hold no zero
         assistance_service_pb2.RequestAssistanceRequest(
             request_id=request_id(), need_id="need-0001", provider_id="baku-mobility-aids",
             data=_data(seat_width_cm=44.3, note=NAN_WITHOUT_A_ZERO_BYTE),
             referral_consent=True),
         "data.note", "double.finite"),
        (cluster.assistance.AdvanceAssistance,
         assistance_service_pb2.AdvanceAssistanceRequest(
             request_id=request_id(), assistance_id="asst-0001", action="allocate_from_stock",
             data=_data(**{"a\x00b": 1, "note": "fine", "far": float("inf")})),
         "data.a\\x00b", "string.no_nul"),
    ]  # fmt: skip
    before = await cluster.row_counts()
    for rpc, request, field, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        _, fields = details(caught.value)
        assert field in fields, (fields, caught.value.details())
        assert reason in {v.reason for v in violations_in(caught.value)}
    assert "data.far" in details(caught.value)[1]  # every such value, not only the first
    assert await cluster.row_counts() == before

    # An id, or the person a service names, holding a NUL is refused by its own rules;
    # the refusal is audited all the same, the NUL spelled out (no text column stores it).
    refused = _application(survivor_id="srv\x00nul", submitted_by="cw\x0001")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.lending.SubmitLoanApplication(refused, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    db = cluster.hosts["lending"].db
    assert db is not None
    entry = await db.pool.fetchrow(
        "SELECT code, resource_ids, on_behalf_of FROM audit_log WHERE request_id = $1",
        refused.request_id,
    )
    assert entry is not None, "the refusal was not audited"
    assert entry["code"] == "INVALID_ARGUMENT"
    assert json.loads(entry["resource_ids"])["survivor_id"] == "srv\\x00nul"
    assert entry["on_behalf_of"] == "cw\\x0001"


async def test_names_and_codes_with_invisible_characters_are_refused(cluster: Cluster) -> None:
    """A zero-width space after a name made it another person to four eyes (the submitter
    approving their own application); a reason of invisible characters, a blank or
    repeated injury code, a blank loan purpose, committee reference, tranche description,
    change note or business sector, and a payment channel with a control character were
    stored as given (a journey whose loan purpose was invisible failed after it started)."""
    approve = lending_service_pb2.ApproveLoanRequest(
        request_id=request_id(),
        loan_id="loan-0001",
        approved_by="cw-01\u200b",
        committee_decision_ref="CM-2026-300",
    )
    intake = saatli_fish_farmer()
    del intake.injuries[:]
    intake.injuries.extend(["lower_limb_amputation", "lower_limb_amputation", " ", "leg\x1b[31m"])
    blank_reason = lending_service_pb2.WithdrawLoanRequest(
        request_id=request_id(), loan_id="loan-0001", withdrawn_by="cw-01", reason="\u200b\u3000"
    )
    unseen = lending_service_pb2.ConfirmLoanWriteOffRequest(
        request_id=request_id(), loan_id="loan-0001", confirmed_by="pm-01", proposed_by=" "
    )
    blank_ref = lending_service_pb2.ApproveLoanRequest(
        request_id=request_id(), loan_id="loan-0001", approved_by="cm-01",
        committee_decision_ref="   ",
    )  # fmt: skip
    blank_goods = lending_service_pb2.DisburseTrancheRequest(
        request_id=request_id(),
        loan_id="loan-0001",
        amount_minor=100,
        currency_code="AZN",
        kind=lending_service_pb2.DISBURSEMENT_KIND_CASH,
        description=" \u200b",
        disbursement_date=pdate(date(2026, 3, 1)),
        disbursed_by="lo-01",
    )
    odd_channel = repayment("loan-0001", 100, date(2026, 3, 1))
    odd_channel.channel = "cash\x01"
    blank_note = eligibility_service_pb2.PublishRuleSetRequest(
        request_id=request_id(), source_yaml="rule_set: x", published_by="pm-01",
        change_note="\u00a0",
    )  # fmt: skip
    no_sector = saatli_fish_farmer()
    no_sector.existing_business.sector = "\t"
    no_sector.existing_business.years_operating = 2
    # A right-to-left override turned the sector around wherever it was shown.
    overridden_sector = saatli_fish_farmer()
    overridden_sector.existing_business.sector = "bee\u202ekeeping"
    overridden_sector.existing_business.years_operating = 2
    before = await cluster.row_counts()
    for rpc, request, expected in (
        (cluster.lending.SubmitLoanApplication, _application(purpose="\u200b "), {"purpose"}),
        (cluster.lending.ApproveLoan, approve, {"approved_by"}),
        (cluster.lending.ApproveLoan, blank_ref, {"committee_decision_ref"}),
        (cluster.lending.DisburseTranche, blank_goods, {"description"}),
        (cluster.lending.RecordRepayment, odd_channel, {"channel"}),
        (cluster.eligibility.PublishRuleSet, blank_note, {"change_note"}),
        (
            cluster.eligibility.RegisterSurvivor,
            register_request(no_sector),
            {"intake.existing_business.sector"},
        ),
        (
            cluster.eligibility.RegisterSurvivor,
            register_request(overridden_sector),
            {"intake.existing_business.sector"},
        ),
        (cluster.lending.WithdrawLoan, blank_reason, {"reason"}),
        (cluster.lending.ConfirmLoanWriteOff, unseen, {"proposed_by"}),
        (
            cluster.eligibility.RegisterSurvivor,
            register_request(intake),
            {"intake.injuries", "intake.injuries[2]", "intake.injuries[3]"},
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert set(details(caught.value)[1]) == expected, caught.value.details()
    assert await cluster.row_counts() == before
