"""Hostile: opens its own module file until the process runs out of descriptors, then closes them all."""

from __future__ import annotations

import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

MAX_OPEN = 100_000


class FdExhaust(PluginBase):
    info = PluginInfo(id="fd-exhaust", name="FdExhaust", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def exhaust(self, payload: Any) -> dict[str, Any]:
        fds: list[int] = []
        error: OSError | None = None
        try:
            for _ in range(MAX_OPEN):
                fds.append(os.open(__file__, os.O_RDONLY))
        except OSError as exc:
            error = exc
        finally:
            for fd in fds:
                os.close(fd)
        return {"opened": len(fds), "errno": error.errno if error else None}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
