"""Hostile: has a ``secret`` capability in code that its manifest does not declare."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Undeclared(PluginBase):
    info = PluginInfo(id="undeclared", name="Undeclared", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def echo(self, payload: Any) -> Any:
        return payload

    @capability
    def secret(self, payload: Any) -> str:
        return "the secret capability ran"

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
