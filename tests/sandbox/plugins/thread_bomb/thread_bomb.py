"""Hostile: starts up to ``payload`` threads (each waits at most 10 s, so every thread ends on its own)."""

from __future__ import annotations

import os
import threading
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class ThreadBomb(PluginBase):
    info = PluginInfo(id="thread-bomb", name="ThreadBomb", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def spawn_threads(self, payload: Any) -> dict[str, Any]:
        release = threading.Event()
        threads: list[threading.Thread] = []
        error = None
        try:
            for _ in range(int(payload)):
                thread = threading.Thread(target=release.wait, args=(10.0,), daemon=True)
                thread.start()
                threads.append(thread)
        except (RuntimeError, MemoryError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            release.set()
            for thread in threads:
                thread.join(5.0)
        return {"started": len(threads), "error": error}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
