"""Chaos under load: workers and zygotes killed, deadlines and memory limits exceeded, while many threads call.

Two hosts in this process, each with its own zygote, so every replacement has one known cause:

- host "victims" (BuiltIn, Trusted and two Untrusted plugins of 2 workers each): a ChaosMonkey SIGKILLs a
  random worker every 0.15 s and every 6th time the zygote; each kill must be exactly one ``crash`` restart;
- host "misbehaving": ``sleepy`` (call deadline 0.3 s) is sometimes asked to sleep 2 s, and ``hog`` (256 MiB
  memory limit) to allocate 2 GiB; each killed deadline is one ``timeout`` restart, each memory error one
  ``memory`` restart.

Every call must be answered right or fail with a precise error (none vanishes, none hangs past its deadline
plus the grace), and nothing (process, fd, socket, temp dir, thread) may be left once the hosts close.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _load_helpers import CALL_TIMEOUT_S

from plugin_pool import PluginHost
from plugin_pool.errors import CallTimeoutError, ResourceLimitError, WorkerCrashedError
from plugin_pool.registry.base import EventKind
from plugin_pool.testing.load import (
    CallKind,
    ChaosMonkey,
    LoadDriver,
    ResourceSnapshot,
    echo_call,
    make_echo_plugin,
    wait_for_no_leaks,
    write_load_plugin,
)

pytestmark = [pytest.mark.load, pytest.mark.sandbox, pytest.mark.slow]

HostFactory = Callable[..., PluginHost]
GRACE_S = 5.0
SLEEPY_TIMEOUT_S = 0.3
OVERSLEEP_S = 2.0
MEMORY_MB = 256
TOO_MUCH_BYTES = 2 * 1024 * 1024 * 1024
SANDBOX_ERRORS = (WorkerCrashedError, CallTimeoutError)


def sleep_call(host: PluginHost, plugin_id: str, seconds: float, *, weight: float) -> CallKind:
    """``sleep`` for ``seconds``: a short one must return its token (or time out waiting for the one worker);
    one past the deadline must time out, precisely, and never return."""
    overdue = seconds > SLEEPY_TIMEOUT_S

    def call(n: int) -> Any:
        return host.invoke(plugin_id, "sleep", {"s": seconds, "token": n})

    return CallKind(
        f"{plugin_id}.sleep({seconds:g})",
        call,
        check=lambda n, result: not overdue and result == n,
        errors=(CallTimeoutError,),
        check_error=lambda n, exc: isinstance(exc, CallTimeoutError) and exc.timeout_s == SLEEPY_TIMEOUT_S,
        deadline_s=SLEEPY_TIMEOUT_S,
        weight=weight,
        group="misbehaving",
    )


def allocate_call(host: PluginHost, plugin_id: str, size: int, *, weight: float) -> CallKind:
    """``allocate`` ``size`` bytes: a small one must return its token; one past the memory limit must fail with
    ResourceLimitError(limit="memory") and never return."""
    too_much = size > MEMORY_MB * 1024 * 1024

    def call(n: int) -> Any:
        return host.invoke(plugin_id, "allocate", {"bytes": size, "token": n})

    def check_error(n: int, exc: BaseException) -> bool:
        if isinstance(exc, ResourceLimitError):
            return too_much and exc.limit == "memory" and exc.plugin_id == plugin_id
        return isinstance(exc, CallTimeoutError)  # waiting for the replacement of a recycled worker

    return CallKind(
        f"{plugin_id}.allocate({size // 1024 // 1024} MiB)",
        call,
        check=lambda n, result: not too_much and result == {"allocated": size, "token": n},
        errors=(ResourceLimitError, CallTimeoutError),
        check_error=check_error,
        deadline_s=CALL_TIMEOUT_S,
        weight=weight,
        group="misbehaving",
    )


def restart_metrics(host: PluginHost) -> Counter[tuple[str, str]]:
    """``sandbox_process_restarts_total`` as the host's Prometheus registry exports it (non-zero samples)."""
    found: Counter[tuple[str, str]] = Counter()
    for metric in host.metrics_registry.collect():
        if metric.name == "sandbox_process_restarts":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    found[sample.labels["plugin_id"], sample.labels["reason"]] = int(sample.value)
    return found


