"""Plugins made for load: echo, sleep, allocate, raise on request (in-process and Untrusted).

Part of :mod:`plugin_pool.testing.load` (import from there).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

# -- plugins made for load ------------------------------------------------------------------------------------


class _EchoBase(PluginBase):
    """In-process load plugin: echoes (sync and async), sleeps, raises. Subclassed per id by make_echo_plugin."""

    @capability
    def echo(self, payload: Any) -> Any:
        """Return the payload."""
        return payload

    @capability
    async def echo_async(self, payload: Any) -> Any:
        """Return the payload, from a coroutine on the host's loop."""
        return payload

    @capability
    def sleep(self, payload: Any) -> Any:
        """Sleep ``payload["s"]`` seconds, then return ``payload.get("token")``."""
        time.sleep(float(payload["s"]))
        return payload.get("token")

    @capability
    def fail(self, payload: Any) -> Any:
        """Raise ValueError with the payload as its message (a PluginCallError for the caller)."""
        raise ValueError(str(payload))


def make_echo_plugin(plugin_id: str, trust_level: TrustLevel | str = TrustLevel.BUILTIN) -> PluginBase:
    """An in-process plugin ``plugin_id`` (BuiltIn or Trusted) with capabilities ``echo``, ``echo_async``,
    ``sleep`` and ``fail`` (see :class:`_EchoBase`). Add it with ``host.add_plugin``. Pure."""
    info = PluginInfo(
        id=plugin_id, name=f"Load {plugin_id}", version="1.0.0", trust_level=TrustLevel.parse(trust_level)
    )
    cls = type(f"Load_{plugin_id.replace('-', '_')}", (_EchoBase,), {"info": info, "__module__": __name__})
    plugin: PluginBase = cls()
    return plugin


_LOAD_PLUGIN_SOURCE = '''\
"""A sandboxed plugin for load tests, written by plugin_pool.testing.load.write_load_plugin."""

import os
import time
import tomllib
from pathlib import Path

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

with (Path(__file__).parent / "plugin.toml").open("rb") as _fh:
    _ID = tomllib.load(_fh)["plugin"]["id"]


class LoadPlugin(PluginBase):
    info = PluginInfo(id=_ID, name="Load", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def echo(self, payload):
        return payload

    @capability
    def sleep(self, payload):
        time.sleep(float(payload["s"]))
        return payload.get("token")

    @capability
    def allocate(self, payload):
        block = bytearray(int(payload["bytes"]))
        return {"allocated": len(block), "token": payload.get("token")}

    @capability
    def fail(self, payload):
        raise ValueError(str(payload))

    @capability
    def pid(self, payload):
        return os.getpid()
'''


def write_load_plugin(
    parent: str | Path,
    plugin_id: str,
    *,
    min_workers: int = 1,
    max_workers: int | None = None,
    memory_mb: int | None = None,
    call_timeout_s: float | None = None,
) -> Path:
    """Write an Untrusted plugin folder ``parent/plugin_id`` and return it (add it with
    ``host.add_plugin_dir``). Its capabilities: ``echo`` (returns the payload), ``sleep`` (``{"s": seconds,
    "token": ...}``, returns the token), ``allocate`` (``{"bytes": n, "token": ...}``: a MemoryError past the
    worker's memory limit), ``fail`` (raises ValueError with the payload) and ``pid``. ``min_workers`` /
    ``max_workers`` (default: the minimum) go to its [pool]; ``memory_mb`` (>= 256) and ``call_timeout_s``
    to its [resources], where they tighten the host's limits. Blocks on the file writes; raises
    FileExistsError if the folder exists."""
    folder = Path(parent) / plugin_id
    folder.mkdir(parents=True)
    resources = {"memory_mb": memory_mb, "call_timeout_s": call_timeout_s}
    lines = [
        "# Written by plugin_pool.testing.load.write_load_plugin.",
        "[plugin]",
        f'id = "{plugin_id}"',
        'name = "Load"',
        'version = "1.0.0"',
        'trust_level = "untrusted"',
        'entry = "load_plugin:LoadPlugin"',
        "",
        *(f"[capabilities.{name}]" for name in ("echo", "sleep", "allocate", "fail", "pid")),
        "",
        "[pool]",
        f"min_workers = {min_workers}",
        f"max_workers = {max_workers if max_workers is not None else min_workers}",
    ]
    if any(v is not None for v in resources.values()):
        lines += ["", "[resources]", *(f"{k} = {v!r}" for k, v in resources.items() if v is not None)]
    (folder / "plugin.toml").write_text("\n".join(lines) + "\n")
    (folder / "load_plugin.py").write_text(_LOAD_PLUGIN_SOURCE)
    return folder
