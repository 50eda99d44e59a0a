"""Hostile: dereferences NULL through ctypes, so its worker dies of SIGSEGV."""

from __future__ import annotations

import ctypes
import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Segfault(PluginBase):
    info = PluginInfo(id="segfault", name="Segfault", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def crash(self, payload: Any) -> dict[str, Any]:
        return {"read": ctypes.string_at(0)}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
