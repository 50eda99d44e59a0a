"""Hostile: returns a string of ``payload`` bytes (the test asks for more than sandbox.max_message_mb)."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class BigReply(PluginBase):
    info = PluginInfo(id="big-reply", name="BigReply", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def reply(self, payload: Any) -> str:
        return "x" * int(payload)

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
