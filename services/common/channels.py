"""Client channels to the cluster's services, for the workers, the CLI, the demo, the
benchmarks and the tests: one place that knows how a caller presents its bearer token.

Every call on a channel from `open_channel` carries `authorization: Bearer <token>`.
With TLS_CA_FILE set (see `client_tls`), channels use TLS, presenting the client
certificate when TLS_CLIENT_CERT_FILE/TLS_CLIENT_KEY_FILE are set (mutual TLS).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from services.common.config import ConfigError, Settings
from services.common.tracing import client_interceptors

TOKEN_ENV = "MINEACTION_TOKEN"
DEV_TOKEN_FILE = "dev-token"


def default_token(settings: Settings) -> str | None:
    """The caller's token: MINEACTION_TOKEN, else the local cluster's dev-token file. A
    MINEACTION_TOKEN set to nothing but spaces is not "no token": it is refused, so a
    token that failed to load never passes as the development token."""
    given = os.environ.get(TOKEN_ENV)
    if given is not None and given and not given.strip():
        raise ValueError(f"{TOKEN_ENV} is set but blank")
    token = (given or "").strip()
    if token:
        return token
    path = settings.state_dir / DEV_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip() or None
    return None


# A bearer token, or where to get it for each call (TokenFile).
Token = str | Callable[[], str]


class TokenFile:
    """A token as its file says now: read again when the file changes, so that a token
    re-minted (or a mounted Secret updated) reaches running processes without a restart.
    While the file cannot be read, or is empty, the token read last goes on."""

    def __init__(self, path: Path, token: str) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = token  # as read at start

    def __call__(self) -> str:
        try:
            status = self._path.stat()
        except OSError:
            return self._token
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        if stamp != self._stamp:
            try:
                token = self._path.read_text().strip()
            except OSError:
                return self._token
            if token:
                self._token, self._stamp = token, stamp
        return self._token


def service_token(settings: Settings) -> Token:
    """This process's own token (role `service`): SERVICE_TOKEN, else SERVICE_TOKEN_FILE
    (read again whenever it changes). A file that cannot be read, or is empty, at start
    is refused here."""
    if settings.service_token:
        return settings.service_token.strip()
    path = settings.effective_service_token_file
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"SERVICE_TOKEN_FILE: cannot read {path}: {error.strerror}") from None
    if not token:
        raise ConfigError(f"SERVICE_TOKEN_FILE: {path} is empty")
    return TokenFile(path, token)


def client_tls(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS credentials for channels to the services, or None for plaintext."""
    if settings.tls_ca_file is None:
        return None
    try:
        root = settings.tls_ca_file.read_bytes()
        cert = settings.tls_client_cert_file.read_bytes() if settings.tls_client_cert_file else None
        key = settings.tls_client_key_file.read_bytes() if settings.tls_client_key_file else None
    except OSError as error:
        raise ConfigError(f"cannot read a TLS file: {error}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


class _BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the token to every unary call's metadata."""

    def __init__(self, token: Token) -> None:
        self._token = token if callable(token) else lambda: token

    @property
    def _header(self) -> tuple[str, str]:
        return ("authorization", f"Bearer {self._token()}")

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
    token: Token | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    tls: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `address` whose calls carry `token` (None: no token), over
    TLS when `tls` is given (see `client_tls`), traced when tracing is on."""
    interceptors = [*client_interceptors(), *([_BearerToken(token)] if token else [])] or None
    if tls is not None:
        return grpc.aio.secure_channel(
            address, tls, options=list(options), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
