"""Hostile: writes files (payload: {"where": "plugin_dir" | "tempdir" | "path", "path": ..., "size": bytes})."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_HERE = os.path.dirname(os.path.abspath(__file__))


class WriteFile(PluginBase):
    info = PluginInfo(id="write-file", name="WriteFile", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def write(self, payload: Any) -> dict[str, Any]:
        where = payload["where"]
        name = str(payload.get("name", "pwned.txt"))
        if where == "plugin_dir":
            path = os.path.join(_HERE, name)
        elif where == "tempdir":
            path = os.path.join(tempfile.gettempdir(), name)
        else:
            path = str(payload["path"])
        size = int(payload.get("size", 7))
        try:
            with open(path, "wb") as fh:
                fh.write(b"x" * size)
        except OSError as exc:
            return {"written": False, "path": path, "errno": exc.errno, "error": type(exc).__name__}
        os.unlink(path)
        return {"written": True, "path": path, "errno": None, "tempdir": tempfile.gettempdir()}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
