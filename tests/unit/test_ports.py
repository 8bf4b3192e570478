"""The session's Keycloak listens on ports no outgoing connection on the machine can take meanwhile."""

from __future__ import annotations

import socket

from harness.keycloak import LOOPBACK, ephemeral_ports, free_port


def test_a_listen_port_lies_outside_the_kernels_ephemeral_range() -> None:
    """Chosen ports are never in ip_local_port_range, where any connection's local end may land."""
    ephemeral = ephemeral_ports()
    assert all(free_port() not in ephemeral for _ in range(50))


def test_a_listen_port_is_free_to_bind() -> None:
    """The port is free when chosen: we can listen on it ourselves."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, free_port()))
        sock.listen()
