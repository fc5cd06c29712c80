"""The shortcuts taken for speed keep their promises: RecordRepayment's one-statement
path (migration 008) answers like GetLoan, its audit entry is written with the effect and
exactly once, refusals and replays are still audited, and cached tokens still expire."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import grpc
import pytest

from mineaction.audit.v1 import audit_service_pb2 as audit_pb
from mineaction.audit.v1 import audit_service_pb2_grpc as audit_grpc
from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from services.common.auth import SigningKey, TokenVerifier, mint_token, publish_key
from services.common.errors import Unauthenticated
from services.lending import figures
from tests.conftest import Cluster
from tests.factories import pdate
from tests.lending_helpers import active_loan, lending_db, open_fund, repayment

# The latest migration that defines lending_repay_once, which builds a repayment's answer.
MIGRATION = (
    Path(figures.__file__).parent / "migrations" / "025_repayment_answer_from_what_it_read.sql"
)


def test_the_repayment_answer_lists_tranches_as_the_loan_view_does() -> None:
    """The answer's tranches are the Python view's own SQL, copied; it must not drift (the
    figures are held to GetLoan's by tests/integration/test_lending_ledger_properties.py)."""
    assert figures.TRANCHES_JSON in MIGRATION.read_text()
    assert figures.TRANCHES_JSON in figures.LOAN_VIEW_ONE


async def test_a_repayment_answers_with_the_loan_as_get_loan_shows_it(cluster: Cluster) -> None:
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    for amount, on in ((10_000, date(2026, 5, 10)), (110_000, date(2026, 7, 1))):
        paid = await cluster.lending.RecordRepayment(repayment(loan.loan_id, amount, on))
        seen = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(on))
        )
        assert paid.loan == seen.loan
    assert paid.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert paid.loan.close_date == pdate(date(2026, 7, 1))
    # A refusal from the one statement writes nothing, not even the request_id's key.
    before = await cluster.row_counts()
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await cluster.lending.RecordRepayment(repayment(loan.loan_id, 1, date(2026, 7, 2)))
    assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CLOSED_OBLIGATIONS_MET" in (closed.value.details() or "")
    assert await cluster.row_counts() == before


async def test_an_overdue_loans_answers_count_days_past_due_as_get_loan_does(
    cluster: Cluster,
) -> None:
    """Payments into arrears, across a pause: each answer's days past due start from the
    oldest instalment still unpaid after that payment, less the days paused."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    instalments = (
        await cluster.lending.GetRepaymentSchedule(
            pb.GetRepaymentScheduleRequest(loan_id=loan.loan_id)
        )
    ).schedule.instalments
    _, second, third = (
        date(i.due_date.year, i.due_date.month, i.due_date.day) for i in instalments[:3]
    )
    paused_from, paused_to = second + timedelta(days=5), second + timedelta(days=14)
    await cluster.lending.PauseDelinquency(
        pb.PauseDelinquencyRequest(
            request_id=str(uuid.uuid4()),
            loan_id=loan.loan_id,
            start_date=pdate(paused_from),
            end_date=pdate(paused_to),
            reason="hospitalised",
            requested_by="cw-01",
        )
    )
    on = third + timedelta(days=5)
    # The first instalment exactly, one qəpik, then the rest of the second.
    amounts = [
        instalments[0].principal_due_minor,
        1,
        instalments[1].principal_due_minor - 1,
    ]
    days_past_due = []
    for number, amount in enumerate(amounts):
        paid = await cluster.lending.RecordRepayment(
            repayment(loan.loan_id, amount, on + timedelta(days=number))
        )
        seen = await cluster.lending.GetLoan(
            pb.GetLoanRequest(loan_id=loan.loan_id, as_of=paid.loan.figures_as_of)
        )
        assert paid.loan == seen.loan
        days_past_due.append(paid.loan.days_past_due)
    # Overdue from the second instalment, less its ten paused days, then from the third.
    assert days_past_due == [
        (on - second).days - 10,
        (on - second).days + 1 - 10,
        (on - third).days + 2,
    ]


async def test_a_request_id_refused_in_a_group_can_be_used_again_in_the_same_group(
    cluster: Cluster,
) -> None:
    """One statement, four repayments: a refused one leaves no key behind, so the same
    request_id then repays; a request_id repeated after a repayment gets its answer."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    refused_then_paid, paid_twice = str(uuid.uuid4()), str(uuid.uuid4())
    calls = [  # request_id, amount
        (refused_then_paid, 10_000_000),
        (refused_then_paid, 1_000),
        (paid_twice, 2_000),
        (paid_twice, 2_000),
    ]
    rows = await lending_db(cluster).pool.fetch(
        "SELECT * FROM lending_repay_many($1, 'RecordRepayment', $2, $3, $4, $5, $6, $7, $8,"
        " 'null') ORDER BY call_position",
        [request for request, _ in calls],
        [b"hash"] * 4,
        [loan.loan_id] * 4,
        [amount for _, amount in calls],
        [date(2026, 5, 10)] * 4,
        ["cashier-01"] * 4,
        ["cash"] * 4,
        [f"txn-{uuid.uuid4()}" for _ in calls],
    )
    assert [row["outcome"] for row in rows] == ["OVERPAYMENT", "OK", "OK", "REPLAY"]
    assert rows[3]["answer"] == rows[2]["answer"]
    seen = await cluster.lending.GetLoan(pb.GetLoanRequest(loan_id=loan.loan_id))
    assert seen.loan.repaid_principal_minor == 3_000


