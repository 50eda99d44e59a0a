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

Optional keys of ``[plugin]``: ``priority`` (an integer, default 0: discovery orders plugins by priority,
highest first, then by id, so two hosts load the same set the same way) and ``host_versions`` (a PEP 440
specifier such as ``">=0.1,<1"`` that ``plugin_pool.__version__`` must satisfy; checked by discovery).

    [resources]                           # optional per-plugin limits (sandboxed plugins); they only
    memory_mb = 256                       # tighten the host's [sandbox] / [host] values, never loosen them
    cpu_time_s = 60
    call_timeout_s = 2.5

    [signature]                           # written by ``plugin-pool sign``; read by plugin_pool.integrity
    key_id = "…"

    [python]                              # optional: the plugin's own dependencies, inside its folder
    path = ["_vendor"]                    # folders added to the worker's import path, after the folder itself
    requirements = "requirements.txt"     # what ``plugin-pool vendor`` installs into path[0] (hashes required)

``[python] path`` names folders *inside* the plugin folder, so they are hashed, signed, copied and bound
read-only like every other file: a sandbox worker puts them on ``sys.path`` right after the folder itself
(``.pth`` files in them are not processed). ``requirements`` is a requirements file in the folder (pip's
format, every line pinned with ``--hash``) or a list of such lines.

A folder's trust level is ``untrusted`` or ``trusted`` (which discovery accepts only with a valid signature
by a configured key); ``builtin`` is refused: BuiltIn is only what the host registers in code.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from plugin_pool._files import UnsafeFileError, read_regular_file
from plugin_pool.config import check_pool_size
from plugin_pool.errors import ConfigError, InvalidPluginError, ManifestError
from plugin_pool.model import Capabilities, Capability, PluginInfo, TrustLevel, is_valid_plugin_id, validate_plugin_id

__all__ = [
    "MANIFEST_MAX_BYTES",
    "MANIFEST_NAME",
    "RESOURCE_LIMITS",
    "Manifest",
    "ManifestError",
    "check_host_version",
    "parse_manifest_text",
    "read_manifest",
]

MANIFEST_NAME = "plugin.toml"
MANIFEST_MAX_BYTES = 1 << 20
"""The largest ``plugin.toml`` read, in bytes (1 MiB): a manifest is a page of settings, not data."""
# fullmatch only: a ``$`` anchor would also accept a trailing newline.
_ENTRY_RE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)
_POOL_KEYS = {"min_workers", "max_workers"}
_TABLES = ("plugin", "capabilities", "pool", "resources", "signature", "python")
_PYTHON_KEYS = {"path", "requirements"}
# One folder name of a [python] path entry: no separators, no control characters, not . or ..
_PATH_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
PYTHON_PATH_MAX = 16
_PLUGIN_KEYS = {"id", "name", "version", "trust_level", "entry", "description", "author", "priority", "host_versions"}
PRIORITY_LIMIT = 1_000_000

RESOURCE_LIMITS: Mapping[str, tuple[type, float]] = MappingProxyType(
    {"memory_mb": (int, 256), "cpu_time_s": (int, 1), "call_timeout_s": (float, 0.001)}
)
"""The keys a manifest's ``[resources]`` table may hold: key -> (type, minimum). Units are in the names."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest: the plugin's info, capabilities, entry and folder."""

    info: PluginInfo
    capabilities: Capabilities
    entry: str
    directory: Path
    pool: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None
    priority: int = 0
    """Discovery order: higher first, then by id."""
    host_versions: str | None = None
    """A PEP 440 specifier the host version must satisfy (None: any host)."""
    resources: Mapping[str, int | float] = field(default_factory=lambda: MappingProxyType({}))
    """Per-plugin limits from ``[resources]`` (see RESOURCE_LIMITS); they only ever tighten the host's."""
    has_signature: bool = False
    """Whether the manifest has a ``[signature]`` table (checked by plugin_pool.integrity, not here)."""
    python_path: tuple[str, ...] = ()
    """``[python] path``: folders inside the plugin folder (relative, '/'-separated) that a worker adds to its
    import path after the folder itself."""
    requirements: str | tuple[str, ...] | None = None
    """``[python] requirements``: a requirements file in the folder, or requirement lines; what
    ``plugin-pool vendor`` installs into ``python_path[0]``."""

    def supports_host(self, host_version: str) -> bool:
        """Whether ``host_version`` satisfies ``host_versions`` (always true without one). Pure."""
        if self.host_versions is None:
            return True
        return SpecifierSet(self.host_versions).contains(Version(host_version), prereleases=True)


