"""Hostile: returns values that cannot cross the sandbox boundary, or forges the worker's reply itself.

The plugin owns its whole process, so it can also patch the worker's own reply encoding: the host must
treat every reply as untrusted data.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


def _circular() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


_RESULTS = {
    "set": lambda: {1, 2, 3},
    "object": lambda: object(),
    "int_key": lambda: {1: "one"},
    "huge_int": lambda: 2**70,
    "lone_surrogate": lambda: "\ud800",
    "circular": _circular,
}


class BadResult(PluginBase):
    info = PluginInfo(id="bad-result", name="BadResult", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def result(self, payload: Any) -> Any:
        return _RESULTS[str(payload)]()

    @capability
    def forge_reply(self, payload: Any) -> Any:
        worker = sys.modules["plugin_pool.sandbox._worker"]
        pb = worker.pb
        if payload == "unknown_kind":
            real_error = worker._error

            def forged_error(kind: str, exc: BaseException | None = None, message: str = "") -> Any:
                worker._error = real_error
                return pb.RemoteError(kind="pwned", type="Forged", message="a forged error kind")

            worker._error = forged_error
            raise RuntimeError("replaced by a forged error")
        body = {"invalid_json": b"{not json", "deep_json": b"[" * 100_000 + b"]" * 100_000}[payload]
        real_encode = worker.encode_value

        def forged_encode(obj: Any) -> Any:
            worker.encode_value = real_encode  # one forged reply only
            return pb.Value(json=body)

        worker.encode_value = forged_encode
        return None

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
