"""Fixtures that start the real parts the tests need.

- PostgreSQL: the server named by DATABASE_URL, or else an embedded one (pgserver) in a
  temporary folder. Each test session gets a fresh database on it.
- The three services, in-process on free ports, against that database.
- Temporal: the time-skipping test server and the dev server, both from their packaged
  binaries, never downloaded.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
import pytest_asyncio

from mineaction.assistance.v1 import assistance_service_pb2_grpc as assistance_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.assistance.service import SPEC as ASSISTANCE
from services.common.auth import ROLES, ensure_dev_credentials, mint_with_settings
from services.common.channels import open_channel, service_token
from services.common.config import Settings, load_settings
from services.common.logging import configure_logging
from services.common.server import ServiceHost, ServiceSpec
from services.eligibility.service import SPEC as ELIGIBILITY
from services.lending.service import SPEC as LENDING
from workers.journey.activities import JourneyActivities
from workers.journey.worker import open_outbox
from workers.notifications.outbox import Outbox

pytest_plugins = ["tests.temporal_fixtures"]
SCHEMAS = ("eligibility", "lending", "assistance")


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DATABASE_URL when set (an independently managed server), else embedded."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    import pgserver

    server = pgserver.get_server(  # type: ignore[attr-defined]
        tmp_path_factory.mktemp("pg"), cleanup_mode="delete"
    )
    yield str(server.get_uri())
    server.cleanup()


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest_asyncio.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"mineaction_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield with_database(postgres_server_url, name)
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    configured = load_settings(
        DATABASE_URL=database_url,
        MINEACTION_STATE_DIR=str(tmp_path_factory.mktemp("state")),
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        SHUTDOWN_GRACE_SECONDS=1,
        METRICS_PORT=0,  # in-process hosts share one process; tests/e2e/test_cluster scrapes
        # Journeys under time skipping repay and disburse months ahead of the wall clock;
        # tests/integration/test_lending_money.py checks the default on a host of its own.
        LENDING_ACCEPT_FUTURE_DATES=True,
        ELIGIBILITY_ACCEPT_FUTURE_DATES=True,
    )
    configure_logging(configured, process="tests")
    # Signing key, JWKS, dev-token and service-token in the state folder, as `make run`.
    ensure_dev_credentials(configured)
    return configured


# The default test caller: every role, so existing tests act as any staff member and,
# like the journey worker, may name the acting person in actor fields.
DEFAULT_SUBJECT = "tester"


@dataclass
class Cluster:
    """The three services running in-process, with a channel to each whose calls carry
    a token with every role (subject `tester`)."""

    hosts: dict[str, ServiceHost]
    channels: dict[str, grpc.aio.Channel]
    settings: Settings

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.hosts[name].port}"

    def token_for(self, *roles: str, subject: str = DEFAULT_SUBJECT) -> str:
        return mint_with_settings(self.settings, subject=subject, roles=roles)

    def channel(self, name: str, token: str | None) -> grpc.aio.Channel:
        """A new channel to one service carrying `token` (None: none); close it after."""
        return open_channel(self.address(name), token)

    @contextlib.asynccontextmanager
    async def second_host(
        self, spec: ServiceSpec, **settings: object
    ) -> AsyncIterator[grpc.aio.Channel]:
        """Another host of a service on the same database with these settings changed (a
        default the test cluster sets otherwise), and a channel to it with every role."""
        host = ServiceHost(spec, self.settings.model_copy(update=settings), address="127.0.0.1:0")
        await host.start()
        channel = open_channel(f"127.0.0.1:{host.port}", self.token_for(*ROLES))
        try:
            yield channel
        finally:
            await channel.close()
            await host.stop(grace=1)

    @property
    def eligibility(self) -> eligibility_grpc.EligibilityServiceStub:
        return eligibility_grpc.EligibilityServiceStub(self.channels["eligibility"])

    @property
    def lending(self) -> lending_grpc.LendingServiceStub:
        return lending_grpc.LendingServiceStub(self.channels["lending"])

    @property
    def assistance(self) -> assistance_grpc.AssistanceServiceStub:
        return assistance_grpc.AssistanceServiceStub(self.channels["assistance"])

    async def row_counts(self) -> dict[str, int]:
        """Rows in every table of every service schema (for 'nothing was written')."""
        db = self.hosts["eligibility"].db
        assert db is not None
        counts = {}
        async with db.pool.acquire() as conn:
            tables = await conn.fetch(
                """SELECT table_schema, table_name FROM information_schema.tables
                   WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE'""",
                list(SCHEMAS),
            )
            # The audit log records refused calls too, by design.
            tables = [t for t in tables if t["table_name"] != "audit_log"]
            for t in tables:
                name = f"{t['table_schema']}.{t['table_name']}"
                counts[name] = await conn.fetchval(f"SELECT count(*) FROM {name}")
        return counts


async def start_services(settings: Settings) -> Cluster:
    """The three services on free ports, with default channels (every role). The
    settings' state folder must hold the dev credentials (ensure_dev_credentials)."""
    # Each starts knowing where the ones it asks listen: eligibility asks lending whose
    # a loan is (a follow-up names one), assistance asks eligibility whether a survivor's
    # consent stands.
    hosts: dict[str, ServiceHost] = {}
    for spec, address_setting in (
        (LENDING, "lending_address"),
        (ELIGIBILITY, "eligibility_address"),
        (ASSISTANCE, "assistance_address"),
    ):
        host = hosts[spec.name] = ServiceHost(spec, settings, address="127.0.0.1:0")
        await host.start()
        settings = settings.model_copy(update={address_setting: f"127.0.0.1:{host.port}"})
    token = mint_with_settings(settings, subject=DEFAULT_SUBJECT, roles=ROLES)
    channels = {name: open_channel(f"127.0.0.1:{host.port}", token) for name, host in hosts.items()}
    return Cluster(hosts, channels, settings)


async def stop_services(cluster: Cluster) -> None:
    for channel in cluster.channels.values():
        await channel.close()
    for host in cluster.hosts.values():
        await host.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def cluster(settings: Settings) -> AsyncIterator[Cluster]:
    running = await start_services(settings)
    yield running
    await stop_services(running)


@pytest_asyncio.fixture(scope="session")
async def outbox(settings: Settings) -> AsyncIterator[Outbox]:
    box = await open_outbox(settings)
    yield box
    await box.db.close()


@pytest_asyncio.fixture(scope="session")
async def activities(cluster: Cluster, outbox: Outbox) -> AsyncIterator[JourneyActivities]:
    """The journey's activities, calling the in-process services over gRPC."""
    acts = JourneyActivities(
        cluster.address("eligibility"),
        cluster.address("lending"),
        cluster.address("assistance"),
        outbox,
        token=service_token(cluster.settings),
    )
    yield acts
    await acts.close()


@pytest.fixture
def task_queue() -> str:
    """Every test polls its own task queue, so tests never steal each other's tasks."""
    return f"tq-{uuid.uuid4()}"
