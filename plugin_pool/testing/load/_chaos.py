"""ChaosMonkey: sandbox workers (and the zygote) killed with SIGKILL, every kill counted.

Part of :mod:`plugin_pool.testing.load` (import from there).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType

import psutil

from plugin_pool.host import PluginHost
from plugin_pool.lifecycle import PluginState

# -- chaos ----------------------------------------------------------------------------------------------------


class ChaosMonkey:
    """Kills sandbox workers of ``host`` with SIGKILL at intervals, from its own thread, and counts each kill.

    Every ``interval_s`` it waits (up to ``settle_timeout_s``) until the pool is settled (see
    :meth:`is_settled`), then kills one random live worker of ``plugin_ids`` (default: every sandboxed
    plugin), or, every ``zygote_every``-th time (0: never), the zygote, which takes every worker of the
    host with it. ``max_kills`` bounds the actions. Waiting for the pool to settle before each kill makes
    the count exact: every killed worker is one replacement, reason ``crash``, for a plugin whose pool has
    ``min_workers == max_workers`` (a pool grown above its minimum replaces a lost worker only when calls
    wait) and a crash limit the kills do not reach. Compare :attr:`kills` with ``host.restarts`` after
    :meth:`stop` and :meth:`wait_settled`.

    ``start``/``stop`` are idempotent; ``stop`` does not block, ``join`` does (bounded). A context manager.
    """

    def __init__(
        self,
        host: PluginHost,
        *,
        plugin_ids: Iterable[str] | None = None,
        interval_s: float = 0.25,
        zygote_every: int = 0,
        max_kills: int | None = None,
        settle_timeout_s: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.plugin_ids = tuple(plugin_ids) if plugin_ids is not None else None
        self.interval_s = interval_s
        self.zygote_every = zygote_every
        self.max_kills = max_kills
        self.settle_timeout_s = settle_timeout_s
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.kills: Counter[str] = Counter()
        """Workers killed, by plugin id (those that died with a killed zygote included)."""
        self.worker_kills = 0
        """Single workers killed."""
        self.zygote_kills = 0
        """Times the zygote was killed."""
        self.unsettled = 0
        """Times the pool did not settle within ``settle_timeout_s`` (that kill was skipped)."""
        self.errors: list[str] = []
        """Unexpected trouble in the chaos thread (a process that vanished is not trouble)."""

    def start(self) -> ChaosMonkey:
        """Start the chaos thread (no-op if running). Does not block."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plugin-pool-chaos", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the chaos thread to stop (it finishes the kill in progress). Does not block; idempotent."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the chaos thread to end (bounded by ``settle_timeout_s`` + 5 s when None)."""
        if self._thread is not None:
            self._thread.join(self.settle_timeout_s + 5.0 if timeout_s is None else timeout_s)

    def __enter__(self) -> ChaosMonkey:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.join()

    @property
    def total_kills(self) -> int:
        """Workers killed in all (single kills plus those that died with the zygote)."""
        with self._lock:
            return sum(self.kills.values())

    def expected_restarts(self) -> Counter[tuple[str, str]]:
        """The replacements the kills cause, keyed like ``host.restarts``: ``(plugin_id, "crash")``."""
        with self._lock:
            return Counter({(plugin_id, "crash"): n for plugin_id, n in self.kills.items() if n})

    def is_settled(self) -> bool:
        """Whether the pool is at rest: a zygote runs; every Active sandboxed plugin has at least its minimum
        of serving workers and its warm spares, all alive; and the zygote has no other children (no worker
        being born or retired). Never blocks on calls."""
        pool = self.host.sandbox
        if pool is None:
            return True
        zygote = pool.supervisor.zygote_pid
        if zygote is None:
            return False
        expected: set[int] = set()
        for plugin_id in _sandboxed_active(self.host):
            stats = pool.get_stats(plugin_id)
            pids = pool.list_worker_pids(plugin_id)
            if stats is None or len(pids) != stats.workers + stats.spares or stats.workers < stats.min_workers:
                return False
            if stats.spares < pool.config.spare_workers:
                return False
            expected.update(pids)
        return _live_children(zygote) == expected

    def wait_settled(self, timeout_s: float | None = None) -> bool:
        """Poll :meth:`is_settled` until true or ``timeout_s`` (default ``settle_timeout_s``); return it."""
        ends = time.monotonic() + (self.settle_timeout_s if timeout_s is None else timeout_s)
        while True:
            if self.is_settled():
                return True
            if time.monotonic() >= ends or (self._stop.is_set() and threading.current_thread() is self._thread):
                return False
            time.sleep(0.005)

    def kill_one(self) -> str | None:
        """Kill one random live worker of the chosen plugins now and wait until the pool has noticed its
        death; return its plugin id (None: no worker). Does not wait for the replacement (see
        :meth:`wait_settled`)."""
        pool = self.host.sandbox
        if pool is None:
            return None
        zygote = pool.supervisor.zygote_pid
        plugin_ids = self.plugin_ids if self.plugin_ids is not None else _sandboxed_active(self.host)
        candidates = [(p, pid) for p in plugin_ids for pid in pool.list_worker_pids(p)]
        if not candidates or zygote is None:
            return None
        plugin_id, pid = self._random.choice(candidates)
        try:
            if psutil.Process(pid).ppid() != zygote:  # not a worker of this host any more (pid reused)
                return None
            os.kill(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            return None
        with self._lock:
            self.kills[plugin_id] += 1
            self.worker_kills += 1
        # Until the pool has seen the death, the pool could look settled with the dying worker in it.
        self._wait_until(lambda: pid not in pool.list_worker_pids(plugin_id), f"worker {pid} to be reported dead")
        return plugin_id

    def kill_zygote(self) -> int:
        """Kill the zygote now (its workers die with it) and wait until the supervisor has noticed; return
        how many workers it took. Counts each of those workers in :attr:`kills` under its plugin."""
        pool = self.host.sandbox
        if pool is None or pool.supervisor.zygote_pid is None:
            return 0
        zygote = pool.supervisor.zygote_pid
        taken = {p: len(pool.list_worker_pids(p)) for p in _sandboxed_active(self.host)}
        try:
            os.kill(zygote, signal.SIGKILL)
        except ProcessLookupError:
            return 0
        with self._lock:
            self.kills.update({p: n for p, n in taken.items() if n})
            self.zygote_kills += 1
        self._wait_until(lambda: pool.supervisor.zygote_pid != zygote, f"zygote {zygote} to be reported dead")
        return sum(taken.values())

    def _wait_until(self, condition: Callable[[], bool], what: str) -> None:
        ends = time.monotonic() + self.settle_timeout_s
        while not condition():
            if time.monotonic() >= ends:
                with self._lock:
                    self.errors.append(f"timed out after {self.settle_timeout_s:g} s waiting for {what}")
                return
            time.sleep(0.001)

    def _run(self) -> None:
        actions = 0
        while not self._stop.wait(self.interval_s):
            if self.max_kills is not None and actions >= self.max_kills:
                return
            if not self.wait_settled():
                if self._stop.is_set():
                    return
                with self._lock:
                    self.unsettled += 1
                continue
            try:
                actions += 1
                if self.zygote_every and actions % self.zygote_every == 0:
                    self.kill_zygote()
                else:
                    self.kill_one()
            except Exception as exc:  # keep killing; the test reads errors
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")


def _sandboxed_active(host: PluginHost) -> list[str]:
    return [p.plugin_id for p in host.get_health().plugins if p.workers is not None and p.state is PluginState.ACTIVE]


def _live_children(pid: int) -> set[int]:
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return set()
    alive = set()
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return alive
