"""Domain errors and their mapping to gRPC status with google.rpc details.

Service code raises these; the error-mapping interceptor turns each into the right
status code carrying `google.rpc.ErrorInfo` (and `google.rpc.BadRequest` for invalid
arguments). Anything else is a bug and becomes INTERNAL with no internals leaked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "mineaction.az"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = ""


class DomainError(Exception):
    """Base of every error a caller is meant to see."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "DOMAIN_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self.details()
        )


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self, message: str, violations: Iterable[FieldViolation], **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.violations = list(violations)

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [*super().details(), packed]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Unavailable(DomainError):
    """A dependency (the database) cannot be reached right now. The caller may retry:
    mutating calls with the same request_id, which makes the retry safe."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


def internal_status() -> status_pb2.Status:
    """The only thing a caller learns about a bug."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def invalid_fields(violations: Sequence[FieldViolation]) -> InvalidArgument:
    """INVALID_ARGUMENT whose message names the first few fields at fault, so that a
    client showing only the message still says what to correct."""
    shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
    more = f"; {len(violations) - 5} more in the details" if len(violations) > 5 else ""
    return InvalidArgument(f"{len(violations)} invalid field(s): {shown}{more}", violations)


def invalid(field: str, description: str, reason: str = "") -> InvalidArgument:
    """Shorthand for a single-field INVALID_ARGUMENT raised by service code."""
    return InvalidArgument(
        f"invalid {field}: {description}", [FieldViolation(field, description, reason)]
    )


def consent_withdrawn(withdrawn_on: date) -> FailedPrecondition:
    """The refusal of any use of a survivor's data while their consent to data processing
    stands withdrawn, in every service that holds it."""
    return FailedPrecondition(
        f"the survivor withdrew consent to data processing on {withdrawn_on}: their data is "
        "not used; nothing was stored",
        reason="CONSENT_WITHDRAWN",
        metadata={"withdrawn_on": withdrawn_on.isoformat()},
    )


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The caller's side: the ErrorInfo reason a refused call carries (FOUR_EYES,
    LOAN_NOT_ACTIVE...), or "" when it carries none."""
    infos = _details_of(error, error_details_pb2.ErrorInfo)
    return str(infos[0].reason) if infos else ""


def violations_in(error: grpc.aio.AioRpcError) -> list[FieldViolation]:
    """The caller's side: the BadRequest field violations a refused call carries."""
    return [
        FieldViolation(v.field, v.description, v.reason)
        for bad in _details_of(error, error_details_pb2.BadRequest)
        for v in bad.field_violations
    ]


_Detail = TypeVar("_Detail", error_details_pb2.ErrorInfo, error_details_pb2.BadRequest)


def _details_of(error: grpc.aio.AioRpcError, kind: type[_Detail]) -> list[_Detail]:
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(error)
    except ValueError:  # trailing details that do not match the status code
        return []
    found = []
    for detail in status.details if status is not None else []:
        if detail.Is(kind.DESCRIPTOR):
            unpacked = kind()
            detail.Unpack(unpacked)
            found.append(unpacked)
    return found
