"""Whose a loan is, as the lending service (the loan book) says. A follow-up that names a
loan must name one of its own survivor's: the reach report counts follow-ups per loan,
and a mistyped loan id would count a visit that never belonged to any loan."""

from __future__ import annotations

from contextlib import AsyncExitStack

import grpc

from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.common.config import Settings
from services.common.errors import invalid
from services.common.peers import ask, open_peer


class LoanBook:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._lending = lending_grpc.LendingServiceStub(channel)

    @classmethod
    def open(cls, settings: Settings, resources: AsyncExitStack) -> LoanBook:
        """Through the lending service, with this service's own token (role `service`)."""
        purpose = "eligibility asks lending whose a loan is"
        return cls(open_peer(settings, settings.lending_address, purpose, resources))

    async def loan_of(self, field: str, loan_id: str, survivor_id: str) -> lending_pb.Loan:
        """The loan, if it is one of `survivor_id`'s: INVALID_ARGUMENT on `field` if not;
        UNAVAILABLE when the lending service cannot say."""
        answer: lending_pb.GetLoanResponse = await ask(
            self._lending.GetLoan,
            lending_pb.GetLoanRequest(loan_id=loan_id),
            unknown=invalid(field, f"no loan {loan_id} in the loan book", "UNKNOWN_LOAN"),
            cannot_say=f"the lending service cannot say whose loan {loan_id} is",
            asking="eligibility's GetLoan to lending",
        )
        if answer.loan.survivor_id != survivor_id:
            raise invalid(
                field, f"loan {loan_id} is not a loan of {survivor_id}", "LOAN_OF_ANOTHER_SURVIVOR"
            )
        return answer.loan
