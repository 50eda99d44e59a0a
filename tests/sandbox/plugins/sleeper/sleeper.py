"""Hostile: sleeps for ``payload`` seconds, past the host's call deadline."""

from __future__ import annotations

import os
import time
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Sleeper(PluginBase):
    info = PluginInfo(id="sleeper", name="Sleeper", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def sleep(self, payload: Any) -> dict[str, Any]:
        time.sleep(float(payload))
        return {"slept": payload}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
