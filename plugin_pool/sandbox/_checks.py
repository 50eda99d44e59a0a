"""The once-a-second check of live workers (host side): memory growth and CPU burned while idle.

A worker whose resident memory grew past ``recycle_memory_growth_mb`` since boot is marked for recycling
(the pool retires it when it is next idle, so no call in flight is lost). A worker that burned more than
``idle_cpu_limit`` CPUs over a window in which no call began or ended (a thread left spinning) is reported
to ``on_idle_cpu``; the pool replaces it. Spares are idle workers here like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from plugin_pool.config import SandboxConfig
from plugin_pool.sandbox.resources import cpu_seconds_of, rss_of
from plugin_pool.sandbox.worker_client import WorkerHandle

__all__ = ["check_workers"]

IDLE_WINDOW_MIN_S = 0.5
"""The shortest idle window judged (the check runs once a second)."""


def check_workers(
    config: SandboxConfig, workers: list[WorkerHandle], on_idle_cpu: Callable[[WorkerHandle, float], None] | None
) -> None:
    """Check each worker once (reads /proc or its cgroup; a few µs each). Never blocks."""
    limit_bytes = config.recycle_memory_growth_mb * 1024 * 1024
    for handle in workers:
        rss = rss_of(handle.pid)
        if rss and handle.rss_baseline and rss - handle.rss_baseline > limit_bytes:
            handle.recycle_for = handle.recycle_for or "memory"
        _check_idle_cpu(config, handle, on_idle_cpu)


def _check_idle_cpu(
    config: SandboxConfig, handle: WorkerHandle, on_idle_cpu: Callable[[WorkerHandle, float], None] | None
) -> None:
    limit = config.idle_cpu_limit
    if limit <= 0 or not handle.booted_at:
        return
    now = time.monotonic()
    used = handle.cgroup.get_cpu_seconds() if handle.cgroup is not None else None
    if used is None:
        used = cpu_seconds_of(handle.pid)
    previous, handle.cpu_sample = handle.cpu_sample, (now, used)
    # Judge only a window in which the worker was idle from start to end (no call began or ended in it).
    if previous is None or handle.busy or handle.idle_since > previous[0] or now - previous[0] < IDLE_WINDOW_MIN_S:
        return
    share = (used - previous[1]) / (now - previous[0])
    if share > limit and on_idle_cpu is not None:
        on_idle_cpu(handle, share)
