"""``plugin-pool config check FILE``: everything that can be found wrong in a configuration without running it.

:func:`load_config` already refuses a file that does not parse, unknown sections and keys, values of the wrong
type or range, and pool bounds that break the one rule (``plugin_pool._bounds``) within one source. This
module looks further, reading (never importing or running) what the file names:

- ``[plugins.<id>]`` tables: a folder (``path``) that is missing or whose ``plugin.toml`` is invalid or has
  another id; an entry file (``file.py:attr``) that is missing or a module that cannot be found; a table with
  neither that matches no plugin discovery finds (a typo in the id configures nothing);
- pool bounds across sources: a plugin's bounds resolved from ``[plugins.<id>]``, its manifest's ``[pool]``
  and ``[sandbox]`` (the rule of ``plugin_pool._bounds``), against ``sandbox.max_total_workers``;
- ``sandbox.required_layers`` naming a layer that does not exist; ``sandbox.extra_read_paths``,
  ``discovery.paths`` and ``trust.trusted_keys`` that are missing (keys: or not Ed25519 public keys);
- a manifest's ``[python] path`` folders that do not exist yet (``plugin-pool vendor`` makes them).

Each finding is a :class:`Finding` naming the key, what is wrong and the fix; ``error`` findings make the
command exit 1, ``warning`` findings do not.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plugin_pool._bounds import check_pool_size, resolve_pool_size
from plugin_pool.config import Config, PluginSettings
from plugin_pool.discovery import DiscoveredPlugin, Discovery
from plugin_pool.errors import ConfigError, IntegrityError, ManifestError, PluginPoolError
from plugin_pool.integrity import load_trusted_keys
from plugin_pool.manifest import Manifest, read_manifest
from plugin_pool.sandbox._confine import ALL_LAYERS

__all__ = ["Finding", "check_config"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``config check`` found: the key it concerns, what is wrong and what to do."""

    level: Literal["error", "warning"]
    key: str
    message: str

    def format(self) -> str:
        """One line: ``error   plugins.x: message``."""
        return f"{self.level:<7} {self.key}: {self.message}"


def check_config(config: Config) -> list[Finding]:
    """Every finding about a loaded configuration, errors first. Reads files and folders; imports nothing
    and starts nothing. Safe to call twice."""
    findings: list[Finding] = []
    findings += _check_layers(config)
    findings += _check_paths(config)
    try:
        discovered = Discovery.from_config(config).get_result()
    except PluginPoolError as exc:  # a trusted key that cannot be read (reported above) stops discovery
        if not any(f.key == "trust.trusted_keys" for f in findings):
            findings.append(Finding("error", "discovery", f"discovery cannot run: {exc}"))
        found: dict[str, DiscoveredPlugin] | None = None
    else:
        found = {p.plugin_id: p for p in discovered.plugins if p.plugin_id}
    for plugin_id, settings in config.plugins.items():
        findings += _check_plugin(config, plugin_id, settings, found)
    for plugin_id, plugin in (found or {}).items():
        if plugin_id not in config.plugins and plugin.manifest is not None:
            findings += _check_bounds(config, plugin_id, PluginSettings(), plugin.manifest)
            findings += _check_python_path(f"discovery {plugin.source}", plugin.manifest)
    return sorted(findings, key=lambda f: f.level != "error")


def _check_layers(config: Config) -> list[Finding]:
    wanted = config.sandbox.required_layers.strip().lower()
    if wanted in {"available", "none"}:
        return []
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_LAYERS]
    return [
        Finding(
            "error",
            "sandbox.required_layers",
            f"names unknown layer {name!r}; known: {', '.join(ALL_LAYERS)} (or 'available', 'none')",
        )
        for name in unknown
    ]


