"""Whose a loan is, as the lending service (the loan book) says. A follow-up that names a
loan must name one of its own survivor's: the reach report counts follow-ups per loan,
and a mistyped loan id would count a visit that never belonged to any loan."""

from __future__ import annotations

from contextlib import AsyncExitStack

import grpc

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.common.auth import AuthConfigError
from services.common.channels import client_tls, open_channel, service_token
from services.common.config import ConfigError, Settings
from services.common.errors import Unavailable, invalid

# A check answers within this, or the call is refused as UNAVAILABLE (retry it).
CHECK_TIMEOUT_SECONDS = 5.0
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


class LoanBook:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._lending = lending_grpc.LendingServiceStub(channel)

    @classmethod
    def open(cls, settings: Settings, resources: AsyncExitStack) -> LoanBook:
        """Through the lending service, with this service's own token (role `service`)."""
        try:
            token, tls = service_token(settings), client_tls(settings)
        except ConfigError as error:
            raise AuthConfigError(
                f"eligibility asks lending whose a loan is with the service token: {error}"
            ) from None
        channel = open_channel(settings.lending_address, token, tls=tls)
        resources.push_async_callback(channel.close)
        return cls(channel)

    async def loan_of(self, field: str, loan_id: str, survivor_id: str) -> lending_pb.Loan:
        """The loan, if it is one of `survivor_id`'s: INVALID_ARGUMENT on `field` if not;
        UNAVAILABLE when the lending service cannot say."""
        try:
            answer: lending_pb.GetLoanResponse = await self._lending.GetLoan(
                lending_pb.GetLoanRequest(loan_id=loan_id), timeout=CHECK_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                unknown = invalid(field, f"no loan {loan_id} in the loan book", "UNKNOWN_LOAN")
                raise unknown from None
            if error.code() in _TRANSIENT:
                raise Unavailable(
                    f"the lending service cannot say whose loan {loan_id} is now "
                    f"({error.code().name}); try again"
                ) from None
            # Eligibility's own token refused, or a fault in lending: not the caller's to
            # retry, an operator's to fix (INTERNAL, logged with this message).
            raise RuntimeError(
                f"lending refused eligibility's GetLoan ({error.code().name}): {error.details()}"
            ) from None
        if answer.loan.survivor_id != survivor_id:
            raise invalid(
                field, f"loan {loan_id} is not a loan of {survivor_id}", "LOAN_OF_ANOTHER_SURVIVOR"
            )
        return answer.loan
