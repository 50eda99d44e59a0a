"""Hostile: replaces the worker with /bin/sh through execve."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class ExecShell(PluginBase):
    info = PluginInfo(id="exec-shell", name="ExecShell", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def exec_sh(self, payload: Any) -> dict[str, Any]:
        try:
            os.execv("/bin/sh", ["/bin/sh", "-c", "exit 0"])
        except OSError as exc:
            return {"executed": False, "errno": exc.errno, "error": type(exc).__name__}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