def restart_events(host: PluginHost) -> Counter[tuple[str, str]]:
    """The ``worker_restarted`` audit events by (plugin id, reason)."""
    events = host.registry.list_events(event=EventKind.WORKER_RESTARTED)
    return Counter((str(e.plugin_id), str(e.details["reason"])) for e in events)


def test_chaos_loses_no_call_and_counts_every_replacement_exactly(
    open_host: HostFactory, tmp_path: Path, load_scale: float
) -> None:
    before = ResourceSnapshot.take()
    victims = open_host()
    victims.add_plugin(make_echo_plugin("chaos-builtin", "builtin"))
    victims.add_plugin(make_echo_plugin("chaos-trusted", "trusted"))
    for plugin_id in ("victim-a", "victim-b"):
        victims.add_plugin_dir(write_load_plugin(tmp_path, plugin_id, min_workers=2))
    assert victims.start_plugins().failed == {}
    misbehaving = open_host()
    misbehaving.add_plugin_dir(write_load_plugin(tmp_path, "sleepy", min_workers=1, call_timeout_s=SLEEPY_TIMEOUT_S))
    misbehaving.add_plugin_dir(write_load_plugin(tmp_path, "hog", min_workers=1, memory_mb=MEMORY_MB))
    assert misbehaving.start_plugins().failed == {}

    kinds = [
        echo_call(victims, "chaos-builtin", group="builtin", weight=25),
        echo_call(victims, "chaos-trusted", group="trusted", weight=20),
        echo_call(victims, "chaos-trusted", capability="echo_async", group="trusted", weight=3, deadline_s=5.0),
        echo_call(victims, "victim-a", group="untrusted", weight=12, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S),
        echo_call(
            victims, "victim-a", group="untrusted", batch=48, weight=3, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S
        ),
        echo_call(
            victims,
            "victim-b",
            group="untrusted",
            as_bytes=True,
            weight=10,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
        sleep_call(misbehaving, "sleepy", 0.0, weight=4),
        sleep_call(misbehaving, "sleepy", OVERSLEEP_S, weight=0.1),
        allocate_call(misbehaving, "hog", 1024 * 1024, weight=4),
        allocate_call(misbehaving, "hog", TOO_MUCH_BYTES, weight=0.1),
    ]
    duration_s = 5.0 * load_scale
    with ChaosMonkey(victims, interval_s=0.15, zygote_every=6, seed=11) as monkey:
        report = LoadDriver(kinds, threads=12, duration_s=duration_s, grace_s=GRACE_S, seed=4).run(
            timeout_s=duration_s + OVERSLEEP_S + GRACE_S + 30
        )
    print(f"\n{report.format()}")

    # Every call accounted for: right result or precise error, none lost, none hung.
    report.check()
    assert report.count_by_group("ok") >= Counter(builtin=1, trusted=1, untrusted=1, misbehaving=1)
    assert monkey.errors == []
    assert monkey.unsettled == 0
    if load_scale >= 1:  # a shorter run may end before the first zygote kill or misbehaving call
        assert monkey.zygote_kills >= 1 and monkey.worker_kills >= 5
        assert report.errors["WorkerCrashedError[SIGKILL]"] >= 1

    # Every replacement counted exactly once, under its reason: in host.restarts, the metric and the audit trail.
    assert monkey.wait_settled()
    assert ChaosMonkey(misbehaving).wait_settled()
    print(
        f"chaos: {monkey.worker_kills} workers and {monkey.zygote_kills} zygotes killed "
        f"({monkey.total_kills} workers in all); victims' restarts {dict(victims.restarts)}; "
        f"misbehaving host's restarts {dict(misbehaving.restarts)}"
    )
    assert victims.restarts == monkey.expected_restarts()
    timeouts = sum(k.errors.get("CallTimeoutError[worker killed]", 0) for k in report.kinds.values())
    memory = sum(k.errors.get("ResourceLimitError[memory]", 0) for k in report.kinds.values())
    assert load_scale < 1 or (timeouts >= 1 and memory >= 1)
    assert misbehaving.restarts == Counter({("sleepy", "timeout"): timeouts, ("hog", "memory"): memory})
    for host in (victims, misbehaving):
        assert restart_metrics(host) == host.restarts
        assert restart_events(host) == host.restarts
        assert host.get_health().failed == {}

    victims.close()
    misbehaving.close()
    leaks = wait_for_no_leaks(before)
    print(leaks.format())
    assert leaks.leaks == []
