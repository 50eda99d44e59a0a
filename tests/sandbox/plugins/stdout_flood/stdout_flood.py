"""Hostile: prints ``payload`` megabytes to stdout and stderr in 1000-byte lines."""

from __future__ import annotations

import os
import sys
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_LINE = "flood " + "x" * 993 + "\n"


class StdoutFlood(PluginBase):
    info = PluginInfo(id="stdout-flood", name="StdoutFlood", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def flood(self, payload: Any) -> dict[str, Any]:
        lines = int(float(payload) * 1024 * 1024) // len(_LINE)
        chunk = _LINE * 1000
        for _ in range(lines // 1000):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        sys.stderr.write(chunk)
        sys.stderr.flush()
        return {"lines": lines}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
