"""Landlock through raw syscalls (444/445/446), for the sandbox worker.

Runs inside the worker: standard library only (ctypes). Nothing here reads the environment.
The three calls mirror the kernel API: ``get_abi_version`` (no side effects), then
``restrict_self`` which builds one ruleset, adds the rules and enforces it on the calling thread.
Called before any other thread exists, the domain covers every thread the worker creates later.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

# Syscall numbers are the same on every architecture (they came after the unified table).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1

# Filesystem rights (include/uapi/linux/landlock.h).
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_RIGHTS_ABI1 = (1 << 13) - 1
# Rights that may be granted on a regular file; anything else on a non-directory is EINVAL.
_FILE_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV

READ_ONLY = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
READ_WRITE = (
    ACCESS_FS_READ_FILE
    | ACCESS_FS_READ_DIR
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_SYM
    | ACCESS_FS_REFER
)
# grpc unlinks a stale socket file before bind, so the socket directory needs REMOVE_FILE too.
SOCKET_DIR = ACCESS_FS_MAKE_SOCK | ACCESS_FS_REMOVE_FILE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class LandlockError(OSError):
    """A Landlock syscall failed; ``errno`` and ``filename`` say which and where."""


@dataclass(frozen=True)
class LandlockResult:
    """What ``restrict_self`` enforced.

    ``abi`` is the kernel's Landlock ABI; the ``handled_*`` masks are what the ruleset denies by default;
    ``missing_paths`` are rule paths that did not exist and were left out (nothing is granted for them).
    """

    abi: int
    handled_access_fs: int
    handled_access_net: int
    scoped: int
    rule_count: int
    missing_paths: tuple[str, ...]


def get_abi_version() -> int:
    """Return the kernel's Landlock ABI version, or 0 when Landlock is absent or disabled at boot.

    Non-blocking, no side effects, safe to call any number of times from any process.
    """
    res = _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    if res < 0:
        return 0
    return int(res)


def get_handled_access_fs(abi: int) -> int:
    """Return every filesystem right the given ABI knows (16 on ABI >= 5). Pure function."""
    rights = _FS_RIGHTS_ABI1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


def get_handled_access_net(abi: int) -> int:
    """Return the TCP rights the given ABI knows (bind and connect from ABI 4, else 0). Pure function."""
    return ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0


def get_scopes(abi: int) -> int:
    """Return the IPC scopes the given ABI knows (abstract unix and signal, from ABI 6). Pure function."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


def _raise_errno(what: str, path: str | None = None) -> None:
    err = ctypes.get_errno()
    raise LandlockError(err, f"{what}: {os.strerror(err)}", path)


def restrict_self(rules: Iterable[tuple[str, int]], *, abi: int | None = None) -> LandlockResult:
    """Enforce a Landlock domain on the calling thread that allows only ``rules``.

    Each rule is ``(path, rights)``; rights are masked to what the ABI handles, and to file rights when the
    path is not a directory. Paths that do not exist are skipped and listed in the result. All filesystem
    rights the kernel knows are handled, TCP bind and connect are handled with no port allowed (no TCP at
    all), and on ABI >= 6 abstract unix sockets and signals are scoped to the domain.

    The caller must already have set PR_SET_NO_NEW_PRIVS and must be single-threaded (threads that exist
    now are not restricted). Non-blocking. Calling it twice stacks a second domain, which can only narrow
    access further; it is not meant to be called twice. Raises ``LandlockError`` on any failure, in which
    case no restriction was applied.
    """
    if abi is None:
        abi = get_abi_version()
    if abi < 1:
        raise LandlockError(errno.EOPNOTSUPP, "Landlock is not supported by this kernel or is disabled")
    attr = _RulesetAttr(get_handled_access_fs(abi), get_handled_access_net(abi), get_scopes(abi))
    # Older kernels know a shorter struct; they accept this one because the fields they lack are zero.
    size = ctypes.sizeof(attr)
    ruleset_fd = int(
        _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    )
    if ruleset_fd < 0:
        _raise_errno("landlock_create_ruleset")
    missing: list[str] = []
    count = 0
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                missing.append(path)
                continue
            try:
                allowed = rights & attr.handled_access_fs
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    allowed &= _FILE_RIGHTS
                if not allowed:
                    continue
                beneath = _PathBeneathAttr(allowed, fd)
                res = _syscall(
                    SYS_LANDLOCK_ADD_RULE,
                    ctypes.c_int(ruleset_fd),
                    ctypes.c_int(RULE_PATH_BENEATH),
                    ctypes.byref(beneath),
                    ctypes.c_uint32(0),
                )
                if res < 0:
                    _raise_errno("landlock_add_rule", path)
                count += 1
            finally:
                os.close(fd)
        if _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)) < 0:
            _raise_errno("landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    return LandlockResult(
        abi=abi,
        handled_access_fs=attr.handled_access_fs,
        handled_access_net=attr.handled_access_net,
        scoped=attr.scoped,
        rule_count=count,
        missing_paths=tuple(missing),
    )
