"""The plugin author's side: @capability, PluginBase and the PluginContext a plugin receives."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest

from plugin_pool import (
    Capabilities,
    Capability,
    InvalidPluginError,
    Plugin,
    PluginBase,
    PluginContext,
    PluginInfo,
    ServiceNotAllowedError,
    TrustLevel,
    capability,
)

INFO = PluginInfo(id="sdk-test", name="SDK test", version="1.0", trust_level=TrustLevel.BUILTIN)


def make_context(
    *,
    services: dict[str, Any] | None = None,
    allowed: tuple[str, ...] = (),
    config: dict[str, Any] | None = None,
) -> PluginContext:
    return PluginContext("sdk-test", TrustLevel.TRUSTED, config or {}, services or {}, allowed)


# -- @capability ---------------------------------------------------------------------------------------


class Scanner(PluginBase):
    info = INFO

    @capability
    def scan(self, payload: Any) -> Any:
        return ("scan", payload)

    @capability("evaluate_policy")
    def check_policy(self, payload: Any) -> Any:
        return ("policy", payload)

    @capability(parameters={"types": ["jar", "war"]})
    def inspect_archive(self, payload: Any) -> Any:
        return ("archive", payload)

    @capability("connect", parameters={"ports": [443]})
    def open_connection(self, payload: Any) -> Any:
        return ("connect", payload)

    def helper(self, payload: Any) -> Any:
        return payload


def test_capability_forms_declare_name_method_and_parameters() -> None:
    caps = Scanner().capabilities
    assert caps == Capabilities.of(
        Capability("scan"),
        Capability("evaluate_policy", method="check_policy"),
        Capability("inspect_archive", {"types": ["jar", "war"]}),
        Capability("connect", {"ports": [443]}, method="open_connection"),
    )
    assert "helper" not in caps


def test_decorated_methods_still_work_as_methods() -> None:
    scanner = Scanner()
    assert scanner.scan(1) == ("scan", 1)
    assert scanner.check_policy(2) == ("policy", 2)


def test_capability_parameters_are_frozen_copies() -> None:
    params = {"types": ["jar"]}

    class P(PluginBase):
        info = INFO

        @capability(parameters=params)
        def scan(self, payload: Any) -> Any:
            return payload

    params["types"].append("war")
    assert P().capabilities["scan"].parameters["types"] == ("jar",)


def test_bad_capability_name_fails_at_class_definition() -> None:
    with pytest.raises(InvalidPluginError, match="capability name 'Scan' is invalid"):

        class P(PluginBase):
            info = INFO

            @capability("Scan")
            def scan(self, payload: Any) -> Any:
                return payload


def test_non_json_parameters_fail_at_class_definition() -> None:
    with pytest.raises(InvalidPluginError, match="set is not JSON-compatible"):

        class P(PluginBase):
            info = INFO

            @capability(parameters={"types": {"jar"}})
            def scan(self, payload: Any) -> Any:
                return payload


class Base(PluginBase):
    info = INFO

    @capability
    def scan(self, payload: Any) -> Any:
        return "base scan"

    @capability
    def evaluate_policy(self, payload: Any) -> Any:
        return "base policy"


class Child(Base):
    def scan(self, payload: Any) -> Any:  # overridden without the decorator: still the declared capability
        return "child scan"

    @capability("connect")
    def evaluate_policy(self, payload: Any) -> Any:  # re-declared under another name: replaces the old one
        return "child connect"

    @capability
    def extra(self, payload: Any) -> Any:
        return "extra"


def test_subclass_inherits_capabilities_of_its_bases() -> None:
    class Plain(Base):
        pass

    assert Plain().capabilities.names == ("scan", "evaluate_policy")


def test_override_keeps_or_replaces_inherited_capabilities() -> None:
    child = Child()
    assert set(child.capabilities) == {"scan", "connect", "extra"}
    assert child.capabilities["connect"].method == "evaluate_policy"
    assert getattr(child, child.capabilities["scan"].method)(None) == "child scan"
    assert Base().capabilities.names == ("scan", "evaluate_policy")


def test_async_capability_is_declared_and_stays_a_coroutine_function() -> None:
    class P(PluginBase):
        info = INFO

        @capability
        async def scan(self, payload: Any) -> Any:
            await asyncio.sleep(0)
            return payload * 2

    plugin = P()
    assert plugin.capabilities.names == ("scan",)
    assert inspect.iscoroutinefunction(plugin.scan)
    assert asyncio.run(plugin.scan(21)) == 42


# -- PluginBase ----------------------------------------------------------------------------------------


class Bare(PluginBase):
    info = INFO


def test_plugin_base_defaults_before_initialize() -> None:
    plugin = Bare()
    assert plugin.capabilities == Capabilities()
    assert plugin.context is None
    assert dict(plugin.config) == {}
    assert isinstance(plugin.logger, logging.Logger)
    assert plugin.start() is None
    assert plugin.stop() is None
    assert isinstance(plugin, Plugin)


def test_initialize_keeps_the_context_config_and_logger() -> None:
    plugin = Bare()
    context = make_context(config={"greeting": "hi"})
    plugin.initialize(context)
    assert plugin.context is context
    assert plugin.config["greeting"] == "hi"
    assert plugin.logger is context.logger


def test_info_must_be_a_plugin_info() -> None:
    with pytest.raises(InvalidPluginError, match=r"BadInfo\.info must be a PluginInfo, got dict") as caught:

        class BadInfo(PluginBase):
            info = {"id": "x"}  # type: ignore[assignment]

    assert caught.value.field == "info"


def test_a_base_class_without_info_may_be_defined() -> None:
    class Abstract(PluginBase):
        @capability
        def scan(self, payload: Any) -> Any:
            return payload

    assert Abstract().capabilities.names == ("scan",)


# -- PluginContext -------------------------------------------------------------------------------------


def test_allowed_service_is_returned() -> None:
    clock = object()
    context = make_context(services={"clock": clock, "db": object()}, allowed=("clock",))
    assert context.get_service("clock") is clock
    assert context.allowed_services == ("clock",)


def test_service_not_allowed_names_plugin_service_and_how_to_allow_it() -> None:
    context = make_context(services={"clock": object(), "db": object()}, allowed=("clock",))
    with pytest.raises(ServiceNotAllowedError) as caught:
        context.get_service("db")
    error = caught.value
    assert (error.plugin_id, error.service, error.allowed) == ("sdk-test", "db", ("clock",))
    assert str(error) == (
        "plugin 'sdk-test' may not use host service 'db' (allowed: clock); list it under services in the "
        "plugin's configuration to allow it"
    )
    assert isinstance(error, PermissionError)


def test_service_not_allowed_when_none_are() -> None:
    with pytest.raises(ServiceNotAllowedError, match=r"\(allowed: none\)"):
        make_context(services={"db": object()}).get_service("db")


def test_allowed_but_missing_service_raises_lookup_error_saying_how_to_register_it() -> None:
    context = make_context(allowed=("clock",))
    with pytest.raises(LookupError, match=r"allowed service 'clock' but the host registered none") as caught:
        context.get_service("clock")
    assert "host.register_service('clock', obj)" in str(caught.value)
    assert not isinstance(caught.value, ServiceNotAllowedError)


def test_logger_adapter_carries_plugin_id_and_trust_level(caplog: pytest.LogCaptureFixture) -> None:
    context = make_context()
    with caplog.at_level(logging.INFO, logger="plugin_pool.plugins.sdk-test"):
        context.logger.info("scanning %s", "a.jar", extra={"capability": "scan"})
    (record,) = caplog.records
    assert record.name == "plugin_pool.plugins.sdk-test"
    assert record.getMessage() == "scanning a.jar"
    assert (record.pluginId, record.trustLevel, record.capability) == ("sdk-test", "trusted", "scan")  # type: ignore[attr-defined]


def test_logger_adapter_uses_the_given_logger() -> None:
    base = logging.getLogger("tests.custom")
    context = PluginContext("p", TrustLevel.BUILTIN, {}, {}, (), logger=base)
    assert context.logger.logger is base
    assert context.logger.extra == {"pluginId": "p", "trustLevel": "builtin"}
