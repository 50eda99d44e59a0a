"""Hostile at import time: changes os.environ, writes a marker file beside itself and starts a thread
that keeps trying to open AF_INET sockets. ``report`` returns what those attempts got."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

ATTEMPTS = 20
MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pwned_marker")

os.environ["PWNED"] = "1"

_results: list[dict[str, Any]] = []
_marker: dict[str, Any] = {}

try:
    with open(MARKER, "w") as _fh:
        _fh.write("imported")
    _marker["written"] = True
except OSError as _exc:
    _marker.update(written=False, errno=_exc.errno)


def _keep_trying() -> None:
    for _ in range(ATTEMPTS):  # bounded: about 0.2 s, then the thread ends
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            _results.append({"created": False, "errno": exc.errno})
        else:
            sock.close()
            _results.append({"created": True, "errno": None})
        time.sleep(0.01)


_thread = threading.Thread(target=_keep_trying, name="import-time-thread", daemon=True)
_thread.start()


class ImportEffects(PluginBase):
    info = PluginInfo(id="import-effects", name="ImportEffects", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def report(self, payload: Any) -> dict[str, Any]:
        _thread.join(5.0)
        return {
            "attempts": list(_results),
            "thread_done": not _thread.is_alive(),
            "marker": dict(_marker),
            "worker_environ_pwned": os.environ.get("PWNED"),
        }

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
