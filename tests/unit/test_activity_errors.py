"""How the journey's activities hand a service's refusal to the workflow: an answer about
the request is non-retryable and benign (logged at debug level); a refusal of the worker
itself is non-retryable and a failure an operator sees; a date the service's clock has
not reached yet is retried."""

from __future__ import annotations

from typing import NoReturn

import grpc
import pytest
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from services.common.errors import DomainError, PermissionDenied, Unauthenticated, invalid
from workers.journey.activities import call


def refused(code: grpc.StatusCode, error: DomainError) -> grpc.aio.AioRpcError:
    """A refusal as the client sees it: the status, with its google.rpc details."""
    status = error.to_status()
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=status.message,
    )


async def answer_of(error: grpc.aio.AioRpcError) -> ApplicationError:
    async def rpc(request: object, **_: object) -> NoReturn:  # a refusing service
        raise error

    with pytest.raises(ApplicationError) as caught:
        await call(rpc, object())
    return caught.value


@pytest.mark.parametrize(
    ("code", "error", "retried", "category"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied("four eyes", reason="FOUR_EYES"),
         False, ApplicationErrorCategory.BENIGN),
        (grpc.StatusCode.PERMISSION_DENIED,
         PermissionDenied("no role", reason="ROLE_NOT_ALLOWED"),
         False, ApplicationErrorCategory.UNSPECIFIED),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated("expired", reason="TOKEN_EXPIRED"),
         False, ApplicationErrorCategory.UNSPECIFIED),
        (grpc.StatusCode.INVALID_ARGUMENT,
         invalid("amount_minor", "more than outstanding", "OVERPAYMENT"),
         False, ApplicationErrorCategory.BENIGN),
        (grpc.StatusCode.INVALID_ARGUMENT,
         invalid("disbursement_date", "must not be after today", "DATE_IN_FUTURE"),
         True, ApplicationErrorCategory.UNSPECIFIED),
    ],
    ids=["four-eyes", "role", "token", "request", "clock-behind"],
)  # fmt: skip
async def test_a_refusal_reaches_the_workflow_as_what_it_is(
    code: grpc.StatusCode,
    error: DomainError,
    retried: bool,
    category: ApplicationErrorCategory,
) -> None:
    answer = await answer_of(refused(code, error))
    assert (answer.non_retryable, answer.category) == (not retried, category)
