"""The one interceptor chain every service process runs, outermost first:

1. request context: clears and binds the structlog context (method, request_id, peer)
   and logs one line per call with its status code and duration;
2. error mapping: domain errors become their status codes with google.rpc details;
   anything unexpected is logged with its trace and becomes a bare INTERNAL;
3. validation: protovalidate on every request; violations become INVALID_ARGUMENT
   with google.rpc.BadRequest field violations, before any handler code runs.

Only unary-unary methods are wrapped: the project's APIs are all unary, and the health
and reflection services' streams pass through untouched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
import protovalidate
import structlog
from google.protobuf.message import Message
from google.rpc import status_pb2

from services.common.errors import DomainError, FieldViolation, InvalidArgument, internal_status

log = structlog.get_logger("mineaction.rpc")

# Requests above this size are refused as INVALID_ARGUMENT after parsing; gRPC itself
# refuses anything above the server's receive limit (see server.py) before parsing.
MAX_REQUEST_BYTES = 1024 * 1024

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse, so that the caller gets
    INVALID_ARGUMENT from the validation step instead of an opaque UNKNOWN."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None or getattr(deserializer, "tolerant", False):
        return deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return MalformedRequest(str(error))

    deserialize.tolerant = True  # type: ignore[attr-defined]
    return deserialize


class UnaryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Base class: subclasses implement `around`, which wraps one unary call."""

    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner: Handler = handler.unary_unary
        method = handler_call_details.method

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self.around(method, request, context, inner)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def request_id_of(request: Any, context: grpc.aio.ServicerContext) -> str:
    """The caller's request_id field, else the x-request-id header, else a fresh id."""
    request_id = getattr(request, "request_id", "")
    if request_id:
        return str(request_id)
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return f"gen-{uuid.uuid4()}"


class RequestContextInterceptor(UnaryInterceptor):
    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            method=method, request_id=request_id_of(request, context), peer=context.peer()
        )
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await call_next(request, context)
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
            log.info("rpc", code=_code_name(code), duration_ms=elapsed_ms)


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for status_code in grpc.StatusCode:
        if status_code.value[0] == code:
            return str(status_code.name)
    return str(code)


async def abort_with(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    await context.abort(
        code,
        status.message,
        trailing_metadata=((_STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


class ErrorMappingInterceptor(UnaryInterceptor):
    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        try:
            return await call_next(request, context)
        except DomainError as error:
            log.info("rpc refused", reason=error.reason, error=error.message)
            await abort_with(context, error.to_status())
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc failed unexpectedly")
            await abort_with(context, internal_status())


def field_path(violation: protovalidate.Violation) -> str:
    """Render a violation's field path the way AIP-193 spells it: intake.functioning[0]."""
    parts: list[str] = []
    path = violation.proto.field
    for element in path.elements if path is not None else ():
        name = element.field_name
        subscript = element.subscript
        if subscript is not None:
            key = subscript.value if subscript.field == "index" else repr(subscript.value)
            name += f"[{key}]"
        parts.append(name)
    return ".".join(parts)


@cache
def shared_validator() -> protovalidate.Validator:
    """One validator per process: it caches the compiled rules of every message type."""
    return protovalidate.Validator()


def violations_of(message: Message, validator: protovalidate.Validator) -> list[FieldViolation]:
    return [
        FieldViolation(
            field=field_path(v) or "(request)",
            description=v.proto.message or v.proto.rule_id,
            reason=v.proto.rule_id,
        )
        for v in validator.collect_violations(message)
    ]


class ValidationInterceptor(UnaryInterceptor):
    def __init__(self) -> None:
        self._validator = shared_validator()

    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        if isinstance(request, MalformedRequest):
            raise InvalidArgument(
                "the request body is not a valid protobuf message for this method",
                [FieldViolation("(body)", request.error, "request.malformed")],
            )
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            raise InvalidArgument(
                f"the request is {size} bytes; the limit is {MAX_REQUEST_BYTES}",
                [FieldViolation("(body)", "request too large", "request.too_large")],
            )
        violations = violations_of(request, self._validator)
        if violations:
            raise InvalidArgument(
                f"{len(violations)} invalid field(s): "
                + "; ".join(f"{v.field}: {v.description}" for v in violations[:5]),
                violations,
            )
        return await call_next(request, context)


def interceptor_chain() -> list[grpc.aio.ServerInterceptor]:
    return [RequestContextInterceptor(), ErrorMappingInterceptor(), ValidationInterceptor()]
