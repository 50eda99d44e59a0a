"""Values across the sandbox boundary: JSON-compatible objects as orjson, bytes passed through raw.

Shared by both sides (imports only orjson and the generated protocol).
"""

from __future__ import annotations

from typing import Any

import orjson

from plugin_pool._proto.v1 import worker_pb2 as pb

__all__ = ["decode_value", "encode_value"]


def decode_value(value: pb.Value) -> Any:
    """A Value's content: raw bytes as they are, JSON decoded with orjson (None when unset).

    Raises orjson.JSONDecodeError (a ValueError) for malformed JSON.
    """
    kind = value.WhichOneof("kind")
    if kind == "raw":
        return value.raw
    if kind == "json":
        return orjson.loads(value.json)
    return None


def encode_value(obj: Any) -> pb.Value:
    """``obj`` as a Value: bytes-like objects raw, everything else as orjson. Raises TypeError."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return pb.Value(raw=bytes(obj))
    return pb.Value(json=orjson.dumps(obj))
