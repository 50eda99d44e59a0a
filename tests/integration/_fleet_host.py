"""One host process of the fleet tests: ``python _fleet_host.py CONFIG.toml``.

Opens a PluginHost on the configuration (a shared PostgreSQL registry), adds two in-process plugins
(``scanner``, BuiltIn; ``flaky``, Trusted, whose start() fails while the file named by FLAKY_FLAG exists),
starts them, prints ``ready <host id>`` and then answers one command per line on stdin with one line on
stdout: ``state ID``, ``stop ID``, ``start ID`` (each answers the plugin's state on this host), ``flush``
(``flushed``), ``quit``. Logs go to stderr as JSON lines (WARNING and up). Bounded: it exits when stdin closes
or after LIFETIME_S.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from plugin_pool import PluginBase, PluginHost, PluginInfo, PluginPoolError, TrustLevel, capability, load_config
from plugin_pool.logs import configure_json_logging

LIFETIME_S = 180.0


class Scanner(PluginBase):
    info = PluginInfo(id="scanner", name="Scanner", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def scan(self, payload: Any) -> Any:
        return payload


class Flaky(PluginBase):
    info = PluginInfo(id="flaky", name="Flaky", version="2.0.0", trust_level=TrustLevel.TRUSTED)

    def start(self) -> None:
        flag = os.environ.get("FLAKY_FLAG")
        if flag and Path(flag).exists():
            raise RuntimeError(f"flaky refuses to start on {os.environ.get('HOST_NAME', '?')}")

    @capability
    def scan(self, payload: Any) -> Any:
        return payload


def main() -> int:
    configure_json_logging(logging.WARNING, sys.stderr)
    timer = threading.Timer(LIFETIME_S, os._exit, args=(3,))
    timer.daemon = True
    timer.start()
    host = PluginHost(load_config(sys.argv[1], env=os.environ)).open()
    host.add_plugin(Scanner())
    host.add_plugin(Flaky())
    host.start_plugins()
    print(f"ready {host.registry.host_id}", flush=True)
    try:
        for line in sys.stdin:
            command, _, plugin_id = line.strip().partition(" ")
            if command == "quit":
                break
            if command == "flush":
                print("flushed" if host.registry.flush(timeout_s=30) else "not flushed", flush=True)
                continue
            try:
                if command == "stop":
                    host.stop_plugin(plugin_id)
                elif command == "start":
                    host.start_plugin(plugin_id)
            except PluginPoolError as exc:
                print(f"error {type(exc).__name__}", flush=True)
                continue
            print(host.get_plugin_health(plugin_id).state.value, flush=True)
    finally:
        host.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
