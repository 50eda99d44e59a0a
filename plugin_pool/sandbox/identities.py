"""Worker identities (host side): one unprivileged uid and gid per worker, like systemd's DynamicUser.

Every worker runs as a uid of its own from ``sandbox.uid_range``, so no worker can touch another worker's
processes, or anything else of the machine that runs as a shared account such as ``nobody`` (the kernel's
same-uid permission checks for signals, rlimits, priorities, ptrace all fail across uids). A uid is taken
when a worker is spawned and given back when the worker is reaped.

Several hosts on one machine share the range: each uid is claimed with an exclusive ``flock`` on a file in a
lock directory (``<runtime dir>/uids``), held as long as the worker lives. A host that dies releases its
claims with its file descriptors, and its workers die with it (PID namespace, PDEATHSIG). At open, uids that
belong to a user in the password database or to a running process are refused for the host's lifetime.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from plugin_pool.config import parse_uid_range
from plugin_pool.errors import ConfinementUnavailableError

__all__ = ["WorkerIdentities", "WorkerIdentity"]

LOCK_DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """One claimed uid (the gid has the same number); ``lock_fd`` holds the claim."""

    uid: int
    gid: int
    lock_fd: int


class WorkerIdentities:
    """Hands out the uids of ``sandbox.uid_range``, one per live worker, shared safely between hosts.

    Thread-safe. ``open`` reads the password database and the running processes once (a few ms); ``claim``
    and ``release`` do not block beyond a non-blocking ``flock``. ``close`` releases every claim; idempotent.
    """

    def __init__(self, uid_range: str, lock_dir: Path) -> None:
        self.first, self.last = parse_uid_range(uid_range)
        self.lock_dir = lock_dir
        self._lock = threading.Lock()
        self._claimed: dict[int, WorkerIdentity] = {}
        self._refused: set[int] = set()
        self._next = self.first + random.randrange(self.last - self.first + 1)
        self._opened = False

    def open(self) -> None:
        """Create the lock directory and note the uids of the range that are already in use. Idempotent."""
        with self._lock:
            if self._opened:
                return
            self.lock_dir.mkdir(mode=LOCK_DIR_MODE, parents=True, exist_ok=True)
            st = self.lock_dir.lstat()
            if st.st_uid != os.geteuid() or self.lock_dir.is_symlink():
                raise ConfinementUnavailableError(
                    f"the uid lock directory {self.lock_dir} is not owned by this host's user; remove it or set "
                    "sandbox.runtime_dir"
                )
            users = {entry.pw_uid: entry.pw_name for entry in pwd.getpwall() if self.first <= entry.pw_uid <= self.last}
            if users:
                uid, name = sorted(users.items())[0]
                raise ConfinementUnavailableError(
                    f"sandbox.uid_range {self.first}-{self.last} holds uid {uid} of user {name!r}; workers must get "
                    "uids nobody else uses: choose a range without users"
                )
            running = _uids_of_processes(self.first, self.last)
            self._refused = {uid for uid in running if not _is_claimed_elsewhere(self.lock_dir / str(uid))}
            self._opened = True

    @property
    def size(self) -> int:
        """How many uids the range holds. No side effects."""
        return self.last - self.first + 1

    def claim(self) -> WorkerIdentity:
        """Claim a free uid of the range for one worker. Non-blocking; call ``release`` when the worker is gone.

        Raises ConfinementUnavailableError when every uid of the range is in use (by this host or others).
        """
        with self._lock:
            for _ in range(self.size):
                uid = self._next
                self._next = uid + 1 if uid < self.last else self.first
                if uid in self._claimed or uid in self._refused:
                    continue
                fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        continue  # another host's worker has it
                    raise
                identity = WorkerIdentity(uid=uid, gid=uid, lock_fd=fd)
                self._claimed[uid] = identity
                return identity
        raise ConfinementUnavailableError(
            f"every uid of sandbox.uid_range {self.first}-{self.last} is in use by a worker; widen the range"
        )

    def release(self, identity: WorkerIdentity) -> None:
        """Give a uid back once its worker has exited. Idempotent."""
        with self._lock:
            if self._claimed.get(identity.uid) is not identity:
                return
            del self._claimed[identity.uid]
        os.close(identity.lock_fd)

    def list_claimed(self) -> list[int]:
        """The uids this host holds now, sorted. No side effects."""
        with self._lock:
            return sorted(self._claimed)

    def close(self) -> None:
        """Release every claim. Idempotent."""
        with self._lock:
            claimed, self._claimed = list(self._claimed.values()), {}
        for identity in claimed:
            os.close(identity.lock_fd)


def _uids_of_processes(first: int, last: int) -> set[int]:
    """Real, effective, saved and filesystem uids of every visible process that fall in [first, last]."""
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Uid:"):
                        found.update(u for u in map(int, line.split()[1:]) if first <= u <= last)
                        break
        except OSError:
            continue  # gone meanwhile
    return found


def _is_claimed_elsewhere(path: Path) -> bool:
    """Whether another live host holds the lock of this uid (its process is that host's worker, not a stranger)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock at once
    return False
