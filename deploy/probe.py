"""Container probes, shipped in the image as /opt/mineaction/probe.py.

    python /opt/mineaction/probe.py grpc 127.0.0.1:50051   # a service: gRPC health SERVING?
    python /opt/mineaction/probe.py worker ready            # the journey worker: polling?
    python /opt/mineaction/probe.py worker live

Kubernetes probes the services' gRPC health natively (`grpc:` probes); the `grpc` mode is
for docker compose, whose health checks can only run a command.

The journey worker serves no gRPC health. It polls Temporal with the SDK's default
identity, `<pid>@<hostname>`, and the probe runs in the same container, so with the same
hostname. The probe asks the Temporal frontend which pollers it has seen lately on the
journey task queue (workflow or activity tasks):

- `worker ready` passes when this container's worker is among them;
- `worker live` fails only when Temporal answers and this container's worker is *not*
  among them (stuck, or not polling). When Temporal itself does not answer, it passes, so
  an outage of Temporal never restarts every worker at once.

Exit code 0 passes, 1 fails, 2 is a usage error. It reads the same environment as the
worker (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, JOURNEY_TASK_QUEUE, PAYLOAD_KEYS_FILE).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from datetime import timedelta

from services.common.config import ConfigError, load_settings

TIMEOUT_SECONDS = 5.0


def grpc_serving(address: str) -> bool:
    import grpc  # each mode imports only what it needs
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            print(f"probe: {address}: {error.code().name}", file=sys.stderr)
            return False
    serving: bool = response.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"probe: {address}: not serving", file=sys.stderr)
    return serving


async def worker_polling_here() -> bool | None:
    """True if this container's worker polls the task queue, False if not, None if
    Temporal did not answer."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    from workers.codec import KeyringError, data_converter

    settings = load_settings()
    try:  # the worker's own converter (the probe reads no payload, but stays consistent)
        converter = data_converter(settings)
    except KeyringError as error:
        raise ConfigError(str(error)) from None
    suffix = "@" + socket.gethostname()
    try:
        client = await asyncio.wait_for(
            Client.connect(
                settings.effective_temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=converter,
            ),
            TIMEOUT_SECONDS,
        )
        for kind in (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ):
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=settings.journey_task_queue),
                    task_queue_type=kind,
                ),
                timeout=timedelta(seconds=TIMEOUT_SECONDS),
            )
            if any(poller.identity.endswith(suffix) for poller in response.pollers):
                return True
    except Exception as error:
        print(f"probe: Temporal did not answer: {error}", file=sys.stderr)
        return None
    print("probe: no poller from this container on the task queue", file=sys.stderr)
    return False


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "grpc":
        return 0 if grpc_serving(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "worker" and argv[1] in ("ready", "live"):
        try:
            state = asyncio.run(worker_polling_here())
        except ConfigError as error:
            print(f"probe: {error}", file=sys.stderr)
            return 1
        return 0 if state is True or (argv[1] == "live" and state is None) else 1
    print("usage: probe.py grpc HOST:PORT | probe.py worker ready|live", file=sys.stderr)
    return 2


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: native threads of the gRPC and Temporal runtimes can
    # abort it (SIGABRT, exit 134), which would turn a passing probe into a failing one.
    os._exit(code)
