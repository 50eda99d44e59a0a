"""Benign: a sibling worker that other plugins try to signal and trace."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Victim(PluginBase):
    info = PluginInfo(id="victim", name="Victim", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
