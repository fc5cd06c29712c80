"""Our processes start other programs while gRPC calls are in flight (the cluster starts
PostgreSQL's tools and the services; the tests and `simulate` start scratch databases).
With gRPC's fork support on, a forked child could crash before it ran its program; the
`services` package, imported first by every entry point, turns it off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, subprocess
import services  # as every entry point: before gRPC loads
import grpc

async def main():
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/none.Such/Method")

    async def calls():
        while True:
            try:
                await call(b"x", timeout=0.05)
            except grpc.aio.AioRpcError:
                pass

    callers = [asyncio.create_task(calls()) for _ in range(4)]
    failed = 0
    for _ in range(150):
        # preexec_fn makes it a real fork, as PostgreSQL's tools run under another user are
        ran = await asyncio.to_thread(
            subprocess.run, ["/bin/true"], preexec_fn=lambda: None, capture_output=True
        )
        failed += ran.returncode != 0
    for caller in callers:
        caller.cancel()
    print(failed)

asyncio.run(main())
"""


def test_programs_started_while_grpc_is_busy_all_run() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    argv = [sys.executable, "-c", CHILD]
    ran = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "0", ran.stderr[-2000:]
