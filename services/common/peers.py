"""Asking another service of the cluster what its records say, with this service's own
token (role `service`): eligibility asks lending whose a loan is; assistance asks
eligibility whether a survivor's consent stands. Either check refuses the call it guards
when the other service cannot answer (UNAVAILABLE: retry), never lets it through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from services.common.auth import AuthConfigError
from services.common.channels import client_tls, open_channel, service_token
from services.common.config import ConfigError, Settings
from services.common.errors import Unavailable

# A check answers within this, or the call it guards is refused as UNAVAILABLE.
CHECK_TIMEOUT_SECONDS = 5.0
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


def open_peer(
    settings: Settings, address: str, purpose: str, resources: AsyncExitStack
) -> grpc.aio.Channel:
    """A channel to another service carrying the service token, closed with `resources`;
    `purpose` says why, for the error when the token cannot be read."""
    try:
        token, tls = service_token(settings), client_tls(settings)
    except ConfigError as error:
        raise AuthConfigError(f"{purpose} with the service token: {error}") from None
    channel = open_channel(address, token, tls=tls)
    resources.push_async_callback(channel.close)
    return channel


async def ask(
    rpc: Callable[..., Awaitable[Response]],
    request: Request,
    *,
    cannot_say: str,
    asking: str,
    unknown: Exception | None = None,
) -> Response:
    """rpc(request). Raises `unknown`, if given, when the other service has no such record
    (NOT_FOUND, or an id it cannot hold); Unavailable ("`cannot_say` now; try again")
    when it cannot answer in time. Any other refusal (this service's token refused, a
    fault over there) is an operator's to fix, not the caller's to retry: RuntimeError
    (INTERNAL, logged), naming `asking` ("eligibility's GetLoan to lending")."""
    try:
        return await rpc(request, timeout=CHECK_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        unknown_record = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        if unknown is not None and error.code() in unknown_record:
            raise unknown from None
        if error.code() in _TRANSIENT:
            raise Unavailable(f"{cannot_say} now ({error.code().name}); try again") from None
        raise RuntimeError(f"{asking} refused ({error.code().name}): {error.details()}") from None
