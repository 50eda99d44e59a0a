"""Hostile: reads a path (payload: an absolute path, or a name inside the plugin's own folder), directly or
through a symbolic link it makes at run time in its own temp dir (payload ``{"via_link": path}``).

A plugin folder may not hold a symlink (staging refuses it), so a link the plugin names is one it makes
itself, after the host verified and copied its folder: the read through it must still be refused.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_HERE = os.path.dirname(os.path.abspath(__file__))


class ReadFile(PluginBase):
    info = PluginInfo(id="read-file", name="ReadFile", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def read(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, dict):
            target = str(payload["via_link"])
            path = os.path.join(tempfile.gettempdir(), f"link-{uuid.uuid4().hex}")
            try:
                os.symlink(target, path)
            except OSError as exc:
                return {"read": False, "errno": exc.errno, "error": type(exc).__name__, "linked": False}
        else:
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
