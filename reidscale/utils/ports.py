"""Free TCP ports on this machine, for the rendezvous of the processes a job launches."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` right now (bound to port 0, read back, released).

    Another process may take it before the caller binds it; that window is short and a launcher that
    binds it soon after is the intended use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(port: int, name: str = "port") -> int:
    """``port`` after checking it is an integer in 1..65535 (``name`` is the argument named in the error)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{name} must be an integer TCP port in 1..65535, got {port!r}")
    return port
