"""Hostile: signals other processes (payload: {"pid": ..., "signal": ...}); reports the errno."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class SignalSender(PluginBase):
    info = PluginInfo(id="signal-sender", name="SignalSender", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def kill(self, payload: Any) -> dict[str, Any]:
        try:
            os.kill(int(payload["pid"]), int(payload["signal"]))
        except OSError as exc:
            return {"delivered": False, "errno": exc.errno, "error": type(exc).__name__}
        return {"delivered": True, "errno": None}

    @capability
    def parent(self, payload: Any) -> int:
        return os.getppid()

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