async def test_a_payment_recorded_late_answers_with_everything_recorded_since(
    cluster: Cluster,
) -> None:
    """A payment dated before one already recorded, which repays the loan in full, said
    CLOSED_OBLIGATIONS_MET with 110,000 still outstanding: its figures were those of its
    own day, before the later payment."""
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    first = await cluster.lending.RecordRepayment(
        repayment(loan.loan_id, 110_000, date(2026, 5, 10))
    )
    assert first.loan.figures_as_of == pdate(date(2026, 5, 10))
    late = await cluster.lending.RecordRepayment(repayment(loan.loan_id, 10_000, date(2026, 4, 1)))
    assert late.loan.state == pb.LOAN_STATE_CLOSED_OBLIGATIONS_MET
    assert late.loan.outstanding_principal_minor == 0
    assert late.loan.repaid_principal_minor == 120_000
    assert late.loan.figures_as_of == late.loan.close_date == pdate(date(2026, 5, 10))
    seen = await cluster.lending.GetLoan(
        pb.GetLoanRequest(loan_id=loan.loan_id, as_of=pdate(date(2026, 5, 10)))
    )
    assert late.loan == seen.loan


async def _entries(cluster: Cluster, subject: str) -> list[audit_pb.AuditEntry]:
    async with cluster.channel("lending", cluster.token_for("auditor", subject="aud-2")) as ch:
        response = await audit_grpc.AuditServiceStub(ch).ListAuditEntries(
            audit_pb.ListAuditEntriesRequest(subject=subject), timeout=10
        )
    return list(response.audit_entries)


async def test_every_repayment_call_is_audited_exactly_once(cluster: Cluster) -> None:
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    subject = f"lo-{uuid.uuid4().hex[:6]}"
    first = repayment(loan.loan_id, 10_000, date(2026, 5, 10))
    over = repayment(loan.loan_id, 10_000_000, date(2026, 5, 10))
    for request in (first, over):
        request.received_by = ""  # the caller themselves
    async with cluster.channel("lending", cluster.token_for("loan_officer", subject=subject)) as ch:
        stub = pb_grpc.LendingServiceStub(ch)
        answer = await stub.RecordRepayment(first)
        assert await stub.RecordRepayment(first) == answer  # a replay: no second effect
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RecordRepayment(over)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    entries = await _entries(cluster, subject)
    assert [(e.request_id, e.code) for e in entries] == [
        (over.request_id, "INVALID_ARGUMENT"),
        (first.request_id, "OK"),  # the replay
        (first.request_id, "OK"),  # the effect, written in its transaction
    ]
    assert entries[2].resource_ids["loan_id"] == loan.loan_id


async def test_a_relayed_name_is_in_the_entry_written_with_the_effect(cluster: Cluster) -> None:
    loan = await active_loan(cluster, fund_id=await open_fund(cluster, 1_000_000))
    token = cluster.settings.effective_service_token_file.read_text().strip()
    request = repayment(loan.loan_id, 5_000, date(2026, 5, 10))
    request.received_by = f"cashier-{uuid.uuid4().hex[:6]}"
    async with cluster.channel("lending", token) as channel:
        await pb_grpc.LendingServiceStub(channel).RecordRepayment(request)
    entries = [
        e for e in await _entries(cluster, "journey-worker") if e.request_id == request.request_id
    ]
    assert [(e.code, e.on_behalf_of) for e in entries] == [("OK", request.received_by)]


def _verifier(tmp_path: Path, key: SigningKey) -> TokenVerifier:
    jwks = tmp_path / "jwks.json"
    publish_key(jwks, key)
    return TokenVerifier(jwks, issuer="iss", audience="aud", leeway_seconds=0)


def test_a_cached_token_still_expires(tmp_path: Path) -> None:
    key = SigningKey.generate()
    verifier = _verifier(tmp_path, key)
    token = mint_token(
        key,
        subject="lo-1",
        roles=["loan_officer"],
        issuer="iss",
        audience="aud",
        ttl=timedelta(seconds=2),
    )
    assert verifier.verify(token).subject == "lo-1"
    assert verifier.verify(token).subject == "lo-1"  # from the cache
    time.sleep(2.1)
    with pytest.raises(Unauthenticated) as expired:
        verifier.verify(token)
    assert expired.value.reason == "TOKEN_EXPIRED"


