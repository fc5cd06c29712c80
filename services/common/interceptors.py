"""The one interceptor chain every service process runs, outermost first:

1. request context: starts the call's log context (method, request_id, peer; see
   services/common/logging.py), logs one line per call with its status code and
   duration, and counts and times it for Prometheus;
2. error mapping: domain errors become their status codes with google.rpc details;
   anything unexpected is logged with its trace and becomes a bare INTERNAL;
3. authentication: the bearer token is verified (UNAUTHENTICATED otherwise); only the
   health and reflection services are open;
4. audit: every mutating call of an authenticated caller is recorded with its outcome,
   refusals included;
5. authorization: the access policy's roles for the method (PERMISSION_DENIED
   otherwise, and for any method the policy does not list), and the request's actor
   field bound to the caller's identity;
6. validation: protovalidate on every request, and values PostgreSQL cannot store (a
   NUL character, a number that is not finite: services/common/storable.py); violations
   become INVALID_ARGUMENT with google.rpc.BadRequest field violations, before any
   handler code runs.

Only unary-unary methods are wrapped: the project's APIs are all unary, and the health
and reflection services' streams pass through untouched. Any other streaming method is
not served. The steps are composed around each method once, when it is registered
(StepChain, GuardedServer): grpc.aio runs no interceptor of ours per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
import protovalidate
import structlog
from google.protobuf.message import Message
from google.rpc import status_pb2

from services.common import audit
from services.common.audit import AuditLog, AuditRecord, is_mutating, resource_ids
from services.common.auth import AccessPolicy, Principal, TokenVerifier
from services.common.encoded import serializer_passing_encoded
from services.common.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    internal_status,
    invalid_fields,
)
from services.common.identity import same_person
from services.common.logging import add_to_call_log, start_call_log
from services.common.metrics import observe_rpc
from services.common.storable import (
    kept,
    kept_request_id,
    kept_trace_id,
    may_hold_unstorable,
    spelled_out,
    unstorable_values,
)

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
    mutating: bool = False  # for a method whose requests carry a request_id: audited


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None or getattr(deserializer, "tolerant", False):
        return deserializer
    # A generated message's FromString is bound to its class.
    request_type = getattr(deserializer, "__self__", None)
    mutating = (
        isinstance(request_type, type)
        and issubclass(request_type, Message)
        and "request_id" in request_type.DESCRIPTOR.fields_by_name
    )

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return MalformedRequest(str(error), mutating)

    deserialize.tolerant = True  # type: ignore[attr-defined]
    return deserialize


class UnaryInterceptor:
    """One step of the chain: subclasses implement `around`, which wraps one unary call.
    StepChain composes the steps around each method."""

    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        raise NotImplementedError


def request_id_of(request: Any, context: grpc.aio.ServicerContext) -> str:
    """The caller's request_id field, else the x-request-id header, else a fresh id. The
    field is made canonical first, in the request itself: a UUID names the same request
    whatever the case of its letters, so the idempotency key, the audit entry and the
    logs all see its lower-case form (a retry in capitals got a second effect)."""
    request_id = getattr(request, "request_id", "")
    if request_id:
        if isinstance(request_id, str) and not request_id.islower():
            request_id = request.request_id = request_id.lower()
        return kept_request_id(str(request_id))
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return kept_trace_id(str(value))
    return f"gen-{uuid.uuid4()}"


class RequestContextInterceptor(UnaryInterceptor):
    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        start_call_log(
            method=method, request_id=request_id_of(request, context), peer=context.peer()
        )
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await call_next(request, context)
        except asyncio.CancelledError:  # the caller went away (its deadline, a shutdown)
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed = time.perf_counter() - started
            code_name = _code_name(code)
            observe_rpc(method, code_name, elapsed)
            log.info("rpc", code=code_name, duration_ms=round(elapsed * 1000, 3))


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


# A rule across fields (a message's own `cel`) is reported on the field to correct, not
# on the message; tests/unit/test_validation.py checks that every such rule is here.
CROSS_FIELD_RULES = {
    "assess_eligibility.reassessment_reason": "reassessment_reason",
    "assess_eligibility.reassessment_reason_alone": "reassessment_reason",
    "list_assessments.date_range": "to_date",
    "list_audit_entries.time_range": "end_time",
    "loan_product.amount_range": "max_amount_minor",
    "pause_delinquency.date_range": "end_date",
    "survivor_intake.dependants_lt_household_size": "dependants",
    "survivor_intake.incident_after_birth": "incident_date",
    "survivor_intake.preferred_language_spoken": "preferred_language",
}


def violations_of(message: Message, validator: protovalidate.Validator) -> list[FieldViolation]:
    violations = []
    for v in validator.collect_violations(message):
        path = field_path(v)
        blamed = CROSS_FIELD_RULES.get(v.proto.rule_id)
        if blamed is not None:
            path = f"{path}.{blamed}" if path else blamed
        violations.append(
            FieldViolation(
                field=path or "(request)",
                description=v.proto.message or v.proto.rule_id,
                reason=v.proto.rule_id,
            )
        )
    return violations


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
        if may_hold_unstorable(request):
            violations += unstorable_values(request)
        if violations:
            raise invalid_fields(violations)
        return await call_next(request, context)


@dataclass
class Caller:
    """The verified caller of the current RPC, shared by the steps of the chain."""

    principal: Principal
    on_behalf_of: str = ""  # the staff member a relaying service named


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    return _caller.get()


def bearer_token(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "the authorization header must be 'Bearer <token>'", reason="TOKEN_MISSING"
                )
            return token.strip()
    raise Unauthenticated(
        "no bearer token: send the header 'authorization: Bearer <token>'",
        reason="TOKEN_MISSING",
    )


class AuthenticationInterceptor(UnaryInterceptor):
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        principal = self._verifier.verify(bearer_token(context))
        token = _caller.set(Caller(principal))
        add_to_call_log(subject=principal.subject)
        try:
            return await call_next(request, context)
        finally:
            _caller.reset(token)


class AuditInterceptor(UnaryInterceptor):
    def __init__(self, audit_log: AuditLog) -> None:
        self._audit = audit_log

    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        caller = current_caller()
        # A body that does not parse, sent to a mutating method, is audited too (its
        # refusal, whatever refuses it), without the ids it could not give.
        malformed = isinstance(request, MalformedRequest)
        if caller is None or not (is_mutating(request) or (malformed and request.mutating)):
            return await call_next(request, context)

        def entry(code: str, reason: str) -> AuditRecord:
            # Built when written: authorization fills in on_behalf_of after this step.
            return AuditRecord(
                subject=spelled_out(caller.principal.subject),
                roles=sorted(caller.principal.roles),
                method=method,
                # A refused request's ids may hold a NUL, which no text column stores, or
                # be megabytes long: kept as the logs keep them.
                request_id="" if malformed else kept_request_id(str(request.request_id)),
                resource_ids={}
                if malformed
                else {k: kept(v) for k, v in resource_ids(request).items()},
                code=code,
                reason=reason,
                on_behalf_of=kept(caller.on_behalf_of),
            )

        pending = audit.PendingAudit(entry)
        scope = audit.begin_call(pending)
        code, reason = "OK", ""
        try:
            return await call_next(request, context)
        except DomainError as error:
            code, reason = error.code.name, error.reason
            raise
        except grpc.aio.AbortError:
            code = _code_name(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            audit.end_call(scope)
            # Written with the effect and committed: done. Anything else (a refusal, a
            # replayed answer, a failure, even after a commit) gets its own entry.
            if not (pending.committed and code == "OK"):
                await self._record(entry(code, reason))

    async def _record(self, entry: AuditRecord) -> None:
        try:
            await self._audit.record(entry)
        except Exception:
            log.exception("audit entry not recorded", code=entry.code)
            if entry.code == "OK":
                # No acknowledged change goes unaudited: the caller retries with the
                # same request_id, gets the same answer, and that call is recorded.
                raise Unavailable(
                    "the call could not be audited; retry with the same request_id",
                    reason="AUDIT_UNAVAILABLE",
                ) from None


class AuthorizationInterceptor(UnaryInterceptor):
    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    async def around(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, call_next: Handler
    ) -> Any:
        caller = current_caller()
        if caller is None:  # an open method
            return await call_next(request, context)
        principal = caller.principal
        rule = self._policy.rule(method)
        if rule is None:
            raise PermissionDenied(
                f"{method} is not in the access policy", reason="METHOD_NOT_ALLOWED"
            )
        if not principal.roles & rule.roles:
            raise PermissionDenied(
                f"{method.rsplit('/', 1)[-1]} needs one of the roles "
                f"{', '.join(sorted(rule.roles))}; the token has "
                f"{', '.join(sorted(principal.roles)) or 'none'}",
                reason="ROLE_NOT_ALLOWED",
            )
        if rule.actor_field and isinstance(request, Message):
            caller.on_behalf_of = bind_actor(request, rule.actor_field, principal)
        return await call_next(request, context)


def bind_actor(request: Message, path: str, principal: Principal) -> str:
    """Make the request's actor field name the caller. Staff: empty means themselves, and
    anyone else is refused. A relaying service may name the staff member it acts for;
    returns that name ("" when the caller acts as itself)."""
    *parents, name = path.split(".")
    message = request
    for part in parents:
        message = getattr(message, part)
    named = str(getattr(message, name))
    if not named:
        setattr(message, name, principal.subject)
        return ""
    if same_person(named, principal.subject):
        # Recorded as the token spells it, however typed (RUSTAM, a ligature): the
        # records name one person one way.
        setattr(message, name, principal.subject)
        return ""
    if principal.relays:
        return named
    raise PermissionDenied(
        f"{path} must be empty or your own identity ({principal.subject}); only a service "
        "may act for someone else",
        reason="ACTOR_NOT_CALLER",
        metadata={"field": path},
    )


class StepChain:
    """The steps above around every unary method of a server, composed once per method
    when its handlers are registered (GuardedServer): no gRPC interceptor, which grpc.aio
    would consult with a coroutine of its own on every call. The behaviour is the steps',
    in order; health and reflection skip authentication (and so the steps that need a
    caller pass them through), and a streaming method outside them is not served."""

    def __init__(self, steps: list[UnaryInterceptor], policy: AccessPolicy) -> None:
        self._steps = steps
        self._policy = policy

    def guard(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        is_open = self._policy.is_open(method)
        if handler is None or handler.unary_unary is None:
            return handler if is_open else None
        call: Handler = handler.unary_unary
        for step in reversed(self._steps):
            if not (is_open and isinstance(step, AuthenticationInterceptor)):
                # A partial, not a wrapping coroutine: one coroutine per step and call.
                call = functools.partial(step.around, method, call_next=call)
        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=serializer_passing_encoded(handler.response_serializer),
        )


class _GuardedHandlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A service's generic handlers, each method behind the chain (built on first call)."""

    def __init__(self, inner: grpc.GenericRpcHandler, chain: StepChain) -> None:
        self._inner = inner
        self._chain = chain
        # method: (the service's handler, the guarded one)
        self._built: dict[str, tuple[Any, Any]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        built = self._built.get(details.method)
        if built is None or built[0] is not handler:
            built = self._built[details.method] = (
                handler,
                self._chain.guard(details.method, handler),
            )
        return built[1]


class GuardedServer:
    """Where the services register their handlers on a grpc.aio server: every handler
    added through it runs behind the chain. Generated `add_..._to_server` functions and
    the health and reflection services take it in place of the server."""

    def __init__(self, server: grpc.aio.Server, chain: StepChain) -> None:
        self._server = server
        self._chain = chain

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedHandlers(handler, self._chain) for handler in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: guarded
                for name, handler in handlers.items()
                if (guarded := self._chain.guard(f"/{service_name}/{name}", handler)) is not None
            },
        )


def interceptor_chain(
    verifier: TokenVerifier, policy: AccessPolicy, audit_log: AuditLog
) -> StepChain:
    steps: list[UnaryInterceptor] = [
        RequestContextInterceptor(),
        ErrorMappingInterceptor(),
        AuthenticationInterceptor(verifier),
        AuditInterceptor(audit_log),
        AuthorizationInterceptor(policy),
        ValidationInterceptor(),
    ]
    return StepChain(steps, policy)
