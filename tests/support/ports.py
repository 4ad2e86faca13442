"""A free TCP port on this host."""

from __future__ import annotations

import socket

# The defaults of what the agent and the test stacks publish: never handed out.
RESERVED_PORTS = frozenset({3000, 8000, 5432, 6379, 8265, 10001})


def free_port() -> int:
    """A port nothing listens on now (on any address), above 20000 and none of RESERVED_PORTS."""
    while True:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            port = int(sock.getsockname()[1])
        if port > 20000 and port not in RESERVED_PORTS:
            return port
