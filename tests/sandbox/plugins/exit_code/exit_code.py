"""Hostile: leaves the worker with ``os._exit(payload)`` in the middle of a call."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class ExitCode(PluginBase):
    info = PluginInfo(id="exit-code", name="ExitCode", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def exit(self, payload: Any) -> dict[str, Any]:
        os._exit(int(payload))

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
