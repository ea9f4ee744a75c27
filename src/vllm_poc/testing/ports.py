"""Free TCP ports for local servers, chosen where another process cannot be handed them.

A port the kernel picks (``bind(("127.0.0.1", 0))``, or any outgoing connection) comes from its
ephemeral range, where every other process on the machine gets its ports too: between the
choice and the server's own bind, seconds of imports later, one was taken ("Address already in
use": a release smoke's server, beside the e2e tier's servers and receivers in CI). Ports below
that range are handed out by nobody; one is drawn at random and checked free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000
"""Below it, ports that services commonly use."""
_DRAW = random.SystemRandom()  # forked processes do not share its state


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call), below the
    ephemeral range where there is room, else one the kernel picks."""
    end = ephemeral_start()
    while True:
        port = _DRAW.randrange(LOWEST, end) if end > LOWEST + 1000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
