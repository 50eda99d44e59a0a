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
    "nan": lambda: {"score": float("nan")},
    "inf_nested": lambda: {"findings": [{"weight": 1.0}, {"weight": float("-inf")}]},
    # Larger than the reply limit but well within the worker's memory: refused before it is encoded.
    "huge_string": lambda: "x" * (20 * 1024 * 1024),
    "huge_nested": lambda: {"report": "x" * (20 * 1024 * 1024)},
}


class BadResult(PluginBase):
    info = PluginInfo(id="bad-result", name="BadResult", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def result(self, payload: Any) -> Any:
        return _RESULTS[str(payload)]()

    @capability
    def forge_reply(self, payload: Any) -> Any:
        codec = sys.modules["plugin_pool.sandbox._codec"]
        if payload == "unknown_kind":
            real_error = codec.encode_error

            def forged_error(*args: Any) -> bytes:
                codec.encode_error = real_error  # one forged reply only
                return b'E{"kind": "pwned", "type": "Forged", "message": "a forged error kind"}'

            codec.encode_error = forged_error
            raise RuntimeError("replaced by a forged error")
        body = {"invalid_json": b"J{not json", "deep_json": b"J" + b"[" * 100_000 + b"]" * 100_000}[payload]
        real_encode = codec.encode_result

        def forged_encode(obj: Any) -> bytes:
            codec.encode_result = real_encode  # one forged reply only
            return body

        codec.encode_result = forged_encode
        return None

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