def test_a_cached_token_stops_verifying_when_its_key_is_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    verifier = _verifier(tmp_path, old)
    token = mint_token(old, subject="lo-1", roles=["loan_officer"], issuer="iss", audience="aud")
    assert verifier.verify(token).subject == "lo-1"
    # Rotation finished: the JWKS lists only the new key, and a token under it makes the
    # verifier re-read the file.
    (tmp_path / "jwks.json").unlink()
    publish_key(tmp_path / "jwks.json", new)
    monkeypatch.setattr(TokenVerifier, "RELOAD_INTERVAL_SECONDS", 0.0)
    fresh = mint_token(new, subject="lo-2", roles=["loan_officer"], issuer="iss", audience="aud")
    assert verifier.verify(fresh).subject == "lo-2"
    with pytest.raises(Unauthenticated) as withdrawn:
        verifier.verify(token)
    assert withdrawn.value.reason == "TOKEN_UNKNOWN_KEY"


@pytest.mark.parametrize("written", ['{"keys": []}', '{"keys": ["oops"]}', "{not json", None])
def test_a_jwks_that_cannot_be_read_trusts_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str | None
) -> None:
    """Emptied (every key withdrawn), mistyped or deleted, the JWKS left the verifier
    trusting the keys it had read before, with no word to anyone."""
    key = SigningKey.generate()
    verifier = _verifier(tmp_path, key)
    token = mint_token(key, subject="lo-1", roles=["loan_officer"], issuer="iss", audience="aud")
    assert verifier.verify(token).subject == "lo-1"
    jwks = tmp_path / "jwks.json"
    jwks.unlink()
    if written is not None:
        jwks.write_text(written)
    monkeypatch.setattr(TokenVerifier, "RELOAD_INTERVAL_SECONDS", 0.0)
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token)
    assert refused.value.reason == "TOKEN_UNKNOWN_KEY"
    jwks.unlink(missing_ok=True)
    publish_key(jwks, key)  # readable again: trusted again
    assert verifier.verify(token).subject == "lo-1"


def test_a_jwks_made_readable_again_is_read_at_the_next_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unreadable once, then readable with its stamp unchanged (a chmod): it was not read
    again, and every token stayed refused until a restart."""
    key = SigningKey.generate()
    verifier = _verifier(tmp_path, key)
    token = mint_token(key, subject="lo-1", roles=["loan_officer"], issuer="iss", audience="aud")
    jwks = tmp_path / "jwks.json"
    good = jwks.read_text()
    stamp = jwks.stat()
    jwks.write_text("{half a fi")
    os.utime(jwks, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    monkeypatch.setattr(TokenVerifier, "RELOAD_INTERVAL_SECONDS", 0.0)
    with pytest.raises(Unauthenticated):
        verifier.verify(token)
    jwks.write_text(good)  # finished, within the same tick
    os.utime(jwks, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    assert verifier.verify(token).subject == "lo-1"


def test_publishing_a_key_keeps_the_file_where_links_point_and_its_mode(tmp_path: Path) -> None:
    """The file was put in place anew: a link to it replaced by a file, and a mode of 0644
    (the services, another user, read it) turned into the publisher's umask's 0600."""
    real = tmp_path / "secrets" / "jwks.json"
    publish_key(real, SigningKey.generate())
    real.chmod(0o640)
    link = tmp_path / "jwks.json"
    link.symlink_to(real)
    publish_key(link, SigningKey.generate())
    assert link.is_symlink()
    assert len(json.loads(real.read_text())["keys"]) == 2
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert [p.name for p in real.parent.iterdir()] == ["jwks.json"]  # no leftover


def test_a_key_that_cannot_be_used_is_left_out_and_the_others_still_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key of another kind added during a rotation refused every token in the cluster."""
    key = SigningKey.generate()
    verifier = _verifier(tmp_path, key)
    token = mint_token(key, subject="lo-1", roles=["loan_officer"], issuer="iss", audience="aud")
    jwks = tmp_path / "jwks.json"
    keys = json.loads(jwks.read_text())["keys"]
    jwks.write_text(json.dumps({"keys": [*keys, {"kid": "rsa-1", "kty": "RSA", "n": "x"}]}))
    monkeypatch.setattr(TokenVerifier, "RELOAD_INTERVAL_SECONDS", 0.0)
    assert verifier.verify(token).subject == "lo-1"


def test_the_token_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey.generate()
    verifier = _verifier(tmp_path, key)
    monkeypatch.setattr(TokenVerifier, "CACHE_SIZE", 3)
    for n in range(5):
        token = mint_token(key, subject=f"s{n}", roles=["auditor"], issuer="iss", audience="aud")
        assert verifier.verify(token).subject == f"s{n}"
    assert len(verifier._verified) == 3
    assert verifier.verify(token).subject == "s4"