def parse_manifest_text(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse a manifest's bytes as UTF-8 TOML; raise ManifestError naming ``path`` otherwise. Pure.

    The one parser of manifest bytes (read_manifest and the content hash use it): not UTF-8, not TOML,
    or nested too deeply to parse are each refused with the fix.
    """
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"is not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8", path=path, field=None
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}; fix the syntax", path=path) from None
    except RecursionError:
        raise ManifestError(
            "not valid TOML: values are nested too deeply to parse; flatten the arrays or tables", path=path
        ) from None


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``directory/plugin.toml``. Reads one file; imports nothing. Raises ManifestError.

    The manifest is opened without following a symlink and without waiting on a fifo, and read up to
    MANIFEST_MAX_BYTES; anything else in its place is refused with the fix. Safe to call twice.
    """
    folder = Path(directory).resolve()
    path = folder / MANIFEST_NAME
    try:
        raw = read_regular_file(path, MANIFEST_MAX_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in the plugin folder; add one", path=path) from None
    except UnsafeFileError as exc:
        if exc.kind == "too_large":
            why = f"is larger than {MANIFEST_MAX_BYTES} bytes ({exc.what}); a manifest holds settings only"
        else:
            why = (
                f"is a {exc.what}, not a regular file; a plugin folder holds only regular files and folders: "
                f"replace it with the manifest itself"
            )
        raise ManifestError(why, path=path) from None
    except OSError as exc:
        raise ManifestError(f"cannot be read ({exc.strerror}); check its permissions", path=path) from None
    data = parse_manifest_text(raw, path)
    unknown = set(data) - set(_TABLES)
    if unknown:
        raise ManifestError(
            f"unknown table [{sorted(unknown)[0]}]; expected {', '.join(f'[{t}]' for t in _TABLES)}",
            path=path,
            field=sorted(unknown)[0],
        )
    table = data.get("plugin")
    if not isinstance(table, dict):
        raise ManifestError("missing the [plugin] table", path=path, field="plugin")
    for key in ("id", "name", "version", "trust_level", "entry"):
        if key not in table:
            raise ManifestError(f"missing plugin.{key}", path=path, field=f"plugin.{key}")
    extra = set(table) - _PLUGIN_KEYS
    if extra:
        raise ManifestError(
            f"unknown key plugin.{sorted(extra)[0]}; known: {', '.join(sorted(_PLUGIN_KEYS))}",
            path=path,
            field=f"plugin.{sorted(extra)[0]}",
        )
    try:
        validate_plugin_id(table["id"], field_name="plugin.id")
        info = PluginInfo(
            id=table["id"],
            name=table["name"],
            version=str(table["version"]),
            trust_level=table["trust_level"],
            description=table.get("description"),
            author=table.get("author"),
        )
    except InvalidPluginError as exc:
        field = exc.field if exc.field is None or exc.field.startswith("plugin.") else f"plugin.{exc.field}"
        # Only a valid id is carried: an invalid one must never reach a path, a label or a registry row.
        raise ManifestError(
            str(exc), path=path, field=field, plugin_id=table["id"] if is_valid_plugin_id(table["id"]) else None
        ) from None
    if info.trust_level is TrustLevel.BUILTIN:
        raise ManifestError(
            "plugin.trust_level 'builtin' is not allowed in a plugin folder: BuiltIn is only what the host "
            "registers in code; declare 'untrusted', or 'trusted' with a signed manifest",
            path=path,
            field="plugin.trust_level",
            plugin_id=info.id,
        )
    priority = table.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > PRIORITY_LIMIT:
        raise ManifestError(
            f"plugin.priority = {priority!r} is invalid: expected an integer between "
            f"-{PRIORITY_LIMIT} and {PRIORITY_LIMIT} (higher loads first)",
            path=path,
            field="plugin.priority",
            plugin_id=info.id,
        )
    host_versions = _read_host_versions(table.get("host_versions"), path, info.id)
    entry = table["entry"]
    if not isinstance(entry, str) or not _ENTRY_RE.fullmatch(entry):
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
    try:  # the one pool-bounds rule (plugin_pool.config.check_pool_size), here for a [pool] that sets both
        low = int(pool.get("min_workers", 1))
        check_pool_size(low, int(pool.get("max_workers", low)), where="pool")
    except ConfigError as exc:
        raise ManifestError(str(exc), path=path, field="pool", plugin_id=info.id) from None
    resources = _read_resources(data.get("resources", {}), path, info.id)
    signature = data.get("signature")
    if signature is not None and not isinstance(signature, dict):
        raise ManifestError(
            "signature must be a table ([signature], written by plugin-pool sign)",
            path=path,
            field="signature",
            plugin_id=info.id,
        )
    python_path, requirements = _read_python(data.get("python", {}), path, info.id)
    return Manifest(
        info=info,
        capabilities=capabilities,
        entry=entry,
        directory=folder,
        pool=MappingProxyType(dict(pool)),
        source=path,
        priority=priority,
        host_versions=host_versions,
        resources=resources,
        has_signature=signature is not None,
        python_path=python_path,
        requirements=requirements,
    )


def _read_python(table: Any, path: Path, plugin_id: str) -> tuple[tuple[str, ...], str | tuple[str, ...] | None]:
    """``[python]``: (path, requirements), each checked so a folder can never name a place outside itself."""
    if not isinstance(table, dict):
        raise ManifestError("python must be a table ([python])", path=path, field="python", plugin_id=plugin_id)
    extra = set(table) - _PYTHON_KEYS
    if extra:
        raise ManifestError(
            f"unknown key python.{sorted(extra)[0]}; known: {', '.join(sorted(_PYTHON_KEYS))}",
            path=path,
            field=f"python.{sorted(extra)[0]}",
            plugin_id=plugin_id,
        )
    folders = table.get("path", [])
    if not isinstance(folders, list) or len(folders) > PYTHON_PATH_MAX:
        raise ManifestError(
            f"python.path must be a list of at most {PYTHON_PATH_MAX} folders inside the plugin folder, "
            f'e.g. ["_vendor"]',
            path=path,
            field="python.path",
            plugin_id=plugin_id,
        )
    checked: list[str] = []
    for folder in folders:
        parts = folder.split("/") if isinstance(folder, str) else []
        if not parts or not all(_PATH_PART_RE.fullmatch(part) for part in parts):
            raise ManifestError(
                f"python.path entry {folder!r:.80} is invalid: expected a folder inside the plugin folder, "
                f"relative, '/'-separated, of letters, digits, '_', '.', '+' or '-' (no '..'), e.g. '_vendor'",
                path=path,
                field="python.path",
                plugin_id=plugin_id,
            )
        if folder not in checked:
            checked.append(folder)
    requirements = table.get("requirements")
    if requirements is None:
        return tuple(checked), None
    if isinstance(requirements, str):
        parts = requirements.split("/")
        if not all(_PATH_PART_RE.fullmatch(part) for part in parts):
            raise ManifestError(
                f"python.requirements = {requirements!r:.80} is invalid: expected a file inside the plugin "
                f"folder (relative, no '..'), or a list of requirement lines",
                path=path,
                field="python.requirements",
                plugin_id=plugin_id,
            )
        value: str | tuple[str, ...] = requirements
    elif isinstance(requirements, list) and all(isinstance(r, str) and r.strip() for r in requirements):
        if any("\n" in r or "\r" in r for r in requirements):
            raise ManifestError(
                "python.requirements lines may not hold line breaks: one requirement per list item",
                path=path,
                field="python.requirements",
                plugin_id=plugin_id,
            )
        value = tuple(requirements)
    else:
        raise ManifestError(
            "python.requirements must be a requirements file in the folder or a list of requirement lines",
            path=path,
            field="python.requirements",
            plugin_id=plugin_id,
        )
    if not checked:
        raise ManifestError(
            'python.requirements needs python.path: the folder to install them into, e.g. path = ["_vendor"]',
            path=path,
            field="python.path",
            plugin_id=plugin_id,
        )
    return tuple(checked), value


def _read_host_versions(value: Any, path: Path, plugin_id: str) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str) or not value.strip():
            raise InvalidSpecifier(repr(value))
        SpecifierSet(value)
    except InvalidSpecifier:
        raise ManifestError(
            f"plugin.host_versions = {value!r} is invalid: expected a PEP 440 specifier such as '>=0.1,<1'",
            path=path,
            field="plugin.host_versions",
            plugin_id=plugin_id,
        ) from None
    return value


def _read_resources(table: Any, path: Path, plugin_id: str) -> Mapping[str, int | float]:
    if not isinstance(table, dict):
        raise ManifestError(
            "resources must be a table ([resources])", path=path, field="resources", plugin_id=plugin_id
        )
    values: dict[str, int | float] = {}
    for key, value in table.items():
        if key not in RESOURCE_LIMITS:
            raise ManifestError(
                f"unknown key resources.{key}; known: {', '.join(sorted(RESOURCE_LIMITS))}",
                path=path,
                field=f"resources.{key}",
                plugin_id=plugin_id,
            )
        kind, minimum = RESOURCE_LIMITS[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and not isinstance(value, int):
            ok = False
        if not ok or not math.isfinite(value) or value < minimum:
            raise ManifestError(
                f"resources.{key} = {value!r} is invalid: expected {'an integer' if kind is int else 'a number'} "
                f">= {minimum:g}",
                path=path,
                field=f"resources.{key}",
                plugin_id=plugin_id,
            )
        values[key] = float(value) if kind is float else value
    return MappingProxyType(values)


def check_host_version(manifest: Manifest, host_version: str) -> str | None:
    """Return why ``host_version`` is outside the manifest's ``host_versions``, or None if it is supported. Pure."""
    try:
        if manifest.supports_host(host_version):
            return None
    except InvalidVersion:
        return f"host version {host_version!r} is not a PEP 440 version"
    return (
        f"plugin {manifest.info.id!r} supports host versions {manifest.host_versions!r}; this host is "
        f"{host_version}: install a compatible plugin version"
    )


def _not_a_table(name: str) -> dict[str, Any]:
    raise TypeError(f"capabilities.{name} must be a table of parameters (use [capabilities.{name}])")
