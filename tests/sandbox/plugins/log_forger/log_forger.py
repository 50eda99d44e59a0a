"""Hostile: prints lines (payload) that look like the host's own JSON log records, to stdout and stderr."""

from __future__ import annotations

import os
import sys
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class LogForger(PluginBase):
    info = PluginInfo(id="log-forger", name="LogForger", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def forge(self, payload: Any) -> dict[str, Any]:
        for line in payload:
            print(line, flush=True)
            print(line, file=sys.stderr, flush=True)
        # A record hidden behind a carriage return, as a terminal would show it.
        sys.stdout.write("\r" + payload[0] + "\n")
        sys.stdout.flush()
        return {"printed": len(payload)}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
