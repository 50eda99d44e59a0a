"""Benign control plugin: echoes its payload, so tests can show the host still serves."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Echo(PluginBase):
    info = PluginInfo(id="echo", name="Echo", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def echo(self, payload: Any) -> Any:
        return payload

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
