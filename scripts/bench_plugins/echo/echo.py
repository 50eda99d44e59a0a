"""The sandbox benchmark's Untrusted echo plugin: its one capability returns the payload unchanged."""

from __future__ import annotations

from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Echo(PluginBase):
    info = PluginInfo(id="bench-echo", name="Benchmark echo", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def echo(self, payload: Any) -> Any:
        return payload
