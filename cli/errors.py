"""Every failure the operator can meet, as one line on stderr and a non-zero exit code:
bad input (exit 2, refused before any call), gRPC status codes and Temporal errors
(exit 1). Never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from temporalio.client import (
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cli.inputs import BadInput
from services.common.config import ConfigError
from services.common.errors import violations_in

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
RUNNING_HINT = "is the cluster running (make run)?"


class CliError(Exception):
    """A failure explained in one line."""


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _grpc_line(error: grpc.aio.AioRpcError, service: str, address: str) -> str:
    code = error.code()
    details = one_line(error.details() or "")
    where = f"the {service} service at {address}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{where} is not reachable — {RUNNING_HINT}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{where} did not answer in time — {RUNNING_HINT}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"{where} refused the call as unauthenticated ({details or 'no valid token'}) — "
            "set MINEACTION_TOKEN or --token-file (the local cluster writes "
            "<state dir>/dev-token)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied by the {service} service: {details or 'your role may not'}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The fields at fault, where the message does not already name them.
        named = "; ".join(
            f"{v.field}: {v.description}"
            for v in violations_in(error)
            if f"{v.field}: {v.description}" not in details
        )
        return f"the {service} service refused the request: {details}" + (
            f" ({named})" if named else ""
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return f"not found: {details}"
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return f"refused: {details}"
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return f"already exists: {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"the {service} service is overloaded or the request too large: {details}"
    return f"the {service} service failed ({code.name}): {details or 'no details'}"


@contextlib.contextmanager
def calling(service: str, address: str) -> Iterator[None]:
    """Turn a gRPC error from `service` into a CliError with one clear line."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise CliError(_grpc_line(error, service, address)) from None


def _root_message(error: BaseException) -> str:
    """The innermost failure's message: a validator's refusal, or the service's answer
    under "Activity task failed" (an update whose activity the service refused)."""
    message = ""
    current: BaseException | None = error
    while current is not None:
        text = current.message if isinstance(current, FailureError) else str(current)
        if text:
            message = text
        current = current.cause if isinstance(current, FailureError) else None
    return one_line(message)


_WAITING_ON = (
    "is the journey worker running, and are the services its step calls answering? "
    "(mineaction health)"
)


@contextlib.contextmanager
def temporal(address: str, what: str = "", refuser: str = "the journey") -> Iterator[None]:
    """Turn a Temporal client error into a CliError with one clear line."""
    try:
        yield
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        message = _root_message(cause) if cause is not None else one_line(str(error))
        raise CliError(f"{refuser} refused it: {message}") from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, RPCTimeoutOrCancelledError):
        # The update waits on the worker, and the worker on the service its step calls.
        raise CliError(
            f"{what or 'the workflow'} did not answer in time — {_WAITING_ON}. An update "
            "already sent is applied once they answer: check `mineaction journey status` "
            "before retrying"
        ) from None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as error:
        raise CliError(f"the journey could not answer: {one_line(str(error))}") from None
    except WorkflowAlreadyStartedError:
        raise CliError(f"{what or 'the workflow'} is already running") from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"{what or 'the workflow'} was not found") from None
        if error.status == RPCStatusCode.UNAVAILABLE:
            raise CliError(f"Temporal at {address} is not reachable — {RUNNING_HINT}") from None
        if error.status == RPCStatusCode.DEADLINE_EXCEEDED:
            # Connected, so Temporal is up: a query or update waits for a worker.
            raise CliError(
                f"{what or 'the workflow'} did not answer in time — {_WAITING_ON}"
            ) from None
        if error.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
            raise CliError(f"Temporal refused the call: {one_line(error.message)}") from None
        raise CliError(
            f"Temporal at {address} failed ({error.status.name}): {one_line(error.message)}"
        ) from None


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine; every failure becomes one line and an exit code."""
    try:
        return asyncio.run(coro)
    except BadInput as error:
        fail(str(error), EXIT_BAD_INPUT)
    except ConfigError as error:
        fail(str(error), EXIT_BAD_INPUT)
    except CliError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        # The reader stopped reading (`mineaction export ... | head`): nothing is wrong.
        # Standard output goes nowhere from now on, so that exiting does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except grpc.aio.AioRpcError as error:  # a call outside `calling` (a bug, but say it well)
        fail(f"a service call failed ({error.code().name}): {error.details()}")
    except Exception as error:
        fail(f"unexpected failure ({type(error).__name__}): {error}")
