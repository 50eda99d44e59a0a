"""Hostile: reads a path (payload: an absolute path, or a name inside the plugin's own folder)."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_HERE = os.path.dirname(os.path.abspath(__file__))


class ReadFile(PluginBase):
    info = PluginInfo(id="read-file", name="ReadFile", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def read(self, payload: Any) -> dict[str, Any]:
        path = str(payload)
        if not os.path.isabs(path):
            path = os.path.join(_HERE, path)
        try:
            with open(path, "rb") as fh:
                data = fh.read(4096)
        except OSError as exc:
            return {"read": False, "errno": exc.errno, "error": type(exc).__name__}
        return {"read": True, "errno": None, "data": data.decode("utf-8", errors="replace")}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
