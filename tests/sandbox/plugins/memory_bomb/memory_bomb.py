"""Hostile: allocates ``payload`` bytes at once (the test asks for 2 GiB)."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class MemoryBomb(PluginBase):
    info = PluginInfo(id="memory-bomb", name="MemoryBomb", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def allocate(self, payload: Any) -> dict[str, Any]:
        block = bytearray(int(payload))  # MemoryError is left to propagate: that is the behaviour under test
        return {"allocated": len(block)}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
