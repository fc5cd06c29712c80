"""Security over real gRPC: authentication with bearer JWTs, the role x RPC policy for
every RPC and every role, four eyes by identity, and the append-only audit log."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
import pytest_asyncio
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mineaction.assistance.v1 import assistance_service_pb2
from mineaction.audit.v1 import audit_service_pb2 as audit_pb
from mineaction.audit.v1 import audit_service_pb2_grpc as audit_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from mineaction.type.v1 import age_band_pb2, sex_pb2
from services.common import auth, pagination
from services.common.auth import (
    ROLES,
    AccessPolicy,
    SigningKey,
    load_signing_key,
    mint_token,
    publish_key,
)
from services.common.errors import reason_of
from tests.conftest import Cluster
from tests.factories import pdate, request_id
from tests.lending_helpers import active_loan, approved_loan, open_fund

SERVICES = {
    "eligibility": eligibility_service_pb2.DESCRIPTOR.services_by_name["EligibilityService"],
    "lending": lending_pb.DESCRIPTOR.services_by_name["LendingService"],
    "assistance": assistance_service_pb2.DESCRIPTOR.services_by_name["AssistanceService"],
}
AUDIT = audit_pb.DESCRIPTOR.services_by_name["AuditService"]
POLICY = AccessPolicy.load()


def hosted_methods() -> Iterator[tuple[str, descriptor.MethodDescriptor]]:
    """Every RPC every process serves: its own service and the audit service."""
    for name, service in SERVICES.items():
        for method in [*service.methods, *AUDIT.methods]:
            yield name, method


def full_name(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def raw_call(channel: grpc.aio.Channel, method: descriptor.MethodDescriptor) -> Any:
    return channel.unary_unary(
        full_name(method),
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=bytes,
    )


def empty_request(method: descriptor.MethodDescriptor) -> Any:
    return message_factory.GetMessageClass(method.input_type)()


async def code_of(call: Any, request: Any) -> grpc.StatusCode:
    try:
        await call(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest_asyncio.fixture(scope="module")
async def role_channels(cluster: Cluster) -> AsyncIterator[dict[tuple[str, str], grpc.aio.Channel]]:
    """One channel per (service, role), each with a token holding just that role."""
    channels = {
        (service, role): cluster.channel(service, cluster.token_for(role, subject=f"{role}-1"))
        for service in SERVICES
        for role in ROLES
    }
    yield channels
    for channel in channels.values():
        await channel.close()


# --- the policy covers everything ---------------------------------------------------------


def test_every_rpc_of_every_service_is_in_the_policy() -> None:
    served = {full_name(m) for _, m in hosted_methods()}
    assert served - set(POLICY.rules) == set(), "RPCs missing from access_policy.yaml"
    assert set(POLICY.rules) - served == set(), "access_policy.yaml lists unknown RPCs"
    for name, rule in POLICY.rules.items():
        assert rule.roles, f"{name} allows no role"


def test_the_role_table_in_the_docs_is_the_policy() -> None:
    """docs/security.md shows who may call what: every row as the policy says, no RPC
    missing, none extra."""
    columns = {
        "CW": "case_worker",
        "LO": "loan_officer",
        "CM": "committee_member",
        "PM": "programme_manager",
        "AU": "auditor",
        "SVC": "service",
    }
    documented: dict[str, tuple[set[str], str]] = {}
    service = ""
    header: list[str] = []
    for line in (Path(__file__).parents[2] / "docs" / "security.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(cells[0]) <= {"-"}:
            continue
        if cells[0] == "RPC":
            header = cells
        elif cells[0].startswith("**"):
            service = cells[0].strip("*")
        elif header:
            roles = {columns[h] for h, c in zip(header[1:-1], cells[1:-1], strict=True) if c}
            documented[f"{service}/{cells[0]}"] = (roles, cells[-1].strip("`"))
    policy = {
        name.removeprefix("/").split(".")[-1]: (set(rule.roles), rule.actor_field or "")
        for name, rule in POLICY.rules.items()
    }
    assert documented == policy


# --- authentication ---------------------------------------------------------------------


def _forged(settings_key: SigningKey, **claims: Any) -> str:
    now = datetime.now(UTC)
    base = {
        "sub": "cw-1",
        "roles": ["case_worker"],
        "iss": "mineaction",
        "aud": "mineaction-api",
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    base.update(claims)
    payload = {k: v for k, v in base.items() if v is not None}
    return jwt.encode(payload, settings_key.private_key, "EdDSA", {"kid": settings_key.kid})


def bad_tokens(cluster: Cluster) -> dict[str, tuple[str | None, str]]:
    key = load_signing_key(cluster.settings.effective_signing_key_file)
    stranger = SigningKey.generate()
    impostor = SigningKey(key.kid, stranger.private_key)  # a trusted kid, the wrong key
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    return {
        "none": (None, "TOKEN_MISSING"),
        "malformed": ("not.a.jwt", "TOKEN_MALFORMED"),
        "expired": (
            mint_token(
                key,
                subject="cw-1",
                roles=["case_worker"],
                issuer="mineaction",
                audience="mineaction-api",
                ttl=timedelta(minutes=5),
                now=an_hour_ago,
            ),
            "TOKEN_EXPIRED",
        ),
        "wrong audience": (_forged(key, aud="another-api"), "TOKEN_AUDIENCE"),
        "wrong issuer": (_forged(key, iss="someone-else"), "TOKEN_ISSUER"),
        "wrong signature": (_forged(impostor), "TOKEN_SIGNATURE"),
        "unknown kid": (_forged(stranger), "TOKEN_UNKNOWN_KEY"),
        "no roles claim": (_forged(key, roles=None), "TOKEN_NO_ROLES"),
        "no subject": (_forged(key, sub=None), "TOKEN_INVALID"),
        "hmac signed": (
            jwt.encode(
                {"sub": "x", "roles": ["auditor"]},
                "a-shared-secret-the-server-never-accepts",
                "HS256",
                {"kid": key.kid},
            ),
            "TOKEN_ALGORITHM",
        ),
        # Headers PyJWT refuses to read: they failed INTERNAL, no signature needed.
        "critical header": (
            jwt.encode({"sub": "x"}, key.private_key, "EdDSA", {"crit": ["x"], "x": 1}),
            "TOKEN_MALFORMED",
        ),
        "numeric key id": (_with_header(_forged(key), kid=7), "TOKEN_MALFORMED"),
    }


def _with_header(token: str, **fields: Any) -> str:
    """The token with its header's fields changed (its signature no longer matching)."""
    header, rest = token.split(".", 1)
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    encoded = base64.urlsafe_b64encode(json.dumps({**decoded, **fields}).encode())
    return encoded.rstrip(b"=").decode() + "." + rest


