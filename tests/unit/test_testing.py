"""plugin_pool.testing: the harness, the recording fake registry and the pytest fixtures plugin authors use."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from plugin_pool import PluginHost, PluginState
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability
from plugin_pool.testing import FakeRegistry, PluginHarness


class Greeter(PluginBase):
    info = PluginInfo(id="greeter", name="Greeter", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def greet(self, name: str) -> str:
        return f"{self.config.get('greeting', 'Hello')}, {name}"

    @capability
    def clock(self, _: object) -> object:
        assert self.context is not None
        return self.context.get_service("clock").now()


class BrokenStart(Greeter):
    info = PluginInfo(id="broken", name="Broken", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    def start(self) -> None:
        raise RuntimeError("no start today")


class Clock:
    def now(self) -> int:
        return 42


def test_the_harness_drives_the_whole_lifecycle_and_records_it() -> None:
    with PluginHarness(Greeter(), config={"greeting": "Hi"}, services={"clock": Clock()}) as harness:
        assert harness.state is PluginState.ACTIVE
        assert harness.invoke("greet", "Ada") == "Hi, Ada"
        assert harness.invoke("clock", None) == 42
    assert harness.states == ["discovered", "loading", "initializing", "active", "stopping", "stopped"]
    assert harness.registry.call_names()[:2] == ["register", "set_status"]


def test_the_harness_raises_with_the_reason_unless_failure_is_expected() -> None:
    with pytest.raises(AssertionError, match="did not become active: failed: start raised RuntimeError"):
        PluginHarness(BrokenStart()).start()
    harness = PluginHarness(BrokenStart(), expect_active=False)
    try:
        assert harness.start() is PluginState.FAILED
        assert "no start today" in (harness.health.reason or "")
    finally:
        harness.close()


def test_the_fixtures_are_registered_for_every_project(
    plugin_host: PluginHost, fake_registry: FakeRegistry, plugin_harness: Callable[..., PluginHarness]
) -> None:
    assert plugin_host.registry is fake_registry and plugin_host.is_open
    plugin_host.add_plugin(Greeter())
    plugin_host.start_plugins()
    assert plugin_host.invoke("greeter", "greet", "Bo") == "Hello, Bo"
    assert fake_registry.states_of("greeter") == ["discovered", "loading", "initializing", "active"]
    harness = plugin_harness(Greeter(), config={"greeting": "Hey"})
    assert harness.invoke("greet", "Cy") == "Hey, Cy"


def test_the_pytest_plugin_loads_lazily() -> None:
    # The pytest11 entry point imports this module in every pytest run where plugin_pool is installed:
    # it must not import the host and its dependencies until a test asks for a fixture.
    code = (
        "import json, sys; import plugin_pool.testing.fixtures; import plugin_pool.testing; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(done.stdout))
    heavy = ("plugin_pool.host", "plugin_pool.registry", "psutil", "cryptography", "prometheus_client", "grpc")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []
    assert "pytest" in loaded
