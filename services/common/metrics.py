"""Prometheus metrics: what each process serves on its /metrics port.

- The services count every RPC and time it, by service, method and status code
  (`mineaction_rpc_requests_total`, `mineaction_rpc_duration_seconds`), plus the
  database pool's size and idle connections.
- The worker's port is served by the Temporal SDK's own Prometheus exporter (workflow
  and activity task latencies, poll counts, cache sizes, ...), so one port carries both
  the SDK's runtime metrics and the worker's own.

Ports: METRICS_BASE_PORT (9101) plus the process's offset, so 9101 eligibility,
9102 lending, 9103 assistance, 9104 worker; METRICS_PORT sets one process's port
outright (as in Kubernetes, one process per pod); 0 turns metrics off.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from services.common.config import Settings

PORT_OFFSETS = {"eligibility": 0, "lending": 1, "assistance": 2, "worker": 3}

RPC_REQUESTS = Counter(
    "mineaction_rpc_requests",
    "gRPC calls handled, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "mineaction_rpc_duration_seconds",
    "Time to handle a gRPC call, by service, method and status code.",
    ["service", "method", "code"],
    # From a cached read (~1 ms) to a portfolio report (~1 s) and beyond.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DB_POOL_CONNECTIONS = Gauge(
    "mineaction_db_pool_connections",
    "Connections in the service's PostgreSQL pool, by state.",
    ["service", "state"],
)


def observe_rpc(full_method: str, code: str, seconds: float) -> None:
    """Record one call; `full_method` is gRPC's '/package.Service/Method'."""
    requests, duration = _rpc_series(full_method, code)
    requests.inc()
    duration.observe(seconds)


@functools.cache  # a series per method and status code, as many as Prometheus keeps
def _rpc_series(full_method: str, code: str) -> tuple[Counter, Histogram]:
    service, _, method = full_method.lstrip("/").partition("/")
    return RPC_REQUESTS.labels(service, method, code), RPC_DURATION.labels(service, method, code)


def watch_pool(service: str, size: Callable[[], int], idle: Callable[[], int]) -> None:
    """Pool gauges are read when Prometheus scrapes, never pushed."""
    DB_POOL_CONNECTIONS.labels(service, "open").set_function(size)
    DB_POOL_CONNECTIONS.labels(service, "idle").set_function(idle)


def metrics_port(settings: Settings, process: str) -> int:
    if settings.metrics_port is not None:
        return settings.metrics_port
    base = settings.metrics_base_port
    return base + PORT_OFFSETS[process] if base else 0


class MetricsEndpoint:
    """The /metrics HTTP server of a service process (a daemon thread)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(settings: Settings, process: str) -> MetricsEndpoint | None:
    """Start /metrics on the process's port; None when metrics are turned off."""
    port = metrics_port(settings, process)
    if port == 0:
        return None
    server, thread = start_http_server(port, addr=settings.metrics_host)
    return MetricsEndpoint(server, thread)


def temporal_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime whose Prometheus exporter serves the worker's metrics port,
    or None (the SDK's default runtime) when metrics are turned off."""
    port = metrics_port(settings, "worker")
    if port == 0:
        return None
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=f"{settings.metrics_host}:{port}", durations_as_seconds=True
            )
        )
    )
