"""Hostile: creates AF_INET / AF_INET6 sockets (TCP and UDP). Returns the errno, never raises."""

from __future__ import annotations

import os
import socket
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class NetCreate(PluginBase):
    info = PluginInfo(id="net-create", name="NetCreate", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def create(self, payload: Any) -> dict[str, Any]:
        family = getattr(socket, payload["family"])
        kind = getattr(socket, payload["type"])
        try:
            sock = socket.socket(family, kind)
        except OSError as exc:
            return {"created": False, "errno": exc.errno, "error": type(exc).__name__}
        sock.close()
        return {"created": True, "errno": None}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
