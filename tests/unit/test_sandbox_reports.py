"""The sandbox's reports reach the host on the host's background thread, never on the reporting thread.

The pool reports a plugin it gave up (``on_plugin_failed``) from its zygote reader or supervisor thread.
Moving the plugin to Failed takes the host lock and writes the registry; done on the reporting thread, it
deadlocks with a ``start_plugin`` that holds the host lock while it waits for that very thread. These tests
call the bridge's callbacks as the pool does (no worker processes: the ordering is the host's own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from _plugins import Recorder

from plugin_pool import PluginHost, PluginState, TrustLevel
from plugin_pool.registry import EventKind


def report_from_another_thread(report: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=report, name="zygote-reader-stand-in", daemon=True)
    thread.start()
    return thread


def test_a_failure_report_returns_at_once_while_the_host_lock_is_held(host: PluginHost) -> None:
    host.add_plugin(Recorder("victim", TrustLevel.TRUSTED))
    host.start_plugins()
    with host._core.lock:  # what start_plugin holds while it waits for the zygote reader thread
        reporter = report_from_another_thread(lambda: host._bridge._on_plugin_failed("victim", "crashed 5 times"))
        reporter.join(5)
        assert not reporter.is_alive(), "the reporting thread waited for the host lock"
        assert host.get_plugin_health("victim").state is PluginState.ACTIVE  # not moved yet: it is queued
    assert host.drain_background()
    health = host.get_plugin_health("victim")
    assert (health.state, health.reason) == (PluginState.FAILED, "crashed 5 times")
    assert [e.state for e in host.registry.list_events(plugin_id="victim", event=EventKind.FAILED)] == [
        PluginState.FAILED
    ]


def test_a_restart_report_is_audited_and_counted_on_the_background_thread(host: PluginHost) -> None:
    host.add_plugin(Recorder("busy", TrustLevel.TRUSTED))
    host.start_plugins()
    with host._core.lock:
        reporter = report_from_another_thread(lambda: host._bridge._on_restart("busy", "crash"))
        reporter.join(5)
        assert not reporter.is_alive()
    assert host.drain_background()
    assert host.restarts == {("busy", "crash"): 1}
    assert [e.details["reason"] for e in host.registry.list_events(event=EventKind.WORKER_RESTARTED)] == ["crash"]


def test_a_failure_reported_while_the_host_closes_is_logged_not_lost_silently(
    make_host: Callable[..., PluginHost], caplog: pytest.LogCaptureFixture
) -> None:
    host = make_host()
    host.add_plugin(Recorder("late", TrustLevel.TRUSTED))
    host.start_plugins()
    host.close()
    host._bridge._on_plugin_failed("late", "crashed while closing")  # no background thread any more
    assert "crashed while closing" in caplog.text
