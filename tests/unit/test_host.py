"""PluginHost with in-process plugins: lifecycle, failure isolation, trust rules, routing, health, audit."""

from __future__ import annotations

import contextlib
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _plugins import (
    HOST_ACTOR,
    TEST_ACTOR,
    AsyncRecorder,
    Connector,
    HangsIn,
    Journal,
    RaisesIn,
    Recorder,
    WithoutMethod,
)

from plugin_pool import (
    CallTimeoutError,
    CapabilityDeniedError,
    DuplicatePluginError,
    HostClosedError,
    LifecycleTimeoutError,
    PluginCallError,
    PluginDisabledError,
    PluginHost,
    PluginNotActiveError,
    PluginNotFoundError,
    PluginState,
    RequiredPluginError,
    TrustLevel,
    TrustViolationError,
    load_config,
)
from plugin_pool.errors import RegistryError
from plugin_pool.registry import EventKind, InMemoryPluginRegistry

MakeHost = Callable[..., PluginHost]
S = PluginState
HANG_S = 0.2


def states(host: PluginHost) -> dict[str, PluginState]:
    return {p.plugin_id: p.state for p in host.get_health().plugins}


# -- adding, starting, calling, stopping -----------------------------------------------------------------


@pytest.mark.parametrize("level", [TrustLevel.BUILTIN, TrustLevel.TRUSTED])
def test_add_start_invoke_stop(host: PluginHost, level: TrustLevel) -> None:
    plugin = Recorder("echo", level)
    added = host.add_plugin(plugin)
    assert added == plugin.info
    assert states(host) == {"echo": S.DISCOVERED}

    assert host.start_plugin("echo") is S.ACTIVE
    assert host.invoke("echo", "scan", {"path": "a.jar"}) == {"plugin": "echo", "payload": {"path": "a.jar"}}
    assert host.get_client("echo").invoke("scan", 7) == {"plugin": "echo", "payload": 7}

    assert host.stop_plugin("echo") is S.STOPPED
    assert plugin.journal == [("echo", "initialize"), ("echo", "start"), ("echo", "stop")]
    with pytest.raises(PluginNotActiveError):
        host.invoke("echo", "scan")


