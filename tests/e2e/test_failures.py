"""When a part of the cluster is down, what depends on it says so clearly and in bounded
time, instead of hanging or printing a traceback:

- a journey activity calling a service that is not running fails with a retryable
  UNAVAILABLE at once, so the journey's retry policy takes over;
- a service started while PostgreSQL is unreachable exits with one line naming the server;
- the worker started while Temporal is unreachable exits with one line naming it.

(PostgreSQL restarting under a running service is tests/e2e/test_postgres_restart.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from temporalio.testing import ActivityEnvironment

from services.common.auth import ensure_dev_credentials
from services.common.channels import service_token
from services.common.config import load_settings
from tests.ports import closed_port
from workers.journey.activities import (
    BUSINESS_REJECTIONS,
    RPC_TIMEOUT_SECONDS,
    JourneyActivities,
)
from workers.journey.workflows import SERVICE_CALL_RETRY
from workers.notifications.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
# Variables of the developer's own shell that would point a child at a real cluster.
_INHERITED_OUT = ("DATABASE_URL", "TEMPORAL_ADDRESS", "MINEACTION_STATE_DIR", "MINEACTION_TOKEN")


def run_module(
    module: str, env: dict[str, str], *, within: float
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `python -m module` to its end; fail the test if it outlives `within` seconds."""
    child_env = {k: v for k, v in os.environ.items() if k not in _INHERITED_OUT}
    # No metrics port unless a test asks: a cluster running on this machine holds them.
    child_env["METRICS_PORT"] = "0"
    child_env.update(env)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", module],
            cwd=REPO,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=within,
            check=False,
        )
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"python -m {module} still running after {within} s: {hung.stderr!r}")
    return done, time.monotonic() - started


def state_with_credentials(tmp_path: Path) -> Path:
    """A state folder with the JWKS a service needs to start (and a dev token)."""
    state = tmp_path / "state"
    state.mkdir()
    ensure_dev_credentials(load_settings(MINEACTION_STATE_DIR=str(state)))
    return state


async def test_journey_activity_against_a_stopped_service_is_retryable_and_prompt(
    outbox: Outbox, tmp_path: Path
) -> None:
    stopped = load_settings(
        MINEACTION_STATE_DIR=str(state_with_credentials(tmp_path)),
        ELIGIBILITY_ADDRESS=f"127.0.0.1:{closed_port()}",
        LOG_FORMAT="json",
    )
    activities = JourneyActivities(
        stopped.eligibility_address,
        stopped.lending_address,
        stopped.assistance_address,
        outbox,
        token=service_token(stopped),
    )
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ActivityEnvironment().run(activities.survivor_profile, "srv-nobody-home")
        elapsed = time.monotonic() - started
    finally:
        await activities.close()

    # A transport error, not a business rejection: the activity fails retryably, and the
    # journey's policy (no non-retryable types, backoff up to a minute) retries it until
    # the service is back.
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.code() not in BUSINESS_REJECTIONS
    assert "AioRpcError" not in (SERVICE_CALL_RETRY.non_retryable_error_types or [])
    assert SERVICE_CALL_RETRY.maximum_attempts == 0
    assert elapsed < RPC_TIMEOUT_SECONDS / 2, f"took {elapsed:.2f} s to notice"


def test_service_started_without_postgres_exits_with_one_clear_line(tmp_path: Path) -> None:
    port = closed_port()
    done, elapsed = run_module(
        "services.lending",
        {
            "DATABASE_URL": f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/mineaction",
            "MINEACTION_STATE_DIR": str(state_with_credentials(tmp_path)),
            "LENDING_ADDRESS": f"127.0.0.1:{closed_port()}",
            "LOG_FORMAT": "json",
        },
        within=30,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"lending: cannot reach PostgreSQL at 127.0.0.1:{port}/mineaction")
    assert "check DATABASE_URL" in lines[0]
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_worker_whose_metrics_port_is_taken_exits_with_one_clear_line(tmp_path: Path) -> None:
    """A second worker started beside a running one (the same metrics port) says so and
    how to fix it, instead of a traceback from the Temporal runtime."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done, elapsed = run_module(
            "workers",
            {
                "METRICS_PORT": str(port),
                "METRICS_HOST": "127.0.0.1",
                "MINEACTION_STATE_DIR": str(state_with_credentials(tmp_path)),
                "LOG_FORMAT": "json",
            },
            within=30,
        )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"worker: cannot serve metrics on 127.0.0.1:{port}: "), lines
    assert "set METRICS_PORT to a free port (0 turns the worker's metrics off)" in lines[0]
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_worker_started_without_temporal_exits_with_one_clear_line(tmp_path: Path) -> None:
    port = closed_port()
    done, elapsed = run_module(
        "workers",
        {
            "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
            "MINEACTION_STATE_DIR": str(state_with_credentials(tmp_path)),
            "LOG_FORMAT": "json",
            # One attempt a second, so that a Temporal started alongside it has time to
            # come up; then it gives up.
            "TEMPORAL_CONNECT_TIMEOUT_SECONDS": "3",
        },
        within=30,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"worker: cannot reach Temporal at 127.0.0.1:{port}: "), lines
    assert "Traceback" not in done.stderr
    assert elapsed < 20, f"took {elapsed:.1f} s"
