"""gRPC server start-up shared by the three services.

Each service describes itself with a ServiceSpec; ServiceHost runs it: migrations, the
pool, a grpc.aio server with the interceptor chain (authentication, audit, authorization
included), the audit service over the service's own audit log, the standard health
service and server reflection, TLS when configured (mutual when a client CA is set), and
graceful shutdown on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import audit
from services.common.auth import AccessPolicy, AuthConfigError, TokenVerifier
from services.common.config import ConfigError, Settings, load_settings
from services.common.db import Database, MigrationError, database_url
from services.common.interceptors import GuardedServer, interceptor_chain
from services.common.logging import configure_logging
from services.common.metrics import MetricsEndpoint, metrics_port, serve_metrics, watch_pool
from services.common.tracing import configure_tracing, server_interceptors

log = structlog.get_logger("mineaction.server")

# Transport limit; the validation step refuses anything above 1 MiB with field details.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
CONNECTION_AGE_GRACE_MS = 30 * 1000  # in-flight calls on an aged-out connection may finish


class PortInUse(Exception):
    def __init__(self, address: str) -> None:
        super().__init__(f"cannot listen on {address}: the port is already in use")


@dataclass(frozen=True)
class ServiceSpec:
    """What a service brings: its names, its migrations and how to attach its servicer
    (`attach` may also load reference data, once the migrations have run)."""

    name: str  # short name, also the database schema
    full_name: str  # the proto service, e.g. mineaction.lending.v1.LendingService
    migrations_dir: Path
    # Attaches the servicer; what it opens for the process's life (a channel to another
    # service) it leaves on the exit stack, which the host closes when it stops.
    attach: Callable[[GuardedServer, Database, Settings, AsyncExitStack], Awaitable[None]]
    address: Callable[[Settings], str]


class ServiceHost:
    """One running service: start() binds and serves, stop() drains and closes."""

    def __init__(self, spec: ServiceSpec, settings: Settings, *, address: str | None = None):
        self.spec = spec
        self.settings = settings
        self.address = address or spec.address(settings)
        self.port = 0
        self.db: Database | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._metrics: MetricsEndpoint | None = None
        self._resources = AsyncExitStack()

    async def start(self) -> int:
        # Keys, policy and certificates first: a process that cannot check callers must
        # not start at all (AuthConfigError names the file).
        verifier = TokenVerifier.from_settings(self.settings)
        policy = AccessPolicy.load()
        credentials = server_credentials(self.settings)
        self.db = await Database.open(
            database_url(self.settings),
            self.spec.name,
            self.spec.migrations_dir,
            min_size=self.settings.db_pool_min_size,
            max_size=self.settings.db_pool_max_size,
        )
        try:
            return await self._serve(verifier, policy, credentials, self.db)
        except BaseException:  # nothing it opened outlives a start that failed
            await self._close()
            raise

    async def _serve(
        self,
        verifier: TokenVerifier,
        policy: AccessPolicy,
        credentials: grpc.ServerCredentials | None,
        db: Database,
    ) -> int:
        await audit.apply_migrations(db)
        grpc_server = grpc.aio.server(
            interceptors=server_interceptors(),  # tracing, when on: it times it all
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                # Clients reconnect now and then, so new replicas get their share of calls.
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
            ],
        )
        # Every handler registered through it runs behind the chain (authentication,
        # audit, authorization, validation included).
        server = GuardedServer(grpc_server, interceptor_chain(verifier, policy, audit.AuditLog(db)))
        await self.spec.attach(server, db, self.settings, self._resources)
        audit.attach(server, db)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                self.spec.full_name,
                audit.SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            self.port = (
                grpc_server.add_secure_port(self.address, credentials)
                if credentials is not None
                else grpc_server.add_insecure_port(self.address)
            )
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise PortInUse(self.address)
        try:
            self._metrics = serve_metrics(self.settings, self.spec.name)
        except OSError as error:
            port = metrics_port(self.settings, self.spec.name)
            raise PortInUse(f"{self.settings.metrics_host}:{port} (metrics)") from error
        watch_pool(self.spec.name, db.pool.get_size, db.pool.get_idle_size)
        try:
            await grpc_server.start()
        except BaseException:
            await grpc_server.stop(None)  # releases the port it bound
            raise
        # Everything loaded so far (modules, descriptors, plugins, pools) lives as long as
        # the process: keep it out of the garbage collector's full passes.
        gc.freeze()
        self._server = grpc_server
        for name in ("", self.spec.full_name, audit.SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("service started", service=self.spec.name, address=self.address, port=self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: report NOT_SERVING, let in-flight calls finish, close."""
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(
                self.settings.shutdown_grace_seconds if grace is None else grace
            )
            self._server = None
        await self._close()
        log.info("service stopped", service=self.spec.name)

    async def _close(self) -> None:
        """Close what start() opened: the metrics endpoint, the servicer's resources (a
        channel to another service), the database pool."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        await self._resources.aclose()
        if self.db is not None:
            await self.db.close()
            self.db = None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when TLS_CERT_FILE/TLS_KEY_FILE are set; with TLS_CLIENT_CA_FILE, callers must
    also present a certificate that CA signed (mutual TLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        chain = settings.tls_cert_file.read_bytes()
        key = settings.tls_key_file.read_bytes()
        client_ca = (
            settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        )
    except OSError as error:
        raise AuthConfigError(f"cannot read a TLS file: {error}") from None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve_until_signalled(host: ServiceHost) -> None:
    await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown requested", service=host.spec.name)
    await host.stop()


def main(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`."""
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"{spec.name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, process=spec.name)
    configure_tracing(settings, spec.name)
    try:
        asyncio.run(serve_until_signalled(ServiceHost(spec, settings)))
    except (PortInUse, MigrationError, AuthConfigError, OSError) as error:
        print(f"{spec.name}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
