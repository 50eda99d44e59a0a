"""Hostile: raises exceptions the worker may not expect (payload picks which)."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class UnprintableError(Exception):
    """An exception whose message cannot be rendered: str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


class BadException(PluginBase):
    info = PluginInfo(id="bad-exception", name="BadException", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def throw(self, payload: Any) -> Any:
        if payload == "unprintable":
            raise UnprintableError()
        if payload == "system_exit":
            raise SystemExit(7)
        if payload == "keyboard_interrupt":
            raise KeyboardInterrupt
        return "nothing raised"

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
