"""Opening files inside a plugin folder without following links, blocking, or reading without bound.

The primitives every reader of a plugin folder uses (the manifest reader, the content hash and the
staging copy): a directory is opened with ``O_DIRECTORY|O_NOFOLLOW`` relative to its parent's descriptor,
a file with ``O_NOFOLLOW|O_NONBLOCK`` relative to its folder's descriptor and checked with ``fstat``
before a byte is read, so a symlink, fifo, socket or device swapped in at any moment is refused, never
followed, waited on or read. Standard library only; raises :class:`UnsafeFileError` (an ``OSError``) and
lets other ``OSError`` through, for the caller to turn into its own error naming the plugin.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = [
    "DIR_FLAGS",
    "READ_FLAGS",
    "UnsafeFileError",
    "describe_mode",
    "open_dir_at",
    "open_regular_at",
    "read_bounded",
    "read_regular_file",
]

READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
"""Flags of every file opened for reading: no symlink in the last component, no wait on a fifo."""
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Flags of every folder opened inside a plugin folder: a symlink or a file in its place is refused."""
_CHUNK_BYTES = 1 << 20


class UnsafeFileError(OSError):
    """A path inside a plugin folder is not what may be read there.

    ``kind`` is ``symlink``, ``special_file`` (fifo, socket, device: ``what`` says which) or ``too_large``
    (``what`` says the limit); ``name`` is the name as given.
    """

    def __init__(self, kind: str, name: str, what: str) -> None:
        super().__init__(errno.EPERM, what, name)
        self.kind = kind
        self.name = name
        self.what = what


def describe_mode(mode: int) -> str:
    """What a ``st_mode`` is, in words (``fifo``, ``socket``, ``character device``, ...). Pure."""
    for test, kind in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "file of unknown type"


def _refusal(name: str, dir_fd: int | None) -> UnsafeFileError | None:
    """Why ``name`` could not be opened as we asked, from its lstat: a link or a special file, or None."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return UnsafeFileError("symlink", name, "symbolic link")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return UnsafeFileError("special_file", name, describe_mode(mode))
    return None


def open_dir_at(name: str | Path, dir_fd: int | None = None) -> int:
    """Open the folder ``name`` (relative to ``dir_fd`` when given) without following a final symlink.

    Returns the descriptor (the caller closes it). Raises UnsafeFileError for a symlink or a special
    file in its place, OSError otherwise (ENOENT, EACCES, ENOTDIR for a regular file). Does not block.
    """
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            refusal = _refusal(str(name), dir_fd)
            if refusal is not None:
                raise refusal from None
        raise


def open_regular_at(name: str | Path, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open the regular file ``name`` (relative to ``dir_fd`` when given) for reading; return (fd, fstat).

    ``O_NOFOLLOW|O_NONBLOCK``: a symlink is refused, a fifo opens without waiting and, like a socket or a
    device, is refused by ``fstat`` before anything is read. Raises UnsafeFileError for those, OSError
    for the rest (ENOENT, EACCES, EISDIR). The caller closes the descriptor.
    """
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        refusal = _refusal(str(name), dir_fd)
        if refusal is not None:
            raise refusal from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(name))
        raise UnsafeFileError("special_file", str(name), describe_mode(st.st_mode))
    return fd, st


def read_bounded(fd: int, size_hint: int, limit_bytes: int, name: str) -> bytes:
    """Read ``fd`` to its end; raise UnsafeFileError(``too_large``) past ``limit_bytes``. Blocks on reads.

    ``size_hint`` (the fstat size) lets a small file be read in one call; a file that grows while it is
    read is still stopped at the limit.
    """
    if size_hint > limit_bytes:
        raise UnsafeFileError("too_large", name, f"{size_hint} bytes, over the limit of {limit_bytes}")
    chunks: list[bytes] = []
    total = 0
    want = min(size_hint + 1, _CHUNK_BYTES)
    while True:
        chunk = os.read(fd, want)
        total += len(chunk)
        if total > limit_bytes:
            raise UnsafeFileError("too_large", name, f"more than {limit_bytes} bytes, the limit")
        chunks.append(chunk)
        if len(chunk) < want:  # a regular file reads short only at its end
            break
        want = _CHUNK_BYTES
    return b"".join(chunks)


def read_regular_file(path: str | Path, limit_bytes: int) -> bytes:
    """Read the regular file ``path`` whole, refusing a final symlink, a special file or more than
    ``limit_bytes``. The folders on the way are followed (they are the caller's). Blocks on one read;
    safe to call twice. Raises UnsafeFileError or OSError."""
    fd, st = open_regular_at(path)
    try:
        return read_bounded(fd, st.st_size, limit_bytes, str(path))
    finally:
        os.close(fd)
