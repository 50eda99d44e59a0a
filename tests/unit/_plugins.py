"""Small plugins shared by the unit tests; each class does one thing and records what happened to it."""

from __future__ import annotations

import asyncio
import getpass
import threading
from typing import Any

from plugin_pool import Capabilities, PluginBase, PluginContext, PluginInfo, TrustLevel, capability

TEST_ACTOR = "unit-tests"
HOST_ACTOR = f"{TEST_ACTOR}/{getpass.getuser()}"
"""What a host configured with TEST_ACTOR records: its identity and the OS user it runs as."""
"""The actor the unit tests' hosts record in the audit trail."""

Journal = list[tuple[str, str]]
"""A shared list of (plugin id, step) entries, in the order the steps ran."""


def make_info(plugin_id: str, trust_level: TrustLevel = TrustLevel.BUILTIN, version: str = "1.0.0") -> PluginInfo:
    return PluginInfo(id=plugin_id, name=plugin_id.title(), version=version, trust_level=trust_level)


class Recorder(PluginBase):
    """Journals its lifecycle steps; ``scan`` echoes the payload, ``fail`` raises ValueError."""

    def __init__(
        self,
        plugin_id: str = "echo",
        trust_level: TrustLevel = TrustLevel.BUILTIN,
        journal: Journal | None = None,
    ) -> None:
        self.info = make_info(plugin_id, trust_level)  # type: ignore[misc]
        self.journal: Journal = journal if journal is not None else []

    def initialize(self, context: PluginContext) -> None:
        super().initialize(context)
        self.step("initialize")

    def start(self) -> None:
        self.step("start")

    def stop(self) -> None:
        self.step("stop")

    def step(self, name: str) -> None:
        self.journal.append((self.info.id, name))

    @capability
    def scan(self, payload: Any) -> dict[str, Any]:
        return {"plugin": self.info.id, "payload": payload}

    @capability
    def fail(self, payload: Any) -> Any:
        raise ValueError(f"cannot scan {payload!r}")


class RaisesIn(Recorder):
    """Raises RuntimeError('boom in <step>') in one lifecycle step."""

    def __init__(self, plugin_id: str, failing_step: str, journal: Journal | None = None) -> None:
        super().__init__(plugin_id, journal=journal)
        self.failing_step = failing_step

    def step(self, name: str) -> None:
        super().step(name)
        if name == self.failing_step:
            raise RuntimeError(f"boom in {name}")


class HangsIn(Recorder):
    """Blocks in one lifecycle step until ``release`` is set (at most 5 s, so the thread always ends)."""

    def __init__(self, plugin_id: str, hanging_step: str, release: threading.Event) -> None:
        super().__init__(plugin_id)
        self.hanging_step = hanging_step
        self.release = release

    def step(self, name: str) -> None:
        super().step(name)
        if name == self.hanging_step:
            self.release.wait(5)


class AsyncRecorder(PluginBase):
    """Every lifecycle step and capability is ``async def``; ``hang`` sleeps 5 s (cancelled by the host)."""

    def __init__(
        self,
        plugin_id: str = "async-echo",
        trust_level: TrustLevel = TrustLevel.BUILTIN,
        hanging_step: str | None = None,
    ) -> None:
        self.info = make_info(plugin_id, trust_level)  # type: ignore[misc]
        self.journal: Journal = []
        self.hanging_step = hanging_step
        self.cancelled = threading.Event()

    async def step(self, name: str) -> None:
        await asyncio.sleep(0)
        self.journal.append((self.info.id, name))
        if name == self.hanging_step:
            await self.sleep_until_cancelled()

    async def sleep_until_cancelled(self) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def initialize(self, context: PluginContext) -> None:  # type: ignore[override]
        self.context = context
        await self.step("initialize")

    async def start(self) -> None:  # type: ignore[override]
        await self.step("start")

    async def stop(self) -> None:  # type: ignore[override]
        await self.step("stop")

    @capability
    async def scan(self, payload: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"plugin": self.info.id, "payload": payload}

    @capability
    async def fail(self, payload: Any) -> Any:
        raise KeyError(payload)

    @capability
    async def hang(self, payload: Any) -> Any:
        await self.sleep_until_cancelled()


class Connector(PluginBase):
    """Declares the network capability ``connect``."""

    def __init__(self, plugin_id: str = "connector", trust_level: TrustLevel = TrustLevel.TRUSTED) -> None:
        self.info = make_info(plugin_id, trust_level)  # type: ignore[misc]

    @capability
    def connect(self, payload: Any) -> str:
        return f"connected to {payload}"


class WithoutMethod:
    """Not a PluginBase: declares capability ``scan`` but has no ``scan`` method."""

    def __init__(self, plugin_id: str = "no-method") -> None:
        self.info = make_info(plugin_id)
        self.capabilities = Capabilities.of("scan")

    def initialize(self, context: PluginContext) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
