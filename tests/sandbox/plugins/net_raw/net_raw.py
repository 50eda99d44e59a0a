"""Hostile: opens netlink, packet and other non-Unix sockets (payload: which)."""

from __future__ import annotations

import os
import socket
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_ETH_P_ALL = 0x0003
_KINDS = {
    "netlink_route": (socket.AF_NETLINK, socket.SOCK_RAW, 0),  # NETLINK_ROUTE
    "netlink_dgram": (socket.AF_NETLINK, socket.SOCK_DGRAM, 0),
    "packet_raw": (socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL)),
    "packet_dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL)),
    "unix_stream": (socket.AF_UNIX, socket.SOCK_STREAM, 0),
}


class NetRaw(PluginBase):
    info = PluginInfo(id="net-raw", name="NetRaw", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def open_socket(self, payload: Any) -> dict[str, Any]:
        family, kind, proto = _KINDS[str(payload)]
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            return {"created": False, "errno": exc.errno, "error": type(exc).__name__}
        sock.close()
        return {"created": True, "errno": None}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
