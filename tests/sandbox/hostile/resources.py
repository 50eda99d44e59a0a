"""Resource exhaustion: memory beyond RLIMIT_DATA, CPU beyond RLIMIT_CPU."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["allocate_big", "spin_cpu"]

_MIB = 1024 * 1024


def allocate_big(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: MiB to allocate at once; then a 64 MiB allocation must still work."""
    try:
        block = bytearray(int(arg) * _MIB)
        del block
        big = "allocated"
    except MemoryError:
        big = "MemoryError"
    after = bytearray(64 * _MIB)
    return {"big": big, "after_mb": len(after) // _MIB}


def spin_cpu(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: wall seconds to spin at most; RLIMIT_CPU should kill the process well before."""
    deadline = time.monotonic() + float(arg)
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return {"survived": n}