@pytest.mark.parametrize(
    "case",
    [
        "none",
        "malformed",
        "expired",
        "wrong audience",
        "wrong issuer",
        "wrong signature",
        "unknown kid",
        "no roles claim",
        "no subject",
        "hmac signed",
        "critical header",
        "numeric key id",
    ],
)
async def test_a_missing_or_bad_token_is_unauthenticated(cluster: Cluster, case: str) -> None:
    token, reason = bad_tokens(cluster)[case]
    before = await cluster.row_counts()
    async with cluster.channel("lending", token) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await lending_grpc.LendingServiceStub(channel).GetFund(
                lending_pb.GetFundRequest(fund_id="revolving-fund"), timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(caught.value) == reason
    assert caught.value.details()  # a message a person can act on
    assert await cluster.row_counts() == before


async def test_a_header_that_is_not_bearer_is_unauthenticated(cluster: Cluster) -> None:
    async with cluster.channel("lending", None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await lending_grpc.LendingServiceStub(channel).ListLoanProducts(
                lending_pb.ListLoanProductsRequest(),
                metadata=(("authorization", "Basic dXNlcjpwYXNz"),),
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (caught.value.details() or "")


async def test_health_and_reflection_stay_open(cluster: Cluster) -> None:
    async with cluster.channel("assistance", None) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = [s.name async for answer in stream for s in answer.list_services_response.service]
    assert "mineaction.assistance.v1.AssistanceService" in names
    assert "mineaction.audit.v1.AuditService" in names


async def test_a_rotated_key_verifies_alongside_the_old_one(cluster: Cluster) -> None:
    """Publish a new key in the JWKS: tokens under the new kid verify (the file is re-read
    when it changes), and tokens under the old kid still do; withdraw it, and its tokens
    stop verifying."""
    settings = cluster.settings
    new_key = SigningKey.generate()
    publish_key(settings.effective_jwks_file, new_key)
    kids = [k["kid"] for k in json.loads(settings.effective_jwks_file.read_text())["keys"]]
    assert len(kids) == 2
    fresh = mint_token(
        new_key,
        subject="auditor-9",
        roles=["auditor"],
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
    )
    interval = auth.TokenVerifier.RELOAD_INTERVAL_SECONDS
    auth.TokenVerifier.RELOAD_INTERVAL_SECONDS = 0.0  # re-read the JWKS at once
    try:
        for token in (fresh, cluster.token_for("auditor")):
            async with cluster.channel("lending", token) as channel:
                products = await lending_grpc.LendingServiceStub(channel).ListLoanProducts(
                    lending_pb.ListLoanProductsRequest(), timeout=10
                )
            assert products.loan_products
        # Withdrawn from the JWKS (a key thought compromised): its tokens stop verifying
        # without a restart, the one just accepted included (it kept verifying).
        jwks = json.loads(settings.effective_jwks_file.read_text())
        jwks["keys"] = [k for k in jwks["keys"] if k["kid"] != new_key.kid]
        settings.effective_jwks_file.write_text(json.dumps(jwks))
        async with cluster.channel("lending", fresh) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as withdrawn:
                await lending_grpc.LendingServiceStub(channel).ListLoanProducts(
                    lending_pb.ListLoanProductsRequest(), timeout=10
                )
        assert withdrawn.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(withdrawn.value) == "TOKEN_UNKNOWN_KEY"
    finally:
        auth.TokenVerifier.RELOAD_INTERVAL_SECONDS = interval


# --- role x RPC, every RPC and every role ------------------------------------------------


def _matrix() -> list[Any]:
    cases = []
    for service, method in hosted_methods():
        rule = POLICY.rule(full_name(method))
        assert rule is not None
        for role in ROLES:
            allowed = role in rule.roles
            cases.append(
                pytest.param(
                    service,
                    method,
                    role,
                    allowed,
                    id=f"{service}-{method.name}-{role}-{'allowed' if allowed else 'denied'}",
                )
            )
    return cases


@pytest.mark.parametrize(("service", "method", "role", "allowed"), _matrix())
async def test_role_x_rpc(
    cluster: Cluster,
    role_channels: dict[tuple[str, str], grpc.aio.Channel],
    service: str,
    method: descriptor.MethodDescriptor,
    role: str,
    allowed: bool,
) -> None:
    """An empty request: an allowed role gets past authorization (to validation or the
    handler), a refused one gets PERMISSION_DENIED before anything is validated."""
    code = await code_of(raw_call(role_channels[(service, role)], method), empty_request(method))
    assert code != grpc.StatusCode.UNAUTHENTICATED
    if allowed:
        assert code != grpc.StatusCode.PERMISSION_DENIED, f"{role} refused {method.name}"
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, f"{role} got {code} on {method.name}"


async def test_a_token_without_any_known_role_is_denied_everywhere(cluster: Cluster) -> None:
    key = load_signing_key(cluster.settings.effective_signing_key_file)
    token = _forged(key, roles=["superuser"])
    for service, method in hosted_methods():
        async with cluster.channel(service, token) as channel:
            code = await code_of(raw_call(channel, method), empty_request(method))
        assert code == grpc.StatusCode.PERMISSION_DENIED, method.name


# --- four eyes by identity ------------------------------------------------------------------


def application(fund_id: str, submitted_by: str = "") -> lending_pb.SubmitLoanApplicationRequest:
    return lending_pb.SubmitLoanApplicationRequest(
        request_id=request_id(),
        survivor_id=f"srv-{uuid.uuid4().hex[:8]}",
        product_id="small_trade",
        amount_minor=100_000,
        currency_code="AZN",
        purpose="a market stall",
        fund_id=fund_id,
        district_code="saatli",
        borrower_sex=sex_pb2.SEX_FEMALE,
        borrower_age_band=age_band_pb2.AGE_BAND_35_59,
        submitted_by=submitted_by,
    )


async def test_whoever_submits_a_loan_cannot_approve_it(cluster: Cluster) -> None:
    fund_id = await open_fund(cluster, 1_000_000)
    # one person who is both loan officer and committee member
    both = cluster.token_for("loan_officer", "committee_member", subject="ayten")
    other = cluster.token_for("committee_member", subject="rauf")
    async with (
        cluster.channel("lending", both) as mine,
        cluster.channel("lending", other) as theirs,
    ):
        submitted = await lending_grpc.LendingServiceStub(mine).SubmitLoanApplication(
            application(fund_id)
        )
        assert submitted.loan.submitted_by == "ayten"  # filled from the token
        approve = lending_pb.ApproveLoanRequest(
            request_id=request_id(),
            loan_id=submitted.loan.loan_id,
            committee_decision_ref="CM-2026-100",
        )
        with pytest.raises(grpc.aio.AioRpcError) as own:
            await lending_grpc.LendingServiceStub(mine).ApproveLoan(approve)
        assert own.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(own.value) == "FOUR_EYES"
        approve.request_id, approve.approved_by = request_id(), "rauf"  # naming another
        with pytest.raises(grpc.aio.AioRpcError) as posing:
            await lending_grpc.LendingServiceStub(mine).ApproveLoan(approve)
        assert reason_of(posing.value) == "ACTOR_NOT_CALLER"
        # Naming oneself in another spelling is oneself, recorded as the token spells it.
        approve.request_id, approve.approved_by = request_id(), "RAUF"
        approved = await lending_grpc.LendingServiceStub(theirs).ApproveLoan(approve)
    assert approved.loan.approved_by == "rauf"
    assert approved.loan.state == lending_pb.LOAN_STATE_APPROVED


async def test_the_service_relays_names_and_four_eyes_compares_them(cluster: Cluster) -> None:
    """The journey worker names the staff member; the same name twice is refused."""
    token = (cluster.settings.effective_service_token_file).read_text().strip()
    fund_id = await open_fund(cluster, 1_000_000)
    async with cluster.channel("lending", token) as channel:
        lending = lending_grpc.LendingServiceStub(channel)
        submitted = await lending.SubmitLoanApplication(application(fund_id, submitted_by="cw-07"))
        assert submitted.loan.submitted_by == "cw-07"
        # The same person however spelt: case, a full-width digit, and (for a name with
        # "st") a ligature, which the CLI and the journey took for the same person and
        # lending for another, so that one person approved their own application.
        for spelt in ("CW-07", "cw-０7"):
            with pytest.raises(grpc.aio.AioRpcError) as same:
                await lending.ApproveLoan(
                    lending_pb.ApproveLoanRequest(
                        request_id=request_id(),
                        loan_id=submitted.loan.loan_id,
                        approved_by=spelt,
                        committee_decision_ref="CM-1",
                    )
                )
            assert reason_of(same.value) == "FOUR_EYES", spelt
        rustam = await lending.SubmitLoanApplication(application(fund_id, submitted_by="rustam"))
        with pytest.raises(grpc.aio.AioRpcError) as ligature:
            await lending.ApproveLoan(
                lending_pb.ApproveLoanRequest(
                    request_id=request_id(),
                    loan_id=rustam.loan.loan_id,
                    approved_by="ru\ufb06am",
                    committee_decision_ref="CM-1",
                )
            )
        assert reason_of(ligature.value) == "FOUR_EYES"
    # and a person whose token says cw-07 cannot approve what the worker submitted for them
    async with cluster.channel(
        "lending", cluster.token_for("committee_member", subject="cw-07")
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as person:
            await lending_grpc.LendingServiceStub(channel).ApproveLoan(
                lending_pb.ApproveLoanRequest(
                    request_id=request_id(),
                    loan_id=submitted.loan.loan_id,
                    committee_decision_ref="CM-1",
                )
            )
        assert reason_of(person.value) == "FOUR_EYES"


# --- the audit log -------------------------------------------------------------------------


async def list_entries(cluster: Cluster, service: str, **filters: Any) -> list[audit_pb.AuditEntry]:
    async with cluster.channel(service, cluster.token_for("auditor", subject="aud-1")) as ch:
        response = await audit_grpc.AuditServiceStub(ch).ListAuditEntries(
            audit_pb.ListAuditEntriesRequest(**filters), timeout=10
        )
    return list(response.audit_entries)


async def test_mutating_calls_are_audited_with_their_outcome(cluster: Cluster) -> None:
    subject = f"lo-{uuid.uuid4().hex[:6]}"
    fund_id = await open_fund(cluster, 1_000_000)
    loan = await approved_loan(cluster.lending, fund_id=fund_id)
    ok_id, refused_id, invalid_id = request_id(), request_id(), request_id()
    officer = cluster.token_for("loan_officer", subject=subject)
    case_worker = cluster.token_for("case_worker", subject=subject)
    async with (
        cluster.channel("lending", officer) as lo,
        cluster.channel("lending", case_worker) as cw,
    ):
        disburse = lending_pb.DisburseTrancheRequest(
            request_id=refused_id,
            loan_id=loan.loan_id,
            amount_minor=50_000,
            currency_code="AZN",
            kind=lending_pb.DISBURSEMENT_KIND_CASH,
            description="first tranche",
            disbursement_date=pdate(date(2026, 3, 2)),
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await lending_grpc.LendingServiceStub(cw).DisburseTranche(disburse)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        disburse.request_id = ok_id
        await lending_grpc.LendingServiceStub(lo).DisburseTranche(disburse)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await lending_grpc.LendingServiceStub(lo).DisburseTranche(
                lending_pb.DisburseTrancheRequest(request_id=invalid_id)
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a read is not audited
        await lending_grpc.LendingServiceStub(lo).GetLoan(
            lending_pb.GetLoanRequest(loan_id=loan.loan_id)
        )

    entries = await list_entries(cluster, "lending", subject=subject)
    by_request = {e.request_id: e for e in entries}
    assert set(by_request) == {ok_id, refused_id, invalid_id}
    assert [e.request_id for e in entries] == [invalid_id, ok_id, refused_id]  # newest first
    ok, refused = by_request[ok_id], by_request[refused_id]
    assert (ok.code, ok.method) == ("OK", "/mineaction.lending.v1.LendingService/DisburseTranche")
    assert list(ok.roles) == ["loan_officer"]
    assert ok.resource_ids["loan_id"] == loan.loan_id
    assert (refused.code, refused.reason) == ("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")
    assert list(refused.roles) == ["case_worker"]
    assert by_request[invalid_id].code == "INVALID_ARGUMENT"
    assert ok.record_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=1)
    # each service keeps its own log
    assert await list_entries(cluster, "eligibility", subject=subject) == []


async def test_a_body_that_does_not_parse_is_audited_when_sent_to_a_mutation(
    cluster: Cluster,
) -> None:
    """A role's refusal of a mutation, or the body's, left no entry when the bytes were
    not a message: the audit looked for the request_id in the parsed request."""
    subject = f"cw-{uuid.uuid4().hex[:6]}"
    method = "/mineaction.lending.v1.LendingService/DisburseTranche"
    for role in ("case_worker", "loan_officer"):
        async with cluster.channel("lending", cluster.token_for(role, subject=subject)) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary(method)(b"\xff\xff\xff\xff", timeout=10)
            # a read's garbage is not audited: reads never are
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary("/mineaction.lending.v1.LendingService/GetLoan")(
                    b"\xff\xff\xff\xff", timeout=10
                )
    entries = await list_entries(cluster, "lending", subject=subject)
    assert [(e.method, e.code, e.reason, e.request_id) for e in reversed(entries)] == [
        (method, "PERMISSION_DENIED", "ROLE_NOT_ALLOWED", ""),
        (method, "INVALID_ARGUMENT", "INVALID_ARGUMENT", ""),
    ]


async def test_a_failed_precondition_and_a_relayed_name_are_audited(cluster: Cluster) -> None:
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    token = cluster.settings.effective_service_token_file.read_text().strip()
    confirm_id = request_id()
    async with cluster.channel("lending", token) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await lending_grpc.LendingServiceStub(channel).ConfirmLoanWriteOff(
                lending_pb.ConfirmLoanWriteOffRequest(
                    request_id=confirm_id, loan_id=loan.loan_id, confirmed_by="pm-04"
                )
            )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    entries = await list_entries(cluster, "lending", method="ConfirmLoanWriteOff")
    entry = next(e for e in entries if e.request_id == confirm_id)
    assert (entry.code, entry.reason) == ("FAILED_PRECONDITION", "NO_WRITE_OFF_PROPOSAL")
    assert (entry.subject, entry.on_behalf_of) == ("journey-worker", "pm-04")


async def test_audit_entries_page_and_filter_by_time(cluster: Cluster) -> None:
    subject = f"cw-{uuid.uuid4().hex[:6]}"
    token = cluster.token_for("case_worker", subject=subject)
    started = datetime.now(UTC)
    async with cluster.channel("lending", token) as channel:
        for _ in range(5):  # refused: a case worker cannot disburse
            await code_of(
                lending_grpc.LendingServiceStub(channel).DisburseTranche,
                lending_pb.DisburseTrancheRequest(request_id=request_id()),
            )
    seen: list[int] = []
    token_ = ""
    async with cluster.channel("lending", cluster.token_for("auditor")) as channel:
        audit = audit_grpc.AuditServiceStub(channel)
        while True:
            page = await audit.ListAuditEntries(
                audit_pb.ListAuditEntriesRequest(subject=subject, page_size=2, page_token=token_)
            )
            assert len(page.audit_entries) <= 2
            seen += [e.entry_id for e in page.audit_entries]
            token_ = page.next_page_token
            if not token_:
                break
        assert len(seen) == 5 and seen == sorted(seen, reverse=True)
        request = audit_pb.ListAuditEntriesRequest(subject=subject)
        request.end_time.FromDatetime(started)
        assert list((await audit.ListAuditEntries(request)).audit_entries) == []
        request = audit_pb.ListAuditEntriesRequest(subject=subject)
        request.start_time.FromDatetime(started)
        assert len((await audit.ListAuditEntries(request)).audit_entries) == 5
        # A window ending before it starts is a mistake, not an empty log.
        request.end_time.FromDatetime(started - timedelta(hours=1))
        with pytest.raises(grpc.aio.AioRpcError) as backwards:
            await audit.ListAuditEntries(request)
        assert backwards.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "start_time must be before end_time" in (backwards.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as other_query:
            await audit.ListAuditEntries(
                audit_pb.ListAuditEntriesRequest(subject="someone", page_token=page_token(seen))
            )
        assert other_query.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def page_token(seen: list[int]) -> str:
    """A real token, issued for another filter."""
    return pagination.encode([seen[0]], {"subject": "x", "method": "", "start": "", "end": ""})


@pytest.mark.parametrize(
    "statement", ["UPDATE {t} SET code = 'OK'", "DELETE FROM {t}", "TRUNCATE {t}"]
)
async def test_the_audit_log_is_append_only_in_the_database(
    cluster: Cluster, statement: str
) -> None:
    await list_entries(cluster, "lending")  # at least the tests above wrote some
    db = cluster.hosts["lending"].db
    assert db is not None
    async with db.pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM audit_log")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute(statement.format(t="audit_log"))
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == before


async def test_a_service_without_keys_does_not_start(cluster: Cluster, tmp_path: Path) -> None:
    from services.common.auth import AuthConfigError
    from services.common.server import ServiceHost
    from services.lending.service import SPEC

    keyless = cluster.settings.model_copy(update={"auth_jwks_file": tmp_path / "none"})
    with pytest.raises(AuthConfigError, match="AUTH_JWKS_FILE"):
        await ServiceHost(SPEC, keyless, address="127.0.0.1:0").start()
