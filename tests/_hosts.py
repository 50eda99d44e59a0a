"""Process helpers every test directory shares: is a process gone, a process's live children, and closing a
host so that its zygote and workers are gone whatever state a test left it in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psutil

from plugin_pool import PluginHost


def is_gone(pid: int) -> bool:
    """Whether the process is dead (a zombie not yet reaped by its parent counts as dead)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_children(pid: int) -> list[int]:
    """Pids of ``pid``'s children that are still running (zombies excluded)."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return sorted(c.pid for c in children if not is_gone(c.pid))


def ns_pid(pid: int) -> int:
    """The pid a process sees for itself (its innermost PID namespace): workers report this one."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid


def close_host(host: PluginHost) -> None:
    """Close ``host`` and make sure its zygote and workers are gone, whatever state the test left."""
    pids: list[int] = []
    pool = host.sandbox
    zygote = pool.supervisor.zygote_pid if pool is not None else None
    if zygote is not None:
        pids.append(zygote)
        pids += live_children(zygote)
    host.close()
    for pid in pids:
        if not is_gone(pid):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def closed_after(new_host: Callable[..., PluginHost]) -> Iterator[Callable[..., PluginHost]]:
    """The body of an ``open_host`` fixture: yield a factory calling ``new_host``, then close every host it
    made, newest first (closing is idempotent, so a test may close one itself first)."""
    hosts: list[PluginHost] = []

    def make(*args: Any, **kwargs: Any) -> PluginHost:
        host = new_host(*args, **kwargs)
        hosts.append(host)
        return host

    yield make
    for host in reversed(hosts):
        close_host(host)
