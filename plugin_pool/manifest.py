"""Plugin manifests (``plugin.toml``): what the host knows about a plugin folder without importing it.

An Untrusted plugin's manifest is read as data only; the host never imports anything from its folder.

    [plugin]
    id = "secrets-scanner"
    name = "Secrets scanner"
    version = "1.0.0"
    trust_level = "untrusted"
    entry = "scanner:SecretsScanner"      # module inside the folder : attribute
    description = "Finds credentials in text."
    author = "Example Corp"

    [capabilities.scan]                   # one table per capability; its keys are the parameters
    media_types = ["text/plain"]

    [pool]                                # optional per-plugin pool sizing
    min_workers = 1
    max_workers = 2
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from plugin_pool.errors import InvalidPluginError
from plugin_pool.model import Capabilities, Capability, PluginInfo

__all__ = ["MANIFEST_NAME", "Manifest", "ManifestError", "read_manifest"]

MANIFEST_NAME = "plugin.toml"
_ENTRY_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)
_POOL_KEYS = {"min_workers", "max_workers"}


class ManifestError(InvalidPluginError):
    """A manifest is missing, unreadable or invalid; ``path`` names the file and ``field`` the key."""

    def __init__(self, message: str, *, path: Path, field: str | None = None, plugin_id: str | None = None) -> None:
        super().__init__(f"{path}: {message}", plugin_id=plugin_id, field=field)
        self.path = path


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest: the plugin's info, capabilities, entry and folder."""

    info: PluginInfo
    capabilities: Capabilities
    entry: str
    directory: Path
    pool: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``directory/plugin.toml``. Reads one file; imports nothing. Raises ManifestError."""
    folder = Path(directory).resolve()
    path = folder / MANIFEST_NAME
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in the plugin folder; add one", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}", path=path) from None
    unknown = set(data) - {"plugin", "capabilities", "pool"}
    if unknown:
        raise ManifestError(
            f"unknown table [{sorted(unknown)[0]}]; expected [plugin], [capabilities], [pool]",
            path=path,
            field=sorted(unknown)[0],
        )
    table = data.get("plugin")
    if not isinstance(table, dict):
        raise ManifestError("missing the [plugin] table", path=path, field="plugin")
    for key in ("id", "name", "version", "trust_level", "entry"):
        if key not in table:
            raise ManifestError(f"missing plugin.{key}", path=path, field=f"plugin.{key}")
    known = {"id", "name", "version", "trust_level", "entry", "description", "author"}
    extra = set(table) - known
    if extra:
        raise ManifestError(
            f"unknown key plugin.{sorted(extra)[0]}; known: {', '.join(sorted(known))}",
            path=path,
            field=f"plugin.{sorted(extra)[0]}",
        )
    try:
        info = PluginInfo(
            id=table["id"],
            name=table["name"],
            version=str(table["version"]),
            trust_level=table["trust_level"],
            description=table.get("description"),
            author=table.get("author"),
        )
    except InvalidPluginError as exc:
        raise ManifestError(
            str(exc),
            path=path,
            field=f"plugin.{exc.field}" if exc.field else None,
            plugin_id=table.get("id") if isinstance(table.get("id"), str) else None,
        ) from None
    entry = table["entry"]
    if not isinstance(entry, str) or not _ENTRY_RE.match(entry):
        raise ManifestError(
            f"plugin.entry {entry!r} is invalid: expected 'module:attribute' relative to the folder",
            path=path,
            field="plugin.entry",
            plugin_id=info.id,
        )
    caps_table = data.get("capabilities", {})
    if not isinstance(caps_table, dict) or not caps_table:
        raise ManifestError(
            "declare at least one capability as a [capabilities.NAME] table",
            path=path,
            field="capabilities",
            plugin_id=info.id,
        )
    try:
        capabilities = Capabilities(
            Capability(name, params if isinstance(params, dict) else _not_a_table(name))
            for name, params in caps_table.items()
        )
    except (InvalidPluginError, TypeError) as exc:
        raise ManifestError(str(exc), path=path, field="capabilities", plugin_id=info.id) from None
    pool = data.get("pool", {})
    if (
        not isinstance(pool, dict)
        or set(pool) - _POOL_KEYS
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pool.values())
    ):
        raise ManifestError(
            f"[pool] may hold only {', '.join(sorted(_POOL_KEYS))}, each a positive integer",
            path=path,
            field="pool",
            plugin_id=info.id,
        )
    return Manifest(
        info=info,
        capabilities=capabilities,
        entry=entry,
        directory=folder,
        pool=MappingProxyType(dict(pool)),
        source=path,
    )


def _not_a_table(name: str) -> dict[str, Any]:
    raise TypeError(f"capabilities.{name} must be a table of parameters (use [capabilities.{name}])")
