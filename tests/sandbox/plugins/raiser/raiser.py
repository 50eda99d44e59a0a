"""Hostile: raises from its capability (payload picks what)."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Raiser(PluginBase):
    info = PluginInfo(id="raiser", name="Raiser", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def boom(self, payload: Any) -> Any:
        if payload == "ok":
            return "fine"
        if payload == "huge_message":
            raise ValueError("m" * 5_000_000)
        raise ValueError("boom")

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
