"""Resource exhaustion: memory beyond RLIMIT_DATA (also where RLIMIT_DATA does not look: shared mappings,
memfd, tmpfs), CPU beyond RLIMIT_CPU, threads, and the temp dir's size and inodes."""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import time
from typing import Any

__all__ = ["allocate_big", "fill_tmp", "hold_memory", "many_files", "many_threads", "spin_cpu"]

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


def hold_memory(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: [kind, MiB]: touch that much memory that RLIMIT_DATA does not count (a shared anonymous mapping,
    a memfd, or a file in the tmpfs temp dir) and keep it while reporting."""
    kind, mib = str(arg[0]), int(arg[1])
    size = mib * _MIB
    if kind == "shared":
        block = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        for offset in range(0, size, 4096):
            block[offset] = 1
    elif kind == "memfd":
        fd = os.memfd_create("hog")
        chunk = b"\1" * _MIB
        for _ in range(mib):
            os.write(fd, chunk)
    elif kind == "tmpfs":
        with open(os.path.join(tempfile.gettempdir(), "hog.bin"), "wb", buffering=0) as handle:
            chunk = b"\1" * _MIB
            for _ in range(mib):
                handle.write(chunk)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return {"held_mb": mib, "kind": kind}


def fill_tmp(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: MiB to write into the temp dir at most; returns how much fit before an error."""
    written = 0
    error = None
    chunk = b"\0" * _MIB
    try:
        with open(os.path.join(tempfile.gettempdir(), "fill.bin"), "wb", buffering=0) as handle:
            for _ in range(int(arg)):
                written += handle.write(chunk)
    except OSError as exc:
        error = exc.errno
    return {"written_mb": written // _MIB, "errno": error, "where": tempfile.gettempdir()}


def many_files(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: files to create in the temp dir at most; returns how many could be made before an error."""
    made = 0
    error = None
    base = tempfile.gettempdir()
    try:
        for n in range(int(arg)):
            os.close(os.open(os.path.join(base, f"f{n}"), os.O_CREAT | os.O_WRONLY, 0o600))
            made += 1
    except OSError as exc:
        error = exc.errno
    return {"made": made, "errno": error}


def many_threads(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: threads to start at most (each waits on one event); returns how many started."""
    release = threading.Event()
    started = []
    error = None
    try:
        for _ in range(int(arg)):
            thread = threading.Thread(target=release.wait, args=(10,), daemon=True)
            thread.start()
            started.append(thread)
    except RuntimeError as exc:
        error = str(exc)
    release.set()
    for thread in started:
        thread.join(5)
    return {"started": len(started), "error": error}
