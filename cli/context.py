"""What every command needs: the cluster's settings (the same as the services'), the
caller's token, channels to the services and the Temporal client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from temporalio.client import Client

from cli.errors import RUNNING_HINT, CliError
from cli.inputs import BadInput, existing_file
from mineaction.assistance.v1 import assistance_service_pb2_grpc as assistance_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.common.channels import DEV_TOKEN_FILE, client_tls, default_token, open_channel
from services.common.config import Settings, load_settings
from workers.journey.worker import connect

# A call that takes longer than this is reported, never waited for without end.
CALL_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class Options:
    """The global options (`mineaction --token-file ... COMMAND`)."""

    token_file: Path | None = None


def settings() -> Settings:
    return load_settings()  # ConfigError names the bad variable


def token(options: Options, configured: Settings) -> str:
    if options.token_file is not None:
        path = existing_file(options.token_file, "token file")
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise BadInput(f"token file {str(path)!r} is empty")
        return _one_token(value, f"token file {str(path)!r}")
    try:
        configured_token = default_token(configured)
    except ValueError as error:  # MINEACTION_TOKEN set to spaces: say so, not the dev token
        raise BadInput(f"{error}: set it to a token, or unset it for the dev-token") from None
    if configured_token is None:  # every service call needs one: say where it was looked for
        raise BadInput(
            "no token: set MINEACTION_TOKEN or --token-file; the local cluster's dev-token "
            f"would be {configured.state_dir / DEV_TOKEN_FILE}, which does not exist (run "
            "from the cluster's folder, or set MINEACTION_STATE_DIR)"
        )
    return _one_token(configured_token, "the token (MINEACTION_TOKEN or the dev-token file)")


def _one_token(value: str, where: str) -> str:
    """A token goes in a header: no spaces or line breaks inside (gRPC would refuse the
    call with an internal error instead of saying what is wrong)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise BadInput(f"{where} must hold one token on one line, with no spaces")
    return value


@contextlib.asynccontextmanager
async def channel(
    configured: Settings, address: str, bearer: str | None
) -> AsyncIterator[grpc.aio.Channel]:
    chan = open_channel(address, bearer, tls=client_tls(configured))
    try:
        yield chan
    finally:
        await chan.close()


@contextlib.asynccontextmanager
async def eligibility(
    configured: Settings, bearer: str | None
) -> AsyncIterator[eligibility_grpc.EligibilityServiceStub]:
    async with channel(configured, configured.eligibility_address, bearer) as chan:
        yield eligibility_grpc.EligibilityServiceStub(chan)


@contextlib.asynccontextmanager
async def lending(
    configured: Settings, bearer: str | None
) -> AsyncIterator[lending_grpc.LendingServiceStub]:
    async with channel(configured, configured.lending_address, bearer) as chan:
        yield lending_grpc.LendingServiceStub(chan)


@contextlib.asynccontextmanager
async def assistance(
    configured: Settings, bearer: str | None
) -> AsyncIterator[assistance_grpc.AssistanceServiceStub]:
    async with channel(configured, configured.assistance_address, bearer) as chan:
        yield assistance_grpc.AssistanceServiceStub(chan)


async def temporal_client(configured: Settings) -> Client:
    """The same connection the worker makes (one attempt: an operator waits for no one)."""
    try:
        return await connect(configured, attempts=1)
    except (ConnectionError, RuntimeError):
        raise CliError(
            f"Temporal at {configured.effective_temporal_address} is not reachable — {RUNNING_HINT}"
        ) from None
