"""Hostile: a (bounded) fork bomb, and subprocess spawning. Returns what happened, never raises."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

MAX_FORKS = 50


class ForkBomb(PluginBase):
    info = PluginInfo(id="fork-bomb", name="ForkBomb", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def fork(self, payload: Any) -> dict[str, Any]:
        forked = 0
        for _ in range(MAX_FORKS):
            try:
                pid = os.fork()
            except OSError as exc:
                return {"forked": forked, "errno": exc.errno, "error": type(exc).__name__}
            if pid == 0:  # a child that escaped: leave at once, touching nothing of the parent
                os._exit(0)
            os.waitpid(pid, 0)
            forked += 1
        return {"forked": forked, "errno": None}

    @capability
    def spawn(self, payload: Any) -> dict[str, Any]:
        try:
            proc = subprocess.run(["/bin/true"], check=False, timeout=5, capture_output=True)
        except OSError as exc:
            return {"spawned": False, "errno": exc.errno, "error": type(exc).__name__}
        return {"spawned": True, "returncode": proc.returncode}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
