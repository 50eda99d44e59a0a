"""Many concurrent callers at every trust level: every call is answered right or fails with a precise error,
none hangs, the host's own counters agree with the callers', and host memory stays flat over 100,000 calls.

Sizes scale with ``PLUGIN_POOL_LOAD_SCALE`` / ``--load-scale`` (see conftest.py). Elapsed-time bounds are
only "did not hang" bounds (deadline plus a generous grace), never performance targets.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _load_helpers import CALL_TIMEOUT_S, scaled

from plugin_pool import PluginHost
from plugin_pool.errors import (
    CallTimeoutError,
    CapabilityDeniedError,
    PayloadError,
    PluginCallError,
    WorkerCrashedError,
)
from plugin_pool.registry.base import EventKind
from plugin_pool.testing.load import (
    MIB,
    CallKind,
    ChaosMonkey,
    LoadDriver,
    ResourceSnapshot,
    echo_call,
    make_echo_plugin,
    process_memory,
    wait_for_no_leaks,
    write_load_plugin,
)

pytestmark = [pytest.mark.load, pytest.mark.sandbox, pytest.mark.slow]

HostFactory = Callable[..., PluginHost]
GRACE_S = 5.0
SANDBOX_ERRORS = (WorkerCrashedError, CallTimeoutError)
"""What an Untrusted call may precisely fail with when a worker dies under it (or no worker is free in time)."""


def start_three_levels(host: PluginHost, folder: Path, prefix: str) -> tuple[str, str, str]:
    """Add and start a BuiltIn, a Trusted and an Untrusted (2 workers) load plugin; return their ids."""
    ids = (f"{prefix}-builtin", f"{prefix}-trusted", f"{prefix}-untrusted")
    host.add_plugin(make_echo_plugin(ids[0], "builtin"))
    host.add_plugin(make_echo_plugin(ids[1], "trusted"))
    host.add_plugin_dir(write_load_plugin(folder, ids[2], min_workers=2))
    health = host.start_plugins()
    assert health.active == ids, health.failed
    return ids


def fail_call(
    host: PluginHost, plugin_id: str, group: str, weight: float, errors: tuple[type[Exception], ...] = ()
) -> CallKind:
    """A call to ``fail``, which raises ValueError(payload): it must come back as that PluginCallError exactly."""

    def call(n: int) -> Any:
        return host.invoke(plugin_id, "fail", f"boom-{n}")

    def check_error(n: int, exc: BaseException) -> bool:
        return isinstance(exc, PluginCallError) and (
            exc.plugin_id,
            exc.capability,
            exc.remote_type,
            exc.remote_message,
        ) == (plugin_id, "fail", "ValueError", f"boom-{n}")

    return CallKind(
        f"{plugin_id}.fail",
        call,
        check=lambda n, result: False,  # it must never return
        errors=(PluginCallError, *errors),
        check_error=lambda n, exc: check_error(n, exc) or not isinstance(exc, PluginCallError),
        deadline_s=CALL_TIMEOUT_S,
        weight=weight,
        group=group,
    )


def test_concurrent_callers_get_the_right_result_or_a_precise_error_at_every_level(
    open_host: HostFactory, tmp_path: Path, load_scale: float
) -> None:
    before = ResourceSnapshot.take()
    host = open_host()
    builtin, trusted, untrusted = start_three_levels(host, tmp_path, "calls")

    def denied(n: int) -> Any:
        return host.invoke(builtin, f"undeclared-{n % 3}", n)

    def bad_payload(n: int) -> Any:
        return host.invoke(untrusted, "echo", {"not json": {n}})

    kinds = [
        echo_call(host, builtin, group="builtin", weight=30),
        fail_call(host, builtin, "builtin", 2),
        CallKind(
            "builtin.denied",
            denied,
            check=lambda n, result: False,
            errors=(CapabilityDeniedError,),
            check_error=lambda n, exc: (
                isinstance(exc, CapabilityDeniedError) and exc.capability == f"undeclared-{n % 3}"
            ),
            weight=1,
            group="builtin",
        ),
        echo_call(host, trusted, group="trusted", weight=25),
        echo_call(host, trusted, capability="echo_async", group="trusted", weight=5, deadline_s=CALL_TIMEOUT_S),
        fail_call(host, trusted, "trusted", 2),
        echo_call(host, untrusted, group="untrusted", weight=15, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S),
        echo_call(
            host,
            untrusted,
            name="untrusted.bytes",
            group="untrusted",
            as_bytes=True,
            weight=8,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
        echo_call(
            host, untrusted, group="untrusted", batch=32, weight=4, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S
        ),
        fail_call(host, untrusted, "untrusted", 2, errors=SANDBOX_ERRORS),
        CallKind(
            "untrusted.bad_payload",
            bad_payload,
            check=lambda n, result: False,
            errors=(PayloadError,),
            check_error=lambda n, exc: "cannot cross the sandbox boundary" in str(exc),
            weight=1,
            group="untrusted",
        ),
    ]
    calls = scaled(12_000, load_scale)
    report = LoadDriver(kinds, threads=16, calls=calls, grace_s=GRACE_S, seed=1).run(timeout_s=60 * load_scale + 60)
    print(f"\n{report.format()}")

    report.check()
    assert report.calls == calls
    by_kind = report.kinds
    # No worker died: every echo is right and every deliberate error the precise one, except that a sandboxed
    # call may time out waiting for a free worker (QueueTimeoutError: it never started).
    waited_out = Counter({name: kind.errors.get("QueueTimeoutError", 0) for name, kind in by_kind.items()})
    for name, kind in by_kind.items():
        assert kind.calls > 0, name
        if name.endswith((".fail", ".denied", ".bad_payload")):
            assert kind.failed == kind.calls, (name, dict(kind.errors))
        else:
            assert kind.ok + waited_out[name] == kind.calls, (name, dict(kind.errors))
            assert kind.group == "untrusted" or kind.ok == kind.calls, (name, dict(kind.errors))
    assert report.items_ok == sum(k.ok for k in by_kind.values()) + 31 * by_kind[f"{untrusted}.echo[32]"].ok

    # The host's own counters agree with the callers' exactly (counted under 16 threads).
    trusted_stats = host.get_plugin_health(trusted).stats
    assert trusted_stats is not None
    trusted_calls = sum(k.calls for k in by_kind.values() if k.group == "trusted")
    assert (trusted_stats.calls, trusted_stats.errors) == (trusted_calls, by_kind[f"{trusted}.fail"].calls)
    routed = [f"{untrusted}.echo", "untrusted.bytes", f"{untrusted}.fail", "untrusted.bad_payload"]
    untrusted_stats = host.get_plugin_health(untrusted).stats
    assert untrusted_stats is not None
    assert untrusted_stats.calls == sum(by_kind[name].calls for name in routed)
    pool_stats = host.sandbox.get_stats(untrusted) if host.sandbox is not None else None
    assert pool_stats is not None
    # One worker call per single call and per batch (32 items fit one chunk); bad payloads never leave the host,
    # nor do calls that timed out waiting for a worker.
    sent = sum(by_kind[name].calls for name in routed[:3]) + by_kind[f"{untrusted}.echo[32]"].calls
    sent -= sum(waited_out.values())
    assert pool_stats.calls == sent
    denials = host.registry.list_events(plugin_id=builtin, event=EventKind.CAPABILITY_DENIED)
    assert len(denials) == by_kind["builtin.denied"].calls
    assert host.restarts == Counter()

    host.close()
    leaks = wait_for_no_leaks(before)
    print(leaks.format())
    assert leaks.leaks == []


def test_host_memory_stays_flat_over_100k_calls_with_workers_killed(
    open_host: HostFactory, tmp_path: Path, load_scale: float
) -> None:
    before = ResourceSnapshot.take()
    host = open_host()
    builtin, trusted, untrusted = start_three_levels(host, tmp_path, "memory")
    # Mostly in-process calls; one in nine crosses the sandbox, almost half of those as invoke_many batches
    # (which carry two thirds of all results).
    kinds = [
        echo_call(host, builtin, group="builtin", weight=48),
        echo_call(host, trusted, group="trusted", weight=38),
        echo_call(host, trusted, capability="echo_async", group="trusted", weight=3, deadline_s=CALL_TIMEOUT_S),
        echo_call(host, untrusted, group="untrusted", weight=6, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S),
        echo_call(
            host,
            untrusted,
            group="untrusted",
            batch=16,
            as_bytes=True,
            weight=3,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
        echo_call(
            host,
            untrusted,
            name="untrusted.batch",
            group="untrusted",
            batch=64,
            weight=2,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
    ]
    with ChaosMonkey(host, plugin_ids=[untrusted], interval_s=0.5, seed=3) as monkey:
        # Warm up: every path, a few replacements, the allocator's pools and grpc's buffers reach their size.
        warm = LoadDriver(kinds, threads=8, calls=scaled(8_000, load_scale), seed=2).run(timeout_s=120)
        warm.check()
        rss_before, uss_before = process_memory()
        started = time.monotonic()
        calls = scaled(100_000, load_scale, minimum=100_000)
        report = LoadDriver(kinds, threads=8, calls=calls, grace_s=GRACE_S, seed=5).run(timeout_s=120 * load_scale)
        elapsed = time.monotonic() - started
        ResourceSnapshot.take(memory=False)  # a gc.collect() like the one before the first measurement
        rss_after, uss_after = process_memory()
    assert monkey.wait_settled()
    print(f"\n{report.format()}")
    growth = (rss_after - rss_before) / MIB
    uss_growth = (uss_after - uss_before) / MIB if uss_after is not None and uss_before is not None else float("nan")
    print(
        f"memory over {report.calls:,} calls ({report.items_ok:,} results, {monkey.total_kills} workers killed) "
        f"in {elapsed:.1f} s: RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB ({growth:+.1f}), "
        f"USS {uss_growth:+.1f} MiB"
    )

    report.check()
    assert report.calls == calls
    assert report.kinds[f"{builtin}.echo"].ok == report.kinds[f"{builtin}.echo"].calls
    assert report.count_by_group("calls")["untrusted"] >= calls // 10  # a large share crossed the sandbox
    assert report.count_by_group("items_ok")["untrusted"] >= report.items_ok // 2
    assert growth < 20, f"host RSS grew by {growth:.1f} MiB over {report.calls:,} calls"
    assert monkey.errors == []
    assert host.restarts == monkey.expected_restarts()

    host.close()
    leaks = wait_for_no_leaks(before)
    print(leaks.format())
    assert leaks.leaks == []
