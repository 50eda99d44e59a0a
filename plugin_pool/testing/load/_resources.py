"""ResourceSnapshot and wait_for_no_leaks: what a host leaves behind, measured.

Part of :mod:`plugin_pool.testing.load` (import from there).
"""

from __future__ import annotations

import fnmatch
import gc
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

MIB = 1024 * 1024
"""Bytes in a mebibyte (memory figures are reported in MiB)."""


# -- leaks ----------------------------------------------------------------------------------------------------


def process_memory(*, unique: bool = True) -> tuple[int, int | None]:
    """This process's resident set size and (``unique``) unique set size in bytes: (rss, uss or None).

    USS reads /proc/self/smaps (a few ms); it is what the process alone would give back if it exited.
    """
    process = psutil.Process()
    if unique:
        try:
            full = process.memory_full_info()
            return int(full.rss), int(full.uss)
        except (psutil.AccessDenied, AttributeError):
            pass
    return int(process.memory_info().rss), None


@dataclass(frozen=True, slots=True)
class LeakReport:
    """What this process holds now that it did not hold at the earlier :class:`ResourceSnapshot`."""

    children: tuple[str, ...]
    """Descendant processes started since and still running (pid and command)."""
    fd_growth: int
    files: tuple[str, ...]
    connections: tuple[str, ...]
    """Sockets opened since and still open (inet and unix)."""
    temp_dirs: tuple[str, ...]
    threads: tuple[str, ...]
    """Python threads started since and still alive, by name."""
    rss_growth_bytes: int
    uss_growth_bytes: int | None

    @property
    def leaks(self) -> list[str]:
        """One line per kind of leak (memory growth is reported, not judged here); empty when clean."""
        found = []
        if self.children:
            found.append(f"{len(self.children)} child processes still run: {', '.join(self.children)}")
        if self.fd_growth > 0:
            found.append(f"{self.fd_growth} more file descriptors are open")
        if self.files:
            found.append(f"files still open: {', '.join(self.files)}")
        if self.connections:
            found.append(f"sockets still open: {', '.join(self.connections)}")
        if self.temp_dirs:
            found.append(f"temporary directories left: {', '.join(self.temp_dirs)}")
        if self.threads:
            found.append(f"threads still alive: {', '.join(self.threads)}")
        return found

    def format(self) -> str:
        """The leaks (or ``no leaks``) and the memory growth, for a report."""
        uss = f", USS {self.uss_growth_bytes / MIB:+.1f} MiB" if self.uss_growth_bytes is not None else ""
        head = "; ".join(self.leaks) or "no leaks (children, fds, files, sockets, temp dirs, threads)"
        return f"{head}; memory: RSS {self.rss_growth_bytes / MIB:+.1f} MiB{uss}"


DEFAULT_TEMP_PATTERNS = ("plugin-pool-{pid}-*",)
"""Temporary directories a host of this process creates (the sandbox's private directory has the pid in
its name); ``{pid}`` is replaced by this process's pid."""


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    """What this process holds at one moment: descendants, fds, files, sockets, temp dirs, threads, memory.

    Take one before a host opens and compare one taken after it closed (:meth:`compare`), or let
    :func:`wait_for_no_leaks` poll until things that end asynchronously (reaped children, daemon
    threads) have ended. Other processes' temp directories are ignored: only ``temp_patterns`` (glob
    patterns under the temp dir, ``{pid}`` replaced) are looked at.
    """

    children: Mapping[int, str]
    fds: int
    files: frozenset[str]
    connections: Counter[str]
    temp_dirs: frozenset[str]
    threads: Counter[str]
    rss_bytes: int
    uss_bytes: int | None

    @classmethod
    def take(
        cls,
        *,
        temp_patterns: Sequence[str] = DEFAULT_TEMP_PATTERNS,
        temp_root: str | Path | None = None,
        memory: bool = True,
        collect_garbage: bool = True,
    ) -> ResourceSnapshot:
        """Look at this process now. ``memory`` adds USS (slower); ``collect_garbage`` runs ``gc.collect()``
        first so objects that are only waiting for the collector do not count. Blocks a few ms."""
        if collect_garbage:
            gc.collect()
        process = psutil.Process()
        children: dict[int, str] = {}
        for child in process.children(recursive=True):
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                children[child.pid] = " ".join(child.cmdline())[:120] or child.name()
            except psutil.NoSuchProcess:
                continue
        connections: Counter[str] = Counter()
        for conn in process.net_connections(kind="all"):
            connections[_describe_connection(conn)] += 1
        root = Path(temp_root or tempfile.gettempdir())
        patterns = [p.replace("{pid}", str(os.getpid())) for p in temp_patterns]
        try:
            names = os.listdir(root)
        except OSError:
            names = []
        temp_dirs = frozenset(str(root / n) for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))
        rss, uss = process_memory(unique=memory)
        return cls(
            children=MappingProxyType(children),
            fds=process.num_fds(),
            files=frozenset(f.path for f in process.open_files()),
            connections=connections,
            temp_dirs=temp_dirs,
            threads=Counter(t.name for t in threading.enumerate()),
            rss_bytes=rss,
            uss_bytes=uss,
        )

    def compare(self, before: ResourceSnapshot) -> LeakReport:
        """What this snapshot holds beyond ``before``. Pure."""
        return LeakReport(
            children=tuple(
                f"{pid} ({cmd})" for pid, cmd in sorted(self.children.items()) if pid not in before.children
            ),
            fd_growth=self.fds - before.fds,
            files=tuple(sorted(self.files - before.files)),
            connections=tuple(sorted((self.connections - before.connections).elements())),
            temp_dirs=tuple(sorted(self.temp_dirs - before.temp_dirs)),
            threads=tuple(sorted((self.threads - before.threads).elements())),
            rss_growth_bytes=self.rss_bytes - before.rss_bytes,
            uss_growth_bytes=(
                self.uss_bytes - before.uss_bytes
                if self.uss_bytes is not None and before.uss_bytes is not None
                else None
            ),
        )


def _describe_connection(conn: Any) -> str:
    def address(value: Any) -> str:
        if not value:
            return "-"
        if isinstance(value, str):
            return value
        return f"{value[0]}:{value[1]}"

    kind = {1: "unix", 2: "inet", 10: "inet6"}.get(int(conn.family), str(conn.family))
    return f"{kind} {address(conn.laddr)} -> {address(conn.raddr)} {conn.status or ''}".strip()


def wait_for_no_leaks(
    before: ResourceSnapshot,
    *,
    timeout_s: float = 10.0,
    temp_patterns: Sequence[str] = DEFAULT_TEMP_PATTERNS,
    temp_root: str | Path | None = None,
) -> LeakReport:
    """Compare snapshots with ``before`` until nothing leaks or ``timeout_s`` passed; return the last
    comparison. Children are reaped and daemon threads end a moment after a host closes, hence the polling.
    Blocks up to ``timeout_s``."""
    ends = time.monotonic() + timeout_s
    while True:
        report = ResourceSnapshot.take(temp_patterns=temp_patterns, temp_root=temp_root, memory=False).compare(before)
        if not report.leaks or time.monotonic() >= ends:
            break
        time.sleep(0.05)
    # The memory figures of the final report include USS (the polling above skips it: it is the slow part).
    final = ResourceSnapshot.take(temp_patterns=temp_patterns, temp_root=temp_root).compare(before)
    return final if final.leaks or not report.leaks else report
