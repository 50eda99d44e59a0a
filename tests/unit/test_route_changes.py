"""Route changes are atomic with lifecycle moves: no call to a declared capability is ever denied.

A plugin leaves Active and its routes in one step (a call in that window gets PluginNotActiveError, state
stopping), and its routes exist before it is seen Active. 50 stop/start cycles run under concurrent callers
of a BuiltIn and a Trusted plugin; tests/integration/test_route_changes.py does the same with an Untrusted one.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable

from _plugins import Recorder

from plugin_pool import CapabilityDeniedError, PluginHost, PluginNotActiveError, TrustLevel
from plugin_pool.registry import EventKind

CYCLES = 50
CALLERS_PER_PLUGIN = 2


def test_fifty_stop_start_cycles_under_concurrent_calls_deny_nothing(make_host: Callable[..., PluginHost]) -> None:
    host = make_host()
    host.add_plugin(Recorder("plain"))
    host.add_plugin(Recorder("watched", TrustLevel.TRUSTED))
    host.start_plugins()
    stop = threading.Event()
    tallies: list[Counter[str]] = []
    denials: list[CapabilityDeniedError] = []

    def call(plugin_id: str) -> None:
        tally: Counter[str] = Counter()
        tallies.append(tally)
        while not stop.is_set():
            try:
                host.invoke(plugin_id, "scan", 1)
                tally["ok"] += 1
            except PluginNotActiveError as exc:
                tally[exc.state.value] += 1
            except CapabilityDeniedError as exc:
                denials.append(exc)

    # Switch threads every 20 µs instead of every 5 ms: the callers then run inside every few-µs window of
    # a lifecycle move (where a route table out of step with the state would deny a call), and the moves'
    # own threads get the GIL back at once.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(20e-6)
    threads = [
        threading.Thread(target=call, args=(plugin_id,), daemon=True)
        for plugin_id in ("plain", "watched")
        for _ in range(CALLERS_PER_PLUGIN)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(CYCLES):
            for plugin_id in ("plain", "watched"):
                assert host.stop_plugin(plugin_id).value == "stopped"
                assert host.start_plugin(plugin_id).value == "active"
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        sys.setswitchinterval(interval)
    total = sum(tallies, Counter())
    assert denials == []
    assert host.registry.list_events(event=EventKind.CAPABILITY_DENIED) == []
    # The callers did run through the windows: calls served, and calls told the plugin was not active.
    assert total["ok"] > 0
    assert sum(n for state, n in total.items() if state != "ok") > 0, total
    assert set(total) <= {"ok", "stopping", "stopped", "loading", "initializing"}, total
