"""Temporal for the tests: the time-skipping test server and the dev server, both from
their packaged binaries (never downloaded), with the journey's search attributes.

Every client here encrypts its payloads with a temporary keyring (workers.codec), the
same one the worker processes that tests start find through PAYLOAD_KEYS_FILE."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from workers.codec import EncryptionCodec, data_converter_for, ensure_keyring
from workers.journey import search_attributes

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def payload_keys_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A keyring for this test session. PAYLOAD_KEYS_FILE names it while the session
    runs, so `python -m workers` started by a test encrypts under the same keys."""
    path = tmp_path_factory.mktemp("keys") / "payload-keys.json"
    ensure_keyring(path)
    before = os.environ.get("PAYLOAD_KEYS_FILE")
    os.environ["PAYLOAD_KEYS_FILE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("PAYLOAD_KEYS_FILE", None)
    else:
        os.environ["PAYLOAD_KEYS_FILE"] = before


@pytest.fixture(scope="session")
def encrypting_converter(payload_keys_file: Path) -> DataConverter:
    return data_converter_for(EncryptionCodec.from_file(payload_keys_file))


@contextlib.asynccontextmanager
async def time_skipping_server(converter: DataConverter) -> AsyncIterator[WorkflowEnvironment]:
    """The installed time-skipping test server, with the journeys' search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"), data_converter=converter
    )
    try:
        await search_attributes.register(env.client, env.client.namespace)
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="module")
async def time_skipping_env(
    encrypting_converter: DataConverter,
) -> AsyncIterator[WorkflowEnvironment]:
    """A test server per module: its clock starts at today. Shared by the whole session,
    the years each module skipped added up (2048 by the payload test), and a survivor
    born in 1981 had grown too old for a loan by the time a later module met them."""
    async with time_skipping_server(encrypting_converter) as env:
        yield env


@pytest_asyncio.fixture(scope="session")
async def dev_server_env(encrypting_converter: DataConverter) -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (the one `make run` uses), with our attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=search_attributes.ALL,
        dev_server_log_level="error",
        data_converter=encrypting_converter,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def dev_client(dev_server_env: WorkflowEnvironment) -> Client:
    return dev_server_env.client
