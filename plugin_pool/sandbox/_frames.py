"""Length-prefixed JSON frames: the protocol between the host and the zygote over the zygote's stdin/stdout.

A frame is a 4-byte big-endian length and that many bytes of orjson. Used on both sides, so it imports only
the standard library and orjson.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import orjson

__all__ = ["MAX_FRAME_BYTES", "FrameReader", "encode_frame"]

MAX_FRAME_BYTES = 1 << 20
_HEADER = struct.Struct(">I")


def encode_frame(message: dict[str, Any]) -> bytes:
    """Return ``message`` as one frame. Raises ValueError if it is larger than MAX_FRAME_BYTES."""
    body = orjson.dumps(message)
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Reads frames from a file descriptor. Not thread-safe: one reader per descriptor.

    ``read_available`` does one ``os.read`` and returns every complete frame buffered so far; it returns
    None at end of file. A frame larger than MAX_FRAME_BYTES raises ValueError (the peer is broken).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read_available(self) -> list[dict[str, Any]] | None:
        """Block for at most one read; return the complete frames, or None at end of file."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return None
        self._buffer += chunk
        frames: list[dict[str, Any]] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME_BYTES:
                raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
            if len(self._buffer) < _HEADER.size + size:
                break
            body = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
            del self._buffer[: _HEADER.size + size]
            frames.append(orjson.loads(body))
        return frames


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (blocking)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
