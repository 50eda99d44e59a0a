"""Discovery: which plugins the configured folders and entry points offer, at which trust level, and why not.

Sources, in this order (the first plugin with an id wins; later ones with the same id are errors):

1. every folder of ``[discovery] paths``, in the order given: a folder that holds a ``plugin.toml`` is one
   plugin, otherwise each of its subfolders (sorted by name; hidden ones and ``__pycache__`` skipped) that
   holds one is a plugin. A path that does not exist is skipped, logged and reported.
2. the entry points of the group ``[discovery] entry_point_group`` (sorted by name), when
   ``use_entry_points`` is on: installed distributions providing BuiltIn or Trusted plugins.

A folder is read as data only: its manifest is parsed and its files are hashed, nothing in it is imported
here. Its trust level is decided here: ``untrusted`` as declared; ``trusted`` only with a valid Ed25519
signature by a configured key over the manifest and the content hash (otherwise rejected, or downgraded to
Untrusted when ``[trust] unsigned_trusted = "downgrade"``; never upgraded); ``builtin`` is refused.
An entry point is not loaded here either: the host imports it when it adds it, and checks that the object
it gets says BuiltIn or Trusted.

The result is ordered deterministically: priority (higher first), then id. :class:`Discovery` caches it
until :meth:`Discovery.rescan`, which reports what was added, changed (content hash differs) and removed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from plugin_pool.errors import ContentHashMismatchError, InvalidPluginError
from plugin_pool.integrity import (
    ContentHash,
    IntegrityError,
    SignatureError,
    compute_content_hash,
    load_trusted_keys,
    verify_plugin,
)
from plugin_pool.manifest import MANIFEST_NAME, Manifest, ManifestError, check_host_version, read_manifest
from plugin_pool.model import TrustLevel, validate_plugin_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from plugin_pool.config import Config

__all__ = [
    "DEFAULT_ENTRY_POINT_GROUP",
    "ContentHashMismatchError",
    "DiscoveredPlugin",
    "Discovery",
    "DiscoveryResult",
    "RescanReport",
    "check_content_hash",
    "compare_results",
    "discover",
    "format_discovery_report",
]

_log = logging.getLogger("plugin_pool.discovery")

DEFAULT_ENTRY_POINT_GROUP = "plugin_pool.plugins"

ErrorKind = Literal["manifest", "signature", "integrity", "host_version", "duplicate", "entry_point", "missing_path"]
"""Why a candidate was not accepted: a bad manifest, a rejected signature, a content problem (a symlink
leaving the folder, an unreadable file), an unsupported host version, an id seen before, an unusable entry
point name, or a configured path that does not exist."""


def check_content_hash(
    plugin_id: str, directory: Path, expected: ContentHash, *, shown: Path | None = None
) -> ContentHash:
    """Hash ``directory`` and raise ContentHashMismatchError unless it matches ``expected``. Blocks to read
    the files; safe to call any number of times. Returns the fresh hash. ``shown`` is the folder the error
    names (the original folder when ``directory`` is a private copy of it)."""
    actual = compute_content_hash(directory)
    if actual.digest != expected.digest:
        raise ContentHashMismatchError(plugin_id, shown or directory, expected, actual)
    return actual


@dataclass(frozen=True, slots=True)
class DiscoveredPlugin:
    """One candidate discovery found: a plugin it would add, or one it would not and why (``error``)."""

    plugin_id: str | None
    """The plugin's id (None when not even that could be read)."""
    source: str
    """The plugin folder, or ``entry point NAME = VALUE (distribution DIST)``."""
    kind: Literal["folder", "entry_point", "path"]
    trust_level: TrustLevel | None
    """The decided level of a folder plugin (None for entry points, decided when loaded, and for errors)."""
    decision: str
    """Why: ``trusted: signed by key …``, ``untrusted (downgraded: …)``, ``rejected: …``, ``error: …``."""
    priority: int = 0
    manifest: Manifest | None = None
    content_hash: ContentHash | None = None
    """Folder plugins: the hash of their files, recorded at registration and verified at load."""
    entry_point: EntryPoint | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    key_id: str | None = None
    """The trusted key that signed a Trusted folder plugin."""

    @property
    def ok(self) -> bool:
        """Whether the host would add this plugin."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    """What one scan found: ``plugins`` (priority then id) and ``errors`` / ``skipped_paths`` (scan order)."""

    plugins: tuple[DiscoveredPlugin, ...]
    errors: tuple[DiscoveredPlugin, ...] = ()
    skipped_paths: tuple[str, ...] = ()
    _by_id: Mapping[str, DiscoveredPlugin] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.plugin_id: p for p in self.plugins if p.plugin_id})

    def get(self, plugin_id: str) -> DiscoveredPlugin | None:
        """The accepted plugin with this id, or None. A dict lookup."""
        return self._by_id.get(plugin_id)

    @property
    def ids(self) -> tuple[str, ...]:
        """Ids of the accepted plugins, in load order."""
        return tuple(p.plugin_id for p in self.plugins if p.plugin_id)


@dataclass(frozen=True, slots=True)
class RescanReport:
    """What :meth:`Discovery.rescan` found compared with the previous scan (ids, sorted)."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    """Plugins found in both scans whose content hash or source differs."""
    removed: tuple[str, ...]
    result: DiscoveryResult


def discover(
    paths: Sequence[str | Path],
    *,
    entry_point_group: str = DEFAULT_ENTRY_POINT_GROUP,
    use_entry_points: bool = True,
    trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
    unsigned_trusted: str = "reject",
    host_version: str | None = None,
) -> DiscoveryResult:
    """Scan ``paths`` and the entry points once and return what would load. Blocks to read and hash files.

    Imports nothing from any plugin. Never raises for a bad plugin or path: each is reported in
    ``errors`` or ``skipped_paths`` and the scan goes on. Safe to call any number of times (no caching:
    see :class:`Discovery`). ``host_version`` defaults to ``plugin_pool.__version__``.
    """
    if unsigned_trusted not in ("reject", "downgrade"):
        raise ValueError(f"unsigned_trusted = {unsigned_trusted!r} is invalid: expected 'reject' or 'downgrade'")
    if host_version is None:
        from plugin_pool import __version__

        host_version = __version__
    keys = dict(trusted_keys or {})
    found: list[DiscoveredPlugin] = []
    skipped: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            _log.warning("discovery path skipped: %s does not exist or is not a folder", path)
            skipped.append(str(path))
            continue
        for folder in _plugin_folders(path):
            found.append(_examine_folder(folder, keys, unsigned_trusted, str(host_version)))
    if use_entry_points:
        found.extend(_examine_entry_point(ep) for ep in sorted(entry_points(group=entry_point_group), key=_ep_key))
    accepted: dict[str, DiscoveredPlugin] = {}
    errors: list[DiscoveredPlugin] = []
    for candidate in found:
        if candidate.ok and candidate.plugin_id in accepted:
            first = accepted[candidate.plugin_id]
            candidate = _error(
                candidate.plugin_id,
                candidate.source,
                candidate.kind,
                "duplicate",
                f"duplicate plugin id {candidate.plugin_id!r}: already discovered from {first.source} "
                f"(the first source wins); rename one of them",
                priority=candidate.priority,
            )
        if candidate.ok:
            assert candidate.plugin_id is not None
            accepted[candidate.plugin_id] = candidate
        else:
            _log.warning("discovery: %s: %s", candidate.source, candidate.error)
            errors.append(candidate)
    ordered = sorted(accepted.values(), key=lambda p: (-p.priority, p.plugin_id or ""))
    return DiscoveryResult(plugins=tuple(ordered), errors=tuple(errors), skipped_paths=tuple(skipped))


def _plugin_folders(path: Path) -> list[Path]:
    if (path / MANIFEST_NAME).is_file():
        return [path]
    return sorted(
        child
        for child in path.iterdir()
        if not child.name.startswith((".", "__")) and child.is_dir() and (child / MANIFEST_NAME).is_file()
    )


def _examine_folder(
    folder: Path, keys: Mapping[str, Ed25519PublicKey], unsigned_trusted: str, host_version: str
) -> DiscoveredPlugin:
    source = str(folder)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        plugin_id = exc.plugin_id or _id_or_none(folder.name)
        return _error(plugin_id, source, "folder", "manifest", str(exc))
    info = manifest.info
    unsupported = check_host_version(manifest, host_version)
    if unsupported is not None:
        return _error(info.id, source, "folder", "host_version", unsupported, manifest=manifest)
    key_id: str | None = None
    level = info.trust_level
    try:
        if level is TrustLevel.TRUSTED:
            try:
                key_id, content_hash = verify_plugin(folder, keys)
                decision = f"trusted: signed by key {key_id}"
            except SignatureError as exc:
                why = _signature_problem(exc)
                if unsigned_trusted != "downgrade":
                    return _error(
                        info.id,
                        source,
                        "folder",
                        "signature",
                        f"claims Trusted but {why}; sign it with a trusted key (plugin-pool sign) or set "
                        f'[trust] unsigned_trusted = "downgrade" to run it Untrusted',
                        manifest=manifest,
                    )
                content_hash = compute_content_hash(folder)
                level = TrustLevel.UNTRUSTED
                decision = f"untrusted (downgraded: {why})"
        else:
            content_hash = compute_content_hash(folder)
            decision = "untrusted: declared by its manifest; runs in the sandbox"
    except IntegrityError as exc:
        return _error(info.id, source, "folder", "integrity", str(exc), manifest=manifest)
    except OSError as exc:
        return _error(info.id, source, "folder", "integrity", f"cannot read the plugin's files: {exc}")
    return DiscoveredPlugin(
        plugin_id=info.id,
        source=source,
        kind="folder",
        trust_level=level,
        decision=decision,
        priority=manifest.priority,
        manifest=manifest,
        content_hash=content_hash,
        key_id=key_id,
    )


def _signature_problem(exc: SignatureError) -> str:
    if exc.reason == "unsigned":
        return "unsigned"
    return f"its signature is not valid ({exc.reason}): {exc}"


def _examine_entry_point(ep: EntryPoint) -> DiscoveredPlugin:
    dist = getattr(ep.dist, "name", None) if ep.dist is not None else None
    source = f"entry point {ep.name} = {ep.value}" + (f" (distribution {dist})" if dist else "")
    plugin_id = _id_or_none(ep.name)
    if plugin_id is None:
        return _error(
            None,
            source,
            "entry_point",
            "entry_point",
            f"entry point name {ep.name!r} is not a valid plugin id; name it after the plugin's id",
        )
    return DiscoveredPlugin(
        plugin_id=plugin_id,
        source=source,
        kind="entry_point",
        trust_level=None,
        decision="in-process: installed distribution; imported when added, must say builtin or trusted",
        entry_point=ep,
    )


def _ep_key(ep: EntryPoint) -> tuple[str, str]:
    return ep.name, ep.value


def _id_or_none(name: str) -> str | None:
    try:
        validate_plugin_id(name)
    except (ValueError, InvalidPluginError):
        return None
    return name


def _error(
    plugin_id: str | None,
    source: str,
    kind: Literal["folder", "entry_point", "path"],
    error_kind: ErrorKind,
    message: str,
    *,
    manifest: Manifest | None = None,
    priority: int = 0,
) -> DiscoveredPlugin:
    verdict = "rejected" if error_kind in ("signature", "integrity", "host_version") else "error"
    return DiscoveredPlugin(
        plugin_id=plugin_id,
        source=source,
        kind=kind,
        trust_level=None,
        decision=f"{verdict}: {message}",
        priority=manifest.priority if manifest is not None else priority,
        manifest=manifest,
        error=message,
        error_kind=error_kind,
    )


class Discovery:
    """Discovery with a cache: the first :meth:`get_result` scans, later ones return the same result until
    :meth:`rescan`. Thread-safe (one scan at a time)."""

    def __init__(
        self,
        paths: Sequence[str | Path] = (),
        *,
        entry_point_group: str = DEFAULT_ENTRY_POINT_GROUP,
        use_entry_points: bool = True,
        trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
        unsigned_trusted: str = "reject",
        host_version: str | None = None,
    ) -> None:
        self._scan: Callable[[], DiscoveryResult] = lambda: discover(
            paths,
            entry_point_group=entry_point_group,
            use_entry_points=use_entry_points,
            trusted_keys=trusted_keys,
            unsigned_trusted=unsigned_trusted,
            host_version=host_version,
        )
        self._lock = threading.Lock()
        self._result: DiscoveryResult | None = None

    @classmethod
    def from_config(cls, config: Config, *, host_version: str | None = None) -> Discovery:
        """A Discovery of ``config.discovery`` under ``config.trust``. Blocks to read the trusted key files;
        raises what load_trusted_keys raises for a missing or bad key (a configuration mistake)."""
        keys = load_trusted_keys([Path(p) for p in config.trust.trusted_keys]) if config.trust.trusted_keys else {}
        return cls(
            config.discovery.paths,
            entry_point_group=config.discovery.entry_point_group,
            use_entry_points=config.discovery.use_entry_points,
            trusted_keys=keys,
            unsigned_trusted=config.trust.unsigned_trusted,
            host_version=host_version,
        )

    def get_result(self) -> DiscoveryResult:
        """The cached result, scanning first if there is none yet. Blocks only for that first scan."""
        result = self._result
        if result is not None:
            return result
        with self._lock:
            if self._result is None:
                self._result = self._scan()
            return self._result

    @property
    def is_cached(self) -> bool:
        """Whether a result is cached."""
        return self._result is not None

    def rescan(self) -> RescanReport:
        """Scan again, replace the cached result and report what changed since the previous one. Blocks.

        With no previous result every plugin counts as added. Safe to call any number of times.
        """
        with self._lock:
            before = self._result
            after = self._scan()
            self._result = after
        return compare_results(before, after)


def compare_results(before: DiscoveryResult | None, after: DiscoveryResult) -> RescanReport:
    """What was added, changed (content hash or source differs) and removed between two results. Pure."""
    old = {p.plugin_id: p for p in (before.plugins if before else ()) if p.plugin_id}
    new = {p.plugin_id: p for p in after.plugins if p.plugin_id}
    changed = [pid for pid in old.keys() & new.keys() if _fingerprint(old[pid]) != _fingerprint(new[pid])]
    return RescanReport(
        added=tuple(sorted(new.keys() - old.keys())),
        changed=tuple(sorted(changed)),
        removed=tuple(sorted(old.keys() - new.keys())),
        result=after,
    )


def _fingerprint(plugin: DiscoveredPlugin) -> tuple[Any, ...]:
    digest = plugin.content_hash.digest if plugin.content_hash is not None else None
    return plugin.source, digest, plugin.trust_level


def format_discovery_report(results: DiscoveryResult | Iterable[DiscoveredPlugin]) -> str:
    """A plain-text table of what would load, at which trust level, and why anything would not (for
    ``plugin-pool discover``). Pure."""
    if isinstance(results, DiscoveryResult):
        rows = [*results.plugins, *results.errors]
        skipped = results.skipped_paths
    else:
        rows = list(results)
        skipped = ()
    lines = []
    loads = [r for r in rows if r.ok]
    fails = [r for r in rows if not r.ok]
    lines.append(f"{len(loads)} plugin(s) would load, {len(fails)} would not, {len(skipped)} path(s) skipped")
    for row in loads:
        level = row.trust_level.value if row.trust_level else "in-process"
        digest = f"  {row.content_hash.digest[:23]}" if row.content_hash else ""
        lines.append(f"  load  {row.plugin_id:<32} {level:<10} prio {row.priority:<4} {row.source}{digest}")
        lines.append(f"        {row.decision}")
    for row in fails:
        lines.append(f"  FAIL  {row.plugin_id or '?':<32} {row.source}")
        lines.append(f"        {row.decision}")
    for path in skipped:
        lines.append(f"  SKIP  {path}: does not exist or is not a folder")
    return "\n".join(lines) + "\n"
