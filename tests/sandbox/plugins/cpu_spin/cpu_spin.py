"""Hostile: burns up to ``payload`` CPU seconds (the test sets RLIMIT_CPU below that).

Four threads hash in C with the GIL released, so the process burns CPU on every core and gets its
share of a busy machine (the scheduler is fair per thread); every loop is also bounded in wall time.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

THREADS = 4
_BLOCK = b"\x5a" * (256 * 1024)


class CpuSpin(PluginBase):
    info = PluginInfo(id="cpu-spin", name="CpuSpin", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def spin(self, payload: Any) -> dict[str, Any]:
        cpu_limit = time.process_time() + float(payload)
        wall_limit = time.monotonic() + 3 * float(payload)

        def burn() -> None:
            while time.process_time() < cpu_limit and time.monotonic() < wall_limit:
                hashlib.sha256(_BLOCK).digest()

        threads = [threading.Thread(target=burn, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(3 * float(payload) + 1)
        return {"cpu_s": time.process_time()}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
