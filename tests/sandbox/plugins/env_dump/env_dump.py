"""Hostile: returns its whole environment, hoping the host's secrets leaked into it."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class EnvDump(PluginBase):
    info = PluginInfo(id="env-dump", name="EnvDump", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def environ(self, payload: Any) -> dict[str, str]:
        return dict(os.environ)

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
