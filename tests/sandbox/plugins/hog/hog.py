"""Hostile: resources outside the classic rlimits.

- ``hold`` {"kind": "shared" | "memfd" | "tmpfs", "mb": n}: touches n MiB that RLIMIT_DATA does not count
  and keeps it for the worker's life;
- ``fill_tmp`` n: writes up to n MiB into its temp dir; ``many_files`` n: creates up to n files there;
- ``spin_after`` s: answers at once, leaving a thread that burns CPU for up to s seconds.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import time
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_MIB = 1024 * 1024
_kept: list[Any] = []


def _spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


class Hog(PluginBase):
    info = PluginInfo(id="hog", name="Hog", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def hold(self, payload: Any) -> dict[str, Any]:
        kind, mib = str(payload["kind"]), int(payload["mb"])
        size = mib * _MIB
        if kind == "shared":
            block = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
            for offset in range(0, size, 4096):
                block[offset] = 1
            _kept.append(block)
        elif kind == "memfd":
            fd = os.memfd_create("hog")
            chunk = b"\1" * _MIB
            for _ in range(mib):
                os.write(fd, chunk)
            _kept.append(fd)
        else:
            path = os.path.join(tempfile.gettempdir(), f"hog-{len(_kept)}.bin")
            with open(path, "wb", buffering=0) as handle:
                for _ in range(mib):
                    handle.write(b"\1" * _MIB)
            _kept.append(path)
        return {"held_mb": mib}

    @capability
    def fill_tmp(self, payload: Any) -> dict[str, Any]:
        written = 0
        error = None
        path = os.path.join(tempfile.gettempdir(), "fill.bin")
        try:
            with open(path, "wb", buffering=0) as handle:
                for _ in range(int(payload)):
                    written += handle.write(b"\0" * _MIB)
        except OSError as exc:
            error = exc.errno
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return {"written_mb": written // _MIB, "errno": error}

    @capability
    def many_files(self, payload: Any) -> dict[str, Any]:
        base = tempfile.mkdtemp()
        made = 0
        error = None
        try:
            for n in range(int(payload)):
                os.close(os.open(os.path.join(base, f"f{n}"), os.O_CREAT | os.O_WRONLY, 0o600))
                made += 1
        except OSError as exc:
            error = exc.errno
        for n in range(made):
            os.unlink(os.path.join(base, f"f{n}"))
        os.rmdir(base)
        return {"made": made, "errno": error}

    @capability
    def spin_after(self, payload: Any) -> dict[str, Any]:
        threading.Thread(target=_spin, args=(float(payload),), daemon=True).start()
        return {"spinning": True}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
