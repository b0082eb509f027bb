"""Loopback ports the OS picked for a test (never a fixed number: parallel workers and other checkouts
on the machine run the same tests)."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1: all bound at once (port 0), then released for the
    test's servers to bind."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]


def deployment_ports() -> dict[str, int]:
    """The ports of a `crunch-dagster serve` deployment of one code location (bench/chaos.py's Deployment)."""
    return dict(zip(("webserver", "webserver_read_only", "code", "api"), free_ports(4), strict=True))
