"""Client channels to the cluster's services, for the workers, the CLI, the demo, the
benchmarks and the tests: one place that knows how a caller presents its bearer token.

Every call on a channel from `open_channel` carries `authorization: Bearer <token>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from services.common.config import Settings

TOKEN_ENV = "MINEACTION_TOKEN"
DEV_TOKEN_FILE = "dev-token"


def default_token(settings: Settings) -> str | None:
    """The caller's token: MINEACTION_TOKEN, else the local cluster's dev-token file."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = settings.state_dir / DEV_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip() or None
    return None


class _BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the token to every unary call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        metadata.add(*self._header)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def open_channel(
    address: str,
    token: str | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to `address` whose calls carry `token` (None: no token)."""
    interceptors = [_BearerToken(token)] if token else None
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