def _check_paths(config: Config) -> list[Finding]:
    findings = [
        Finding("error", "sandbox.extra_read_paths", f"{path} does not exist; create it or remove it from the list")
        for path in config.sandbox.extra_read_paths
        if not os.path.exists(path)
    ]
    findings += [
        Finding("warning", "discovery.paths", f"{path} does not exist or is not a folder; discovery skips it")
        for path in config.discovery.paths
        if not os.path.isdir(path)
    ]
    for key in config.trust.trusted_keys:
        try:
            load_trusted_keys([key])
        except IntegrityError as exc:
            findings.append(Finding("error", "trust.trusted_keys", str(exc)))
    return findings


def _check_plugin(
    config: Config, plugin_id: str, settings: PluginSettings, found: Mapping[str, DiscoveredPlugin] | None
) -> list[Finding]:
    key = f"plugins.{plugin_id}"
    if not settings.enabled:
        return []
    if settings.path is not None:
        folder = Path(settings.path)
        if not folder.is_dir():
            return [Finding("error", f"{key}.path", f"{folder} is not a folder; give the plugin's folder")]
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            return [Finding("error", f"{key}.path", str(exc))]
        if manifest.info.id != plugin_id:
            return [
                Finding(
                    "error",
                    key,
                    f"the folder {folder} holds plugin {manifest.info.id!r}, not {plugin_id!r}: rename the table "
                    f"to [plugins.{manifest.info.id}] or point path at the right folder",
                )
            ]
        return _check_bounds(config, plugin_id, settings, manifest) + _check_python_path(f"{key}.path", manifest)
    if settings.entry is not None:
        return _check_entry(key, settings.entry)
    if found is None:  # discovery could not run: whether the id matches a plugin is unknown
        return []
    if plugin_id not in found:
        known = ", ".join(sorted(found)) or "none"
        return [
            Finding(
                "error",
                key,
                f"matches no plugin: it has no entry and no path, and discovery ([discovery] paths, entry points) "
                f"finds no plugin {plugin_id!r} (found: {known}); fix the id, or add path or entry",
            )
        ]
    discovered = found[plugin_id].manifest
    return [] if discovered is None else _check_bounds(config, plugin_id, settings, discovered)


def _check_entry(key: str, entry: str) -> list[Finding]:
    target = entry.rpartition(":")[0]
    if target.endswith(".py"):
        if not Path(target).is_file():
            return [Finding("error", f"{key}.entry", f"{target} does not exist; fix the path (relative to the file)")]
        return []
    top = target.split(".")[0]
    try:
        # The top-level name only: finding a submodule would import (run) its parent packages.
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return [
            Finding(
                "error",
                f"{key}.entry",
                f"module {top!r} cannot be found on this interpreter's path; install it or use 'file.py:attribute'",
            )
        ]
    return []


def _check_bounds(config: Config, plugin_id: str, settings: PluginSettings, manifest: Manifest) -> list[Finding]:
    from plugin_pool.model import TrustLevel

    if manifest.info.trust_level is not TrustLevel.UNTRUSTED:
        return []
    sandbox = config.sandbox
    sources: list[tuple[str, Mapping[str, int | None]]] = [
        (f"plugins.{plugin_id}", {"min_workers": settings.min_workers, "max_workers": settings.max_workers}),
        (f"{manifest.source} [pool]", dict(manifest.pool)),
        ("sandbox", {"min_workers": sandbox.min_workers, "max_workers": sandbox.max_workers}),
    ]
    try:
        (low, high), note = resolve_pool_size(plugin_id, sources)
        check_pool_size(low, high, max_total_workers=sandbox.max_total_workers, where=f"plugins.{plugin_id}")
    except ConfigError as exc:
        return [Finding("error", exc.key or f"plugins.{plugin_id}", str(exc))]
    return [] if note is None else [Finding("warning", f"plugins.{plugin_id}", note)]


def _check_python_path(key: str, manifest: Manifest) -> list[Finding]:
    return [
        Finding(
            "warning",
            key,
            f"[python] path folder {rel!r} does not exist in {manifest.directory}: run plugin-pool vendor "
            f"{manifest.directory} (the plugin's imports of its dependencies fail until then)",
        )
        for rel in manifest.python_path
        if not manifest.directory.joinpath(*rel.split("/")).is_dir()
    ]
