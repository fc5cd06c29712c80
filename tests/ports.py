"""Free ports for processes a test starts.

Ports are picked below the kernel's ephemeral range: a port the kernel hands out for
`bind(0)` is also what it hands to the next outgoing connection (a database client, a
gRPC channel), so between picking it and the process binding it, it can be taken.
Ports outside that range are only ever taken on purpose."""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 20000, 32000  # below Linux's default ephemeral range (32768-60999)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(count: int = 1) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        first = random.randrange(_LOW, _HIGH - count)
        if all(_bindable(first + i) for i in range(count)):
            return first
    raise AssertionError(f"no {count} consecutive free ports in {_LOW}-{_HIGH}")


def free_port() -> int:
    return free_port_block(1)


def closed_port() -> int:
    """A local TCP port with nothing listening on it (a service that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