def test_invoke_payload_defaults_to_none(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    host.start_plugins()
    assert host.invoke("echo", "scan") == {"plugin": "echo", "payload": None}


def test_start_plugins_returns_health_and_is_safe_to_call_again(host: PluginHost) -> None:
    journal: Journal = []
    host.add_plugin(Recorder("a", journal=journal))
    host.add_plugin(Recorder("b", journal=journal))
    health = host.start_plugins()
    assert health.active == ("a", "b")
    assert host.start_plugins().active == ("a", "b")
    assert host.start_plugin("a") is S.ACTIVE
    assert journal == [("a", "initialize"), ("a", "start"), ("b", "initialize"), ("b", "start")]


def test_get_plugin_returns_the_very_builtin_object(host: PluginHost) -> None:
    plugin = Recorder("echo", TrustLevel.BUILTIN)
    host.add_plugin(plugin)
    host.start_plugins()
    assert host.get_plugin("echo") is plugin


def test_get_plugin_refuses_a_trusted_plugin(host: PluginHost) -> None:
    host.add_plugin(Recorder("monitored", TrustLevel.TRUSTED))
    host.start_plugins()
    with pytest.raises(TrustViolationError, match=r"plugin 'monitored' is trusted: .* monitored") as caught:
        host.get_plugin("monitored")
    assert caught.value.plugin_id == "monitored"


def test_get_plugin_refuses_a_builtin_plugin_that_is_not_active(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    with pytest.raises(PluginNotActiveError, match=r"plugin 'echo' is not active \(state: discovered\)"):
        host.get_plugin("echo")


def test_untrusted_plugin_object_is_refused_and_not_registered(host: PluginHost) -> None:
    with pytest.raises(TrustViolationError, match="plugin 'stranger' is Untrusted") as caught:
        host.add_plugin(Recorder("stranger", TrustLevel.UNTRUSTED))
    assert caught.value.plugin_id == "stranger"
    assert host.get_health().plugins == ()
    assert host.registry.list_plugins() == []


def test_duplicate_id_is_refused_and_the_first_plugin_is_kept(host: PluginHost) -> None:
    first = Recorder("echo")
    host.add_plugin(first)
    with pytest.raises(DuplicatePluginError, match="plugin 'echo' is already added") as caught:
        host.add_plugin(Recorder("echo", TrustLevel.TRUSTED))
    assert caught.value.plugin_id == "echo"
    host.start_plugins()
    assert host.get_plugin("echo") is first


def test_plugin_config_and_allowed_services_reach_the_context(host: PluginHost) -> None:
    clock = object()
    host.register_service("clock", clock)
    host.register_service("db", object())
    plugin = Recorder("echo")
    host.add_plugin(plugin, config={"greeting": "hi"}, services=["clock"])
    host.start_plugins()
    assert plugin.context is not None
    assert dict(plugin.config) == {"greeting": "hi"}
    assert plugin.context.get_service("clock") is clock
    assert plugin.context.allowed_services == ("clock",)
    assert plugin.context.trust_level is TrustLevel.BUILTIN


# -- failures and hangs are contained ---------------------------------------------------------------------


@pytest.mark.parametrize("step", ["initialize", "start"])
def test_plugin_raising_while_starting_fails_and_the_others_start(host: PluginHost, step: str) -> None:
    journal: Journal = []
    host.add_plugin(Recorder("before", journal=journal))
    host.add_plugin(RaisesIn("broken", step, journal=journal))
    host.add_plugin(Recorder("after", journal=journal))

    health = host.start_plugins()

    assert health.active == ("before", "after")
    assert dict(health.failed) == {"broken": f"{step} raised RuntimeError: boom in {step}"}
    with pytest.raises(PluginNotActiveError, match=f"state: failed: {step} raised RuntimeError") as caught:
        host.invoke("broken", "scan")
    assert (caught.value.state, caught.value.reason) == (
        S.FAILED,
        f"{step} raised RuntimeError: boom in {step}",
    )
    assert host.registry.get_plugin("broken").status is S.FAILED


def test_plugin_raising_in_stop_fails_and_the_others_still_stop(host: PluginHost) -> None:
    journal: Journal = []
    for plugin in (
        Recorder("a", journal=journal),
        RaisesIn("broken", "stop", journal=journal),
        Recorder("c", journal=journal),
    ):
        host.add_plugin(plugin)
    host.start_plugins()

    host.stop_plugins()

    assert states(host) == {"a": S.STOPPED, "broken": S.FAILED, "c": S.STOPPED}
    assert dict(host.get_health().failed) == {"broken": "stop raised RuntimeError: boom in stop"}
    assert [entry for entry in journal if entry[1] == "stop"] == [
        ("c", "stop"),
        ("broken", "stop"),
        ("a", "stop"),
    ]


@pytest.mark.parametrize("step", ["initialize", "start", "stop"])
def test_plugin_hanging_in_a_step_fails_with_a_timeout_and_the_others_are_unaffected(
    make_host: MakeHost, release: threading.Event, step: str
) -> None:
    host = make_host({"lifecycle": {f"{step}_timeout_s": HANG_S}})
    host.add_plugin(Recorder("before"))
    host.add_plugin(HangsIn("stuck", step, release))
    host.add_plugin(Recorder("after"))

    host.start_plugins()
    host.stop_plugins()

    assert states(host) == {"before": S.STOPPED, "stuck": S.FAILED, "after": S.STOPPED}
    reason = host.get_health().failed["stuck"]
    expected = LifecycleTimeoutError(plugin_id="stuck", step=step, timeout_s=HANG_S)
    assert reason == str(expected)
    assert reason == (
        f"plugin 'stuck': {step} timed out after 0.2 s; raise lifecycle.{step}_timeout_s if the plugin needs longer"
    )


def test_async_plugin_hanging_in_start_is_cancelled_and_fails(make_host: MakeHost) -> None:
    host = make_host({"lifecycle": {"start_timeout_s": HANG_S}})
    stuck = AsyncRecorder("stuck", hanging_step="start")
    host.add_plugin(stuck)
    host.add_plugin(Recorder("other"))

    host.start_plugins()

    assert states(host) == {"stuck": S.FAILED, "other": S.ACTIVE}
    assert (
        host.get_health().failed["stuck"]
        == "plugin 'stuck': start timed out after 0.2 s; raise lifecycle.start_timeout_s if the plugin "
        "needs longer"
    )
    assert stuck.cancelled.wait(5)


def test_capability_declared_without_a_method_fails_at_loading(host: PluginHost) -> None:
    host.add_plugin(WithoutMethod("no-method"))
    host.add_plugin(Recorder("fine"))
    health = host.start_plugins()
    assert health.active == ("fine",)
    assert health.failed["no-method"] == (
        "loading failed: plugin 'no-method' declares capability 'scan' but has no method 'scan'"
    )
    events = host.registry.list_events(plugin_id="no-method")
    assert [e.event for e in events] == [EventKind.REGISTERED, EventKind.LOADING, EventKind.FAILED]


# -- async plugins -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [TrustLevel.BUILTIN, TrustLevel.TRUSTED])
def test_async_lifecycle_and_capabilities_work(host: PluginHost, level: TrustLevel) -> None:
    plugin = AsyncRecorder("async-echo", level)
    host.add_plugin(plugin)
    assert host.start_plugin("async-echo") is S.ACTIVE
    assert host.invoke("async-echo", "scan", 5) == {"plugin": "async-echo", "payload": 5}
    assert host.invoke_many("async-echo", "scan", [1, 2]) == [
        {"plugin": "async-echo", "payload": 1},
        {"plugin": "async-echo", "payload": 2},
    ]
    with pytest.raises(PluginCallError) as caught:
        host.invoke("async-echo", "fail", "k")
    assert caught.value.remote_type == "KeyError"
    assert host.stop_plugin("async-echo") is S.STOPPED
    assert plugin.journal == [("async-echo", "initialize"), ("async-echo", "start"), ("async-echo", "stop")]


@pytest.mark.parametrize("level", [TrustLevel.BUILTIN, TrustLevel.TRUSTED])
def test_async_capability_past_the_call_timeout_is_cancelled(make_host: MakeHost, level: TrustLevel) -> None:
    host = make_host({"host": {"call_timeout_s": HANG_S}})
    plugin = AsyncRecorder("async-echo", level)
    host.add_plugin(plugin)
    host.start_plugins()

    with pytest.raises(CallTimeoutError) as caught:
        host.invoke("async-echo", "hang")

    error = caught.value
    assert (error.plugin_id, error.capability, error.timeout_s) == ("async-echo", "hang", HANG_S)
    assert str(error) == "plugin 'async-echo': call to 'hang' did not finish within 0.2 s"
    assert isinstance(error, TimeoutError)
    assert plugin.cancelled.wait(5)
    assert host.invoke("async-echo", "scan", 1) == {"plugin": "async-echo", "payload": 1}


# -- order -------------------------------------------------------------------------------------------------


def test_shutdown_stops_plugins_in_reverse_start_order(make_host: MakeHost) -> None:
    journal: Journal = []
    host = make_host()
    for plugin_id in ("a", "b", "c", "d"):
        host.add_plugin(Recorder(plugin_id, journal=journal))
    for plugin_id in ("c", "a", "d"):  # b is never started
        host.start_plugin(plugin_id)

    host.close()

    assert [pid for pid, step in journal if step == "stop"] == ["d", "a", "c"]
    assert states(host) == {"a": S.STOPPED, "b": S.DISCOVERED, "c": S.STOPPED, "d": S.STOPPED}


def test_list_providers_gives_active_declaring_plugins_in_start_order(host: PluginHost) -> None:
    host.add_plugin(Recorder("a"))
    host.add_plugin(Connector("net", TrustLevel.TRUSTED))
    host.add_plugin(Recorder("b"))
    host.add_plugin(Recorder("idle"))
    host.start_plugin("b")
    host.start_plugin("net")
    host.start_plugin("a")
    assert host.list_providers("scan") == ["b", "a"]
    assert host.list_providers("connect") == ["net"]
    assert host.list_providers("evaluate_policy") == []
    host.stop_plugin("b")
    assert host.list_providers("scan") == ["a"]


# -- trust and capability rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [TrustLevel.BUILTIN, TrustLevel.TRUSTED])
def test_in_process_plugin_may_declare_connect(host: PluginHost, level: TrustLevel) -> None:
    host.add_plugin(Connector("net", level))
    assert host.start_plugin("net") is S.ACTIVE
    assert host.invoke("net", "connect", "db:5432") == "connected to db:5432"


def test_undeclared_capability_is_denied_and_audited(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    host.start_plugins()

    with pytest.raises(CapabilityDeniedError) as caught:
        host.invoke("echo", "step", "journal")  # a public method, but not a declared capability

    error = caught.value
    assert (error.plugin_id, error.capability, error.declared) == ("echo", "step", ("scan", "fail"))
    assert str(error) == (
        "plugin 'echo' did not declare capability 'step' (declared: scan, fail); the call was refused and audited"
    )
    (event,) = host.registry.list_events(event=EventKind.CAPABILITY_DENIED)
    assert (event.plugin_id, event.actor, event.state) == ("echo", HOST_ACTOR, S.ACTIVE)
    assert dict(event.details) == {"capability": "step", "declared": ["scan", "fail"]}
    with pytest.raises(CapabilityDeniedError):
        host.invoke_many("echo", "delete", [1])
    assert len(host.registry.list_events(event=EventKind.CAPABILITY_DENIED)) == 2


def test_unknown_plugin_errors(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    with pytest.raises(PluginNotFoundError, match="no plugin 'ghost' in this host; known: echo") as caught:
        host.invoke("ghost", "scan")
    assert caught.value.plugin_id == "ghost"
    for call in (
        lambda: host.start_plugin("ghost"),
        lambda: host.stop_plugin("ghost"),
        lambda: host.get_client("ghost"),
        lambda: host.get_plugin("ghost"),
        lambda: host.get_plugin_health("ghost"),
        lambda: host.invoke_many("ghost", "scan", []),
    ):
        with pytest.raises(PluginNotFoundError):
            call()
    assert host.is_active("ghost") is False


def test_not_active_plugin_errors_name_the_state(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    with pytest.raises(PluginNotActiveError, match=r"plugin 'echo' is not active \(state: discovered\)") as caught:
        host.invoke("echo", "scan")
    assert (caught.value.state, caught.value.reason) == (S.DISCOVERED, None)
    host.start_plugins()
    host.stop_plugin("echo")
    with pytest.raises(PluginNotActiveError, match=r"\(state: stopped\)"):
        host.get_client("echo").invoke("scan")
    assert host.stop_plugin("echo") is S.STOPPED  # stopping a stopped plugin is a no-op


def test_client_follows_the_plugin_through_a_restart(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    client = host.get_client("echo")
    host.start_plugins()
    host.stop_plugin("echo")
    host.start_plugin("echo")
    assert client.invoke_many("scan", ["x"]) == [{"plugin": "echo", "payload": "x"}]


# -- calls that raise --------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [TrustLevel.BUILTIN, TrustLevel.TRUSTED])
def test_invoke_wraps_plugin_exceptions_in_plugin_call_error(host: PluginHost, level: TrustLevel) -> None:
    host.add_plugin(Recorder("echo", level))
    host.start_plugins()

    with pytest.raises(PluginCallError) as caught:
        host.invoke("echo", "fail", "a.jar")

    error = caught.value
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "cannot scan 'a.jar'"
    assert (error.plugin_id, error.capability, error.remote_type, error.remote_message, error.index) == (
        "echo",
        "fail",
        "ValueError",
        "cannot scan 'a.jar'",
        None,
    )
    assert str(error) == "plugin 'echo' raised ValueError in 'fail': cannot scan 'a.jar'"
    assert host.is_active("echo")


def test_invoke_many_returns_results_in_order_and_names_the_failing_index(host: PluginHost) -> None:
    class FailsOnBoom(Recorder):
        def scan(self, payload: Any) -> Any:
            if payload == "boom":
                raise RuntimeError("exploded")
            return super().scan(payload)

    plugin = FailsOnBoom("batch", TrustLevel.TRUSTED)
    host.add_plugin(plugin)
    host.start_plugins()

    assert host.invoke_many("batch", "scan", iter([1, 2])) == [
        {"plugin": "batch", "payload": 1},
        {"plugin": "batch", "payload": 2},
    ]
    assert host.invoke_many("batch", "scan", []) == []
    with pytest.raises(PluginCallError) as caught:
        host.invoke_many("batch", "scan", [1, 2, "boom", 4])
    error = caught.value
    assert (error.index, error.remote_type, error.remote_message) == (2, "RuntimeError", "exploded")
    assert str(error) == "plugin 'batch' raised RuntimeError in 'scan' (batch item 2): exploded"
    assert isinstance(error.__cause__, RuntimeError)
    stats = host.get_plugin_health("batch").stats
    assert stats is not None
    assert (stats.calls, stats.errors) == (5, 1)  # the item after the failure was never called


# -- health ------------------------------------------------------------------------------------------------


def test_health_reports_active_and_failed_plugins(host: PluginHost) -> None:
    host.add_plugin(Recorder("ok", TrustLevel.TRUSTED))
    host.add_plugin(RaisesIn("broken", "start"))
    host.add_plugin(Recorder("idle"))
    host.start_plugin("ok")
    host.start_plugin("broken")

    health = host.get_health()

    assert [p.plugin_id for p in health.plugins] == ["ok", "broken", "idle"]
    assert health.active == ("ok",)
    assert dict(health.failed) == {"broken": "start raised RuntimeError: boom in start"}
    assert (health.is_active("ok"), health.is_active("broken"), health.is_active("ghost")) == (
        True,
        False,
        False,
    )
    ok = host.get_plugin_health("ok")
    assert (ok.name, ok.version, ok.trust_level, ok.capabilities) == (
        "Ok",
        "1.0.0",
        TrustLevel.TRUSTED,
        ("scan", "fail"),
    )
    assert health.to_dict()["plugins"][1] == {
        "plugin_id": "broken",
        "name": "Broken",
        "version": "1.0.0",
        "trust_level": "builtin",
        "state": "failed",
        "reason": "start raised RuntimeError: boom in start",
        "capabilities": ["scan", "fail"],
    }
    assert health.to_dict()["plugins"][0]["calls"] == 0


def test_require_passes_for_active_plugins_and_names_every_missing_one(host: PluginHost) -> None:
    host.add_plugin(Recorder("ok"))
    host.add_plugin(RaisesIn("broken", "initialize"))
    host.add_plugin(Recorder("idle"))
    host.start_plugin("ok")
    host.start_plugin("broken")

    host.require("ok")
    with pytest.raises(RequiredPluginError) as caught:
        host.require("ok", "broken", "idle", "ghost")

    assert str(caught.value) == (
        "required plugins are not active: "
        "broken (failed: initialize raised RuntimeError: boom in initialize); "
        "idle (discovered); ghost (not added)"
    )
    with pytest.raises(RequiredPluginError) as single:
        host.require("ghost")
    assert single.value.plugin_id == "ghost"


def test_builtin_calls_are_not_monitored_unless_configured(make_host: MakeHost) -> None:
    plain = make_host()
    plain.add_plugin(Recorder("echo"))
    plain.start_plugins()
    plain.invoke("echo", "scan")
    assert plain.get_plugin_health("echo").stats is None
    assert "calls" not in plain.get_plugin_health("echo").to_dict()

    monitored = make_host({"host": {"monitor_builtin": True}})
    monitored.add_plugin(Recorder("echo"))
    monitored.start_plugins()
    monitored.invoke("echo", "scan")
    stats = monitored.get_plugin_health("echo").stats
    assert stats is not None
    assert (stats.calls, stats.errors) == (1, 0)


def test_trusted_stats_count_every_call_and_error_under_concurrency(host: PluginHost) -> None:
    threads_n, calls_n = 8, 500
    host.add_plugin(Recorder("counted", TrustLevel.TRUSTED))
    host.start_plugins()
    barrier = threading.Barrier(threads_n, timeout=10)
    unexpected: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for i in range(calls_n):
                if i % 5 == 0:
                    with contextlib.suppress(PluginCallError):
                        host.invoke("counted", "fail", i)
                else:
                    host.invoke("counted", "scan", i)
        except BaseException as exc:
            unexpected.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert unexpected == []

    stats = host.get_plugin_health("counted").stats
    assert stats is not None
    assert (stats.calls, stats.errors) == (threads_n * calls_n, threads_n * calls_n // 5)
    assert stats.last_error is not None
    assert stats.last_error.startswith("fail: ValueError: cannot scan ")
    assert 0 <= stats.mean_ms <= stats.max_ms


# -- open and close ----------------------------------------------------------------------------------------


def test_open_and_close_are_idempotent() -> None:
    host = PluginHost()
    assert host.is_open is False
    assert host.open() is host
    assert host.open() is host
    assert host.is_open is True
    host.close()
    host.close()
    assert host.is_open is False


def test_context_manager_opens_and_closes_and_stops_plugins() -> None:
    plugin = Recorder("echo")
    with PluginHost() as host:
        assert host.is_open
        host.add_plugin(plugin)
        host.start_plugins()
    assert host.is_open is False
    assert plugin.journal[-1] == ("echo", "stop")
    assert states(host) == {"echo": S.STOPPED}


def test_calls_after_close_raise_host_closed_error(make_host: MakeHost) -> None:
    host = make_host()
    host.add_plugin(Recorder("echo"))
    host.start_plugins()
    host.close()
    with pytest.raises(HostClosedError, match="the plugin host is already closed"):
        host.invoke("echo", "scan")
    with pytest.raises(HostClosedError, match="already closed"):
        host.invoke_many("echo", "scan", [1])
    with pytest.raises(HostClosedError, match="already closed"):
        host.start_plugin("echo")
    with pytest.raises(HostClosedError, match="already closed"):
        host.add_plugin(Recorder("late"))
    with pytest.raises(HostClosedError, match="already closed; create a new PluginHost"):
        host.open()


def test_start_before_open_raises_host_closed_error(make_host: MakeHost) -> None:
    host = make_host(opened=False)
    host.add_plugin(Recorder("echo"))  # adding before open is allowed
    with pytest.raises(HostClosedError, match=r"not open yet; call host\.open"):
        host.start_plugin("echo")
    with pytest.raises(HostClosedError, match="not open yet"):
        host.start_plugins()
    with pytest.raises(HostClosedError, match="not open yet"):
        host.invoke("echo", "scan")
    host.open()
    assert host.start_plugin("echo") is S.ACTIVE


def test_close_closes_only_a_registry_the_host_created() -> None:
    shared = InMemoryPluginRegistry()
    with PluginHost(registry=shared) as host:
        host.add_plugin(Recorder("echo"))
    shared.record_event(EventKind.WORKER_RESTARTED, plugin_id=None, actor="still-open")  # does not raise

    owned = PluginHost().open()
    owned.close()
    with pytest.raises(RegistryError, match="already closed"):
        owned.registry.record_event(EventKind.WORKER_RESTARTED, plugin_id=None, actor="x")


# -- audit and restart -------------------------------------------------------------------------------------


def test_every_transition_is_audited_in_order_with_the_configured_actor(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    host.start_plugins()
    host.stop_plugin("echo")

    events = host.registry.list_events(plugin_id="echo")

    assert [e.event for e in events] == [
        EventKind.REGISTERED,
        EventKind.LOADING,
        EventKind.INITIALIZING,
        EventKind.ACTIVATED,
        EventKind.STOPPING,
        EventKind.SHUTDOWN,
    ]
    assert [e.state for e in events] == [
        S.DISCOVERED,
        S.LOADING,
        S.INITIALIZING,
        S.ACTIVE,
        S.STOPPING,
        S.STOPPED,
    ]
    assert {e.actor for e in events} == {HOST_ACTOR}
    assert [e.details.get("from") for e in events[1:]] == [
        "discovered",
        "loading",
        "initializing",
        "active",
        "stopping",
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_failure_is_audited_with_its_reason(host: PluginHost) -> None:
    host.add_plugin(RaisesIn("broken", "initialize"))
    host.start_plugins()
    failed = host.registry.list_events(plugin_id="broken")[-1]
    assert (failed.event, failed.state, failed.actor) == (EventKind.FAILED, S.FAILED, HOST_ACTOR)
    assert dict(failed.details) == {
        "from": "initializing",
        "reason": "initialize raised RuntimeError: boom in initialize",
    }
    assert host.registry.get_plugin("broken").status_reason == "initialize raised RuntimeError: boom in initialize"


def test_stopped_plugin_can_be_started_again(host: PluginHost) -> None:
    plugin = Recorder("echo")
    host.add_plugin(plugin)
    host.start_plugins()
    host.stop_plugin("echo")

    assert host.start_plugin("echo") is S.ACTIVE

    assert host.invoke("echo", "scan", 2) == {"plugin": "echo", "payload": 2}
    assert [step for _, step in plugin.journal] == ["initialize", "start", "stop", "initialize", "start"]
    reload_event = host.registry.list_events(plugin_id="echo", event=EventKind.LOADING)[-1]
    assert dict(reload_event.details) == {"from": "stopped", "reason": "reload"}


def test_failed_plugin_is_retried_by_start_plugin(host: PluginHost) -> None:
    class FailsOnce(Recorder):
        def start(self) -> None:
            super().start()
            if len(self.journal) == 2:
                raise RuntimeError("first start fails")

    host.add_plugin(FailsOnce("flaky"))
    assert host.start_plugin("flaky") is S.FAILED
    assert host.start_plugin("flaky") is S.ACTIVE
    assert host.get_plugin_health("flaky").reason is None


# -- plugins from the configuration -------------------------------------------------------------------------

GOOD_PLUGIN = """
from plugin_pool import PluginBase, PluginInfo, capability

class Greeter(PluginBase):
    info = PluginInfo(id="greeter", name="Greeter", version="1.0.0", trust_level="trusted")

    @capability
    def scan(self, payload):
        return f"{self.config['greeting']} {payload}"

class Builtin(PluginBase):
    info = PluginInfo(id="mislevelled", name="Mislevelled", version="1.0.0", trust_level="builtin")

    @capability
    def scan(self, payload):
        return payload

class SaysUntrusted(Builtin):
    info = PluginInfo(id="says-untrusted", name="Says untrusted", version="1.0.0", trust_level="untrusted")
"""


def test_add_configured_plugins_loads_entries_and_contains_failures(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "greeter.py").write_text(GOOD_PLUGIN, encoding="utf-8")
    (tmp_path / "plugins" / "broken.py").write_text("import no_such_module_for_plugin_pool_tests\n", encoding="utf-8")
    config_path = tmp_path / "plugin-pool.toml"
    config_path.write_text(
        textwrap.dedent(
            f"""
            [host]
            actor = "{TEST_ACTOR}"

            [plugins.greeter]
            entry = "plugins/greeter.py:Greeter"
            trust_level = "trusted"
            config = {{ greeting = "hello" }}

            [plugins.broken]
            entry = "plugins/broken.py:Plugin"
            trust_level = "trusted"

            [plugins.renamed]
            entry = "plugins/greeter.py:Greeter"
            trust_level = "trusted"

            [plugins.mislevelled]
            entry = "plugins/greeter.py:Builtin"
            trust_level = "trusted"

            [plugins.says-untrusted]
            entry = "plugins/greeter.py:SaysUntrusted"
            trust_level = "builtin"

            [plugins.disabled]
            entry = "plugins/missing.py:Nothing"
            trust_level = "builtin"
            enabled = false
            """
        ),
        encoding="utf-8",
    )

    with PluginHost(load_config(config_path)) as host:
        added = host.add_configured_plugins()
        health = host.start_plugins()

        assert added == ["greeter", "broken", "renamed", "mislevelled", "says-untrusted"]
        # The host decides the level: a class that says builtin runs Trusted (monitored) as configured.
        assert health.active == ("greeter", "mislevelled")
        assert host.invoke("greeter", "scan", "world") == "hello world"
        assert host.invoke("mislevelled", "scan", 7) == 7
        mislevelled = host.get_plugin_health("mislevelled")
        assert mislevelled.trust_level is TrustLevel.TRUSTED and mislevelled.stats is not None
        assert mislevelled.stats.calls == 1
        assert host.registry.get_plugin("mislevelled").trust_level is TrustLevel.TRUSTED
        failed = dict(health.failed)
        assert set(failed) == {"broken", "renamed", "says-untrusted"}
        assert failed["broken"] == (
            "loading failed: ModuleNotFoundError: No module named 'no_such_module_for_plugin_pool_tests'"
        )
        assert failed["renamed"] == (
            f"loading failed: InvalidPluginError: entry '{tmp_path / 'plugins' / 'greeter.py'}:Greeter' "
            "configured as plugin 'renamed' declares id 'greeter'; "
            "rename the [plugins.greeter] table or fix the plugin's info"
        )
        # One that says untrusted never runs in-process, whatever the configuration says.
        assert (failed["says-untrusted"] or "").startswith(
            "loading failed: TrustViolationError: plugin 'says-untrusted' is Untrusted by its own info, so its "
            "code never runs in the host process (the host would run it builtin)"
        )
        broken_events = host.registry.list_events(plugin_id="broken")
        assert [(e.event, e.actor) for e in broken_events] == [(EventKind.FAILED, HOST_ACTOR)]
        assert broken_events[0].details["reason"] == failed["broken"]
        with pytest.raises(PluginNotActiveError, match="No module named"):
            host.invoke("broken", "scan")
        assert host.start_plugin("broken") is S.FAILED  # nothing to retry: the entry never loaded


def test_the_host_audits_as_its_identity_and_os_user_and_an_operator_as_themselves(host: PluginHost) -> None:
    host.add_plugin(Recorder("ops"))
    host.start_plugin("ops", actor="alice")
    host.stop_plugin("ops", actor="bob")
    host.start_plugin("ops")
    actors = [(e.event.value, e.actor) for e in host.registry.list_events(plugin_id="ops")]
    assert host.actor == HOST_ACTOR
    assert actors == [
        ("registered", HOST_ACTOR),
        ("loading", "alice"),
        ("initializing", "alice"),
        ("activated", "alice"),
        ("stopping", "bob"),
        ("shutdown", "bob"),
        ("loading", HOST_ACTOR),
        ("initializing", HOST_ACTOR),
        ("activated", HOST_ACTOR),
    ]


def test_two_hosts_sharing_a_registry_each_run_the_plugin_and_both_moves_are_audited() -> None:
    from plugin_pool import InMemoryPluginRegistry, load_config

    shared = InMemoryPluginRegistry()
    first = PluginHost(load_config(overrides={"host": {"actor": "host-a"}}), registry=shared).open()
    second = PluginHost(load_config(overrides={"host": {"actor": "host-b"}}), registry=shared).open()
    try:
        for host in (first, second):
            host.add_plugin(Recorder("shared"))
            assert host.start_plugin("shared") is S.ACTIVE
        assert first.invoke("shared", "scan", 1)["payload"] == 1
        assert second.invoke("shared", "scan", 2)["payload"] == 2
        first.stop_plugin("shared")  # the registry holds host-b's ACTIVE: no conflict escapes, the move is audited
        assert second.is_active("shared") and not first.is_active("shared")
        second.stop_plugin("shared")
    finally:
        first.close()
        second.close()
    moves = [(e.actor.split("/")[0], e.event.value) for e in shared.list_events(plugin_id="shared")]
    assert [m for m in moves if m[0] == "host-a"] == [
        ("host-a", "registered"),
        ("host-a", "loading"),
        ("host-a", "initializing"),
        ("host-a", "activated"),
        ("host-a", "stopping"),
        ("host-a", "shutdown"),
    ]
    assert [m for m in moves if m[0] == "host-b"] == [
        ("host-b", "loading"),
        ("host-b", "initializing"),
        ("host-b", "activated"),
        ("host-b", "stopping"),
        ("host-b", "shutdown"),
    ]
    assert shared.get_plugin("shared").status is S.STOPPED


def test_an_operator_disabling_a_plugin_in_the_registry_stops_it_and_enabling_starts_it_again(
    host: PluginHost,
) -> None:
    host.add_plugin(Recorder("ops"))
    host.add_plugin(Recorder("other"))
    host.start_plugins()

    host.registry.set_enabled("ops", False, actor="alice", reason="maintenance")
    _wait(lambda: host.get_plugin_health("ops").state is S.STOPPED)

    assert host.get_plugin_health("ops").reason == "disabled by alice: maintenance"
    assert host.is_active("other")  # only the disabled plugin stops
    with pytest.raises(PluginNotActiveError, match="disabled by alice: maintenance"):
        host.invoke("ops", "scan", 1)
    with pytest.raises(PluginDisabledError, match="`plugin-pool registry enable ops`"):
        host.start_plugin("ops")
    assert host.start_plugins().active == ("other",)

    host.registry.set_enabled("ops", True, actor="alice")
    _wait(lambda: host.is_active("ops"))
    assert host.invoke("ops", "scan", 2)["payload"] == 2
    moves = [(e.event.value, e.actor) for e in host.registry.list_events(plugin_id="ops")][4:]
    assert moves == [
        ("disabled", "alice"),
        ("stopping", "alice"),
        ("shutdown", "alice"),
        ("enabled", "alice"),
        ("loading", "alice"),
        ("initializing", "alice"),
        ("activated", "alice"),
    ]


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")
