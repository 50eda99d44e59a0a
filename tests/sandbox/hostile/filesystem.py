"""Filesystem escapes: reading and writing outside the allowed trees; the temp dir as positive control."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

__all__ = ["list_dir", "make_node", "read_file", "write_big_file", "write_file", "write_temp"]


def read_file(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: a path to read."""
    with open(arg, "rb") as handle:
        return {"read_bytes": len(handle.read(4096))}


def list_dir(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: a directory to list."""
    return {"entries": len(os.listdir(arg))}


def write_file(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: a path to create and write."""
    with open(arg, "wb") as handle:
        handle.write(b"escaped")
    return {"written": arg}


def write_temp(arg: Any, ctx: Any) -> dict[str, Any]:
    """Positive control: write a named file and a mkstemp file in the private temp dir."""
    path = os.path.join(tempfile.gettempdir(), "control.txt")
    with open(path, "w") as handle:
        handle.write("inside")
    fd, temp_path = tempfile.mkstemp()
    os.close(fd)
    os.unlink(temp_path)
    return {"path": path, "mkstemp_dir": os.path.dirname(temp_path), "tmpdir_env": os.environ.get("TMPDIR")}


def write_big_file(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: MiB to write into the temp dir in 1 MiB chunks."""
    path = os.path.join(tempfile.gettempdir(), "big.bin")
    chunk = b"\0" * (1024 * 1024)
    written = 0
    with open(path, "wb", buffering=0) as handle:
        for _ in range(int(arg)):
            written += handle.write(chunk)
    return {"written": written}


def make_node(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: [path, "socket" | "fifo"]: mknod one node (a socket node needs no privilege)."""
    path, kind = str(arg[0]), str(arg[1])
    os.mknod(path, 0o600 | (stat.S_IFSOCK if kind == "socket" else stat.S_IFIFO))
    return {"made": path}
