"""The load machinery itself (plugin_pool.testing.load), without worker processes: counting, hangs, histograms,
leak snapshots, the load plugins. Fast; the real load is in test_load_calls.py and test_chaos*.py."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from plugin_pool import PluginState
from plugin_pool.errors import (
    CallTimeoutError,
    PluginCallError,
    QueueTimeoutError,
    ResourceLimitError,
    WorkerCrashedError,
)
from plugin_pool.manifest import read_manifest
from plugin_pool.testing import PluginHarness
from plugin_pool.testing.load import (
    CallKind,
    LatencyHistogram,
    LoadDriver,
    ResourceSnapshot,
    error_label,
    format_seconds,
    make_echo_plugin,
    wait_for_no_leaks,
    write_load_plugin,
)

pytestmark = pytest.mark.load


def test_every_call_ends_in_exactly_one_outcome_and_the_total_is_exact() -> None:
    def flaky(n: int) -> Any:
        if n % 10 == 3:
            raise CallTimeoutError("p", "echo", 1.0)
        if n % 10 == 7:
            raise KeyError(n)
        return n if n % 10 != 5 else -1

    kinds = [
        CallKind("good", lambda n: n, check=lambda n, r: r == n, weight=3),
        CallKind("flaky", flaky, check=lambda n, r: r == n, errors=(CallTimeoutError,), weight=1),
    ]
    report = LoadDriver(kinds, threads=6, calls=10_000, seed=1).run(timeout_s=30)  # one whole schedule

    assert report.calls == 10_000 and report.in_flight == 0 and report.live_threads == 0
    flaky_report = report.kinds["flaky"]
    tenth = [n for n in range(10_000) if n % 10 == 3]
    assert report.kinds["good"].ok == report.kinds["good"].calls == 7_500
    assert flaky_report.calls == 2_500
    # Sequence numbers are unique, so the outcomes follow from which numbers the flaky kind drew.
    assert flaky_report.errors == {"CallTimeoutError": flaky_report.errors["CallTimeoutError"]}
    assert flaky_report.unexpected.keys() <= {"KeyError"}
    assert flaky_report.ok + flaky_report.wrong + flaky_report.failed + flaky_report.unexpected_count == 2_500
    assert 0 < flaky_report.failed < len(tenth)
    assert report.ok + report.wrong + report.failed + report.unexpected_count == report.calls
    problems = report.list_problems()
    assert any("wrong result" in p for p in problems) and any("imprecise error" in p for p in problems)
    assert len(report.failures) == 20  # examples are bounded
    with pytest.raises(AssertionError, match="wrong result"):
        report.check()


def test_check_error_refuses_a_precise_type_with_the_wrong_content() -> None:
    def fail(n: int) -> Any:
        raise PluginCallError("p", "fail", "ValueError", f"boom-{n}" if n % 2 else "other")

    kind = CallKind(
        "fail",
        fail,
        check=lambda n, r: False,
        errors=(PluginCallError,),
        check_error=lambda n, exc: isinstance(exc, PluginCallError) and exc.remote_message == f"boom-{n}",
    )
    report = LoadDriver([kind], threads=2, calls=100).run(timeout_s=30)
    assert (report.failed, report.wrong) == (50, 50)
    assert report.errors == {"PluginCallError[ValueError]": 50}


def test_a_call_past_its_deadline_plus_grace_is_overdue_and_a_stuck_one_is_unfinished() -> None:
    release = threading.Event()

    def stuck(n: int) -> Any:
        if n == 0:
            release.wait(20)  # bounded: released below
        else:
            time.sleep(0.06)
        return n

    driver = LoadDriver(
        [CallKind("slow", stuck, check=lambda n, r: r == n, deadline_s=0.01)], threads=2, calls=4, grace_s=0.03
    )
    report = driver.run(timeout_s=1.0)
    assert report.in_flight == 1 and report.live_threads == 1
    assert report.overdue == 3
    assert any("never ended" in p for p in report.list_problems())
    release.set()
    final = driver.join(timeout_s=10)
    assert (final.in_flight, final.live_threads, final.overdue, final.ok) == (0, 0, 4, 4)


def test_duration_and_stop_end_the_run() -> None:
    started = time.monotonic()
    report = LoadDriver([CallKind("fast", lambda n: n)], threads=3, duration_s=0.3).run(timeout_s=10)
    assert 0.25 <= time.monotonic() - started < 5
    assert report.calls > 0 and report.in_flight == 0
    with LoadDriver([CallKind("fast", lambda n: time.sleep(0.001))], threads=2, duration_s=60) as driver:
        time.sleep(0.05)
    assert not driver.is_running
    with pytest.raises(ValueError, match="calls= or duration_s="):
        LoadDriver([CallKind("x", lambda n: n)])
    with pytest.raises(ValueError, match="unique"):
        LoadDriver([CallKind("x", lambda n: n), CallKind("x", lambda n: n)], calls=1)


def test_weights_set_the_mix_and_a_tiny_weight_still_runs() -> None:
    kinds = [CallKind("heavy", lambda n: n, weight=90), CallKind("light", lambda n: n, weight=10)]
    kinds.append(CallKind("rare", lambda n: n, weight=0.001))
    report = LoadDriver(kinds, threads=1, calls=20_000).run(timeout_s=30)
    assert report.kinds["heavy"].calls == pytest.approx(18_000, abs=10)
    assert report.kinds["light"].calls == pytest.approx(2_000, abs=10)
    assert report.kinds["rare"].calls >= 1


def test_histogram_percentiles_are_within_one_bucket_and_differences_subtract() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(20_000)]
    first, second = LatencyHistogram(), LatencyHistogram()
    for v in values[:10_000]:
        first.add(v)
    both = first.copy()
    for v in values[10_000:]:
        second.add(v)
        both.add(v)
    exact = sorted(values)
    for q in (50, 90, 99):
        estimate = both.percentile(q)
        assert abs(estimate / exact[int(len(exact) * q / 100) - 1] - 1) < 0.13, q  # a bucket is ~12% wide
    assert both.percentile(100) == max(values) and both.count == 20_000
    assert both.minus(first).counts == second.counts
    merged = LatencyHistogram().merge(first).merge(second)
    assert merged.counts == both.counts and merged.max_s == both.max_s
    assert LatencyHistogram().percentile(50) == 0.0
    assert [format_seconds(s) for s in (2e-7, 1.23e-4, 0.0123, 1.5)] == ["200 ns", "123 µs", "12.3 ms", "1.50 s"]


def test_error_labels_tell_causes_apart() -> None:
    assert error_label(CallTimeoutError("p", "c", 1.0)) == "CallTimeoutError"
    assert error_label(CallTimeoutError("p", "c", 1.0, pid=7)) == "CallTimeoutError[worker killed]"
    assert error_label(QueueTimeoutError("p", "c", 1.0)) == "QueueTimeoutError"
    assert error_label(WorkerCrashedError(plugin_id="p", pid=7, signal=9)) == "WorkerCrashedError[SIGKILL]"
    assert error_label(WorkerCrashedError(plugin_id="p", pid=7, exit_code=3)) == "WorkerCrashedError[exit 3]"
    assert error_label(ResourceLimitError(limit="memory", plugin_id="p", pid=7)) == "ResourceLimitError[memory]"
    assert error_label(PluginCallError("p", "c", "ValueError", "x")) == "PluginCallError[ValueError]"
    assert error_label(KeyError("x")) == "KeyError"


def test_resource_snapshot_sees_children_threads_and_temp_dirs_until_they_are_gone(tmp_path: Path) -> None:
    before = ResourceSnapshot.take(temp_patterns=("leak-*",), temp_root=tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(30,), name="leaky-thread", daemon=True)
    thread.start()
    (tmp_path / "leak-1").mkdir()
    try:
        report = ResourceSnapshot.take(temp_patterns=("leak-*",), temp_root=tmp_path).compare(before)
        assert [c.split()[0] for c in report.children] == [str(child.pid)]
        assert report.threads == ("leaky-thread",)
        assert report.temp_dirs == (str(tmp_path / "leak-1"),)
        assert len(report.leaks) == 3
    finally:
        child.kill()
        child.wait(10)
        stop.set()
        thread.join(10)
        (tmp_path / "leak-1").rmdir()
    after = wait_for_no_leaks(before, temp_patterns=("leak-*",), temp_root=tmp_path, timeout_s=5)
    assert after.leaks == []
    assert "no leaks" in after.format()


@pytest.mark.parametrize("level", ["builtin", "trusted"])
def test_the_in_process_load_plugin_echoes_sleeps_and_fails(level: str) -> None:
    with PluginHarness(make_echo_plugin(f"load-{level}", level)) as harness:
        assert harness.invoke("echo", {"a": [1]}) == {"a": [1]}
        assert harness.invoke("echo_async", b"x") == b"x"
        assert harness.invoke("sleep", {"s": 0, "token": 5}) == 5
        with pytest.raises(PluginCallError) as info:
            harness.invoke("fail", "boom")
        assert (info.value.remote_type, info.value.remote_message) == ("ValueError", "boom")
        assert harness.state is PluginState.ACTIVE


def test_the_untrusted_load_plugin_folder_has_a_valid_manifest(tmp_path: Path) -> None:
    folder = write_load_plugin(tmp_path, "load-u", min_workers=2, memory_mb=256, call_timeout_s=0.5)
    manifest = read_manifest(folder)
    assert manifest.info.id == "load-u"
    assert set(manifest.capabilities.names) == {"echo", "sleep", "allocate", "fail", "pid"}
    assert dict(manifest.pool) == {"min_workers": 2, "max_workers": 2}
    assert dict(manifest.resources) == {"memory_mb": 256, "call_timeout_s": 0.5}
    with pytest.raises(FileExistsError):
        write_load_plugin(tmp_path, "load-u")
