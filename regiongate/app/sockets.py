"""Listening sockets: binding one, and saying in one line which port is taken and what to do about it."""

from __future__ import annotations

import errno
import socket


class PortInUse(Exception):
    """A port the gateway must listen on is taken (the CLI prints this and exits 2, no traceback)."""

    def __init__(self, host: str, port: int, what: str = "REST", flag: str = "--port") -> None:
        super().__init__(
            f"regiongate: port {port} on {host} ({what}) is already in use; stop what holds it "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port with {flag}."
        )
        self.port = port


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def check_free(host: str, ports: list[tuple[int, str, str]]) -> None:
    """Bind and release each (port, what listens there, the option that moves it) before any worker
    starts, so a taken port is one clear line rather than a traceback from every worker."""
    for port, what, flag in ports:
        if not port:
            continue
        try:
            bind(host, port, reuse_port=False).close()
        except PortInUse:
            raise PortInUse(host, port, what, flag) from None
