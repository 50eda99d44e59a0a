"""Network escapes: other socket families, TCP/UDP to a loopback listener, sockets after lock_sockets."""

from __future__ import annotations

import socket
import threading
from typing import Any

__all__ = ["open_socket", "tcp_connect", "udp_send", "unix_socket_then_lock"]


def open_socket(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: [family name, type name], e.g. ["AF_INET", "SOCK_STREAM"]."""
    family, kind = getattr(socket, arg[0]), getattr(socket, arg[1])
    with socket.socket(family, kind):
        return {"created": True}


def tcp_connect(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: a port on 127.0.0.1 the test listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", int(arg)))
        sock.sendall(b"escaped")
    return {"connected": True}


def udp_send(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: a UDP port on 127.0.0.1 the test listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sent = sock.sendto(b"escaped", ("127.0.0.1", int(arg)))
    return {"sent": sent}


def _try_unix_socket() -> dict[str, Any]:
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        return {"ok": True}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}


def _try_socketpair() -> dict[str, Any]:
    try:
        left, right = socket.socketpair()
        left.close()
        right.close()
        return {"ok": True}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}


def unix_socket_then_lock(arg: Any, ctx: Any) -> dict[str, Any]:
    """AF_UNIX works; then a thread that already exists tries again after lock_sockets (TSYNC)."""
    before = _try_unix_socket()
    go = threading.Event()
    seen: dict[str, Any] = {}

    def in_thread() -> None:
        go.wait(10)
        seen["socket"] = _try_unix_socket()
        seen["socketpair"] = _try_socketpair()

    thread = threading.Thread(target=in_thread)
    thread.start()
    report = ctx.lock_sockets()
    go.set()
    thread.join(10)
    return {
        "before": before,
        "thread_after": seen,
        "main_after": _try_unix_socket(),
        "layer": report.layers["seccomp_sockets"].state,
    }
