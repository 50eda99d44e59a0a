"""A sandboxed test plugin that misbehaves on request: ``act({"op": ...})``.

Its id comes from the ``plugin.toml`` beside it, so the tests can run copies of it under several ids.
``initialize`` obeys the plugin config key ``init`` ("raise" or "hang"); ``stop`` logs its pid and the
wall-clock interval it ran in (``stop_sleep_s`` in the config stretches it).
"""

from __future__ import annotations

import os
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

with (Path(__file__).parent / "plugin.toml").open("rb") as _fh:
    _ID = tomllib.load(_fh)["plugin"]["id"]


class Chaos(PluginBase):
    info = PluginInfo(id=_ID, name="Chaos", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    def __init__(self) -> None:
        self.calls = 0

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        mode = self.config.get("init")
        if mode == "raise":
            raise RuntimeError(f"initialize refused by {_ID}")
        if mode == "hang":
            time.sleep(60)

    def stop(self) -> None:
        started = time.time()
        time.sleep(float(self.config.get("stop_sleep_s", 0)))
        self.logger.info("chaos stop pid=%d start=%.6f end=%.6f", os.getpid(), started, time.time())

    @capability
    def echo(self, payload: Any) -> Any:
        return payload

    @capability
    def act(self, payload: dict[str, Any]) -> Any:
        self.calls += 1
        op = payload["op"]
        if op == "pid":
            return {"pid": os.getpid(), "calls": self.calls}
        if op == "sleep":
            time.sleep(payload["s"])
            return {"pid": os.getpid(), "calls": self.calls}
        if op == "sleep_until":
            time.sleep(max(0.0, payload["t"] - time.time()))
            return {"pid": os.getpid(), "calls": self.calls}
        if op == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if op == "raise":
            raise ValueError(f"bad item {payload.get('n')}")
        if op == "log":
            self.logger.info("hello %s", payload["text"])
            return {"pid": os.getpid()}
        if op == "service":
            try:
                return {"ok": getattr(self.context.get_service(payload["name"]), payload["method"])()}
            except Exception as exc:  # returned as data so the test can read it
                return {"error": f"{type(exc).__name__}: {exc}"}
        if op == "service_bypass":
            # Skip the plugin-side check: ask the host directly for a service this plugin was not allowed.
            proxy = self.context.get_service(payload["via"])
            try:
                return {"ok": proxy._servicer.call_service(payload["name"], "now", [])}
            except Exception as exc:
                return {"error": f"{type(exc).__name__}: {exc}"}
        if op == "double":
            return payload["n"] * 2
        raise ValueError(f"unknown op {op!r}")
