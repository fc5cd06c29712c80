"""Every line a service logs while it handles a call says which call: its method, its
request id, the caller's address and the caller's verified identity; and nothing of one
call is left on the next one's lines. A real gRPC server behind the services' own chain,
its handler logging a warning (the services log at warning and above in the tests)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from mineaction.audit.v1 import audit_service_pb2 as audit_pb
from mineaction.audit.v1 import audit_service_pb2_grpc as audit_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as pb_grpc
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.common import audit
from services.common.auth import AccessPolicy, TokenVerifier
from services.common.channels import open_channel
from services.common.interceptors import GuardedServer, interceptor_chain
from services.common.logging import get_logger
from services.common.storable import kept_request_id
from tests.conftest import Cluster

SERVICE = "mineaction.eligibility.v1.EligibilityService"


@contextmanager
def service_log_lines() -> Iterator[list[dict[str, Any]]]:
    """The JSON lines the services' own pipeline writes meanwhile."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().addHandler(handler)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logging.getLogger().removeHandler(handler)
        lines.extend(json.loads(line) for line in written.getvalue().splitlines() if line)


async def test_each_line_logged_during_a_call_names_the_call(cluster: Cluster) -> None:
    async def get_survivor(
        request: pb.GetSurvivorRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSurvivorResponse:
        get_logger("tests").warning("looked up")
        return pb.GetSurvivorResponse()

    db = cluster.hosts["eligibility"].db
    assert db is not None
    server = grpc.aio.server()
    chain = interceptor_chain(
        TokenVerifier.from_settings(cluster.settings), AccessPolicy.load(), audit.AuditLog(db)
    )
    GuardedServer(server, chain).add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "GetSurvivor": grpc.unary_unary_rpc_method_handler(
                        get_survivor,
                        request_deserializer=pb.GetSurvivorRequest.FromString,
                        response_serializer=pb.GetSurvivorResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", cluster.token_for("case_worker", subject="cw-77"))
    try:
        stub = pb_grpc.EligibilityServiceStub(channel)
        with service_log_lines() as lines:
            for call in ("req-one", "req-two"):
                await stub.GetSurvivor(
                    pb.GetSurvivorRequest(survivor_id="srv-log-0001"),
                    metadata=(("x-request-id", call),),
                )
    finally:
        await channel.close()
        await server.stop(None)
    looked_up = [line for line in lines if line["event"] == "looked up"]
    assert [(line["method"], line["request_id"], line["subject"]) for line in looked_up] == [
        (f"/{SERVICE}/GetSurvivor", "req-one", "cw-77"),
        (f"/{SERVICE}/GetSurvivor", "req-two", "cw-77"),
    ], lines
    assert all(line["peer"].startswith("ipv4:127.0.0.1:") for line in looked_up)


async def test_an_id_a_caller_makes_up_is_kept_short_in_the_logs_and_the_audit_log(
    cluster: Cluster,
) -> None:
    """A request_id of three megabytes, a name in it, filled the log lines of the call; from
    a caller with no role, it and a loan_id as long went into the append-only audit log,
    whose unfiltered pages were then too large to send. Both are kept as the logs keep
    them (services/common/storable.py kept, kept_request_id)."""
    made_up = "Leyla Mammadova born 1977-03-29 " + "Q" * 1_000_000
    request = lending_pb.RecordRepaymentRequest(request_id=made_up, loan_id="L" * 1_000_000)
    channel = cluster.channel("lending", cluster.token_for(subject="nobody-1"))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lending_grpc.LendingServiceStub(channel).RecordRepayment(request)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()
    async with cluster.channel("lending", cluster.token_for("auditor", subject="aud-9")) as ch:
        page = await audit_grpc.AuditServiceStub(ch).ListAuditEntries(
            audit_pb.ListAuditEntriesRequest(subject="nobody-1", page_size=1)
        )
    [entry] = page.audit_entries
    assert entry.request_id == "(not a UUID: 1000032 characters)"
    assert entry.resource_ids["loan_id"] == "L" * 64 + "… (1000000 characters)"
    # The call's log lines name it the same way.
    assert kept_request_id(made_up) == entry.request_id
