"""Hostile: TCP connect and UDP send to a loopback listener the test owns (payload: host and port)."""

from __future__ import annotations

import os
import socket
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_LOOPBACK = {"127.0.0.1": socket.AF_INET, "::1": socket.AF_INET6}


def _target(payload: Any) -> tuple[int, str, int]:
    host = str(payload["host"])
    if host not in _LOOPBACK:  # the test may only ever aim at loopback
        raise ValueError(f"refusing non-loopback target {host!r}")
    return _LOOPBACK[host], host, int(payload["port"])


class NetLoopback(PluginBase):
    info = PluginInfo(id="net-loopback", name="NetLoopback", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def tcp_connect(self, payload: Any) -> dict[str, Any]:
        family, host, port = _target(payload)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect((host, port))
                sock.sendall(b"escaped")
        except OSError as exc:
            return {"sent": False, "errno": exc.errno, "error": type(exc).__name__}
        return {"sent": True, "errno": None}

    @capability
    def udp_send(self, payload: Any) -> dict[str, Any]:
        family, host, port = _target(payload)
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"escaped", (host, port))
        except OSError as exc:
            return {"sent": False, "errno": exc.errno, "error": type(exc).__name__}
        return {"sent": True, "errno": None}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
