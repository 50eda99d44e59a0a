"""Discovery: which plugins the configured folders and entry points offer, at which trust level, and why not.

Sources, in this order (the first plugin with an id wins; later ones with the same id are duplicates):

1. every folder of ``[discovery] paths``, in the order given: a folder that holds a ``plugin.toml`` is one
   plugin, otherwise each of its subfolders (sorted by name; hidden ones and ``__pycache__`` skipped) that
   holds one is a plugin. A path that does not exist is skipped, logged and reported.
2. the entry points of the group ``[discovery] entry_point_group`` (sorted by name), when
   ``use_entry_points`` is on: installed distributions providing BuiltIn or Trusted plugins.

**Each folder is judged alone**: whatever one folder holds (an invalid id, a manifest that is not UTF-8,
a symlink, a fifo, more bytes than ``[discovery] max_plugin_bytes``), it is rejected with its path and
the reason and the scan goes on; ``discover`` raises only for a bad argument.

A folder is read as data only: its manifest is parsed and its files are hashed (plugin_pool.content, under
the ``[discovery]`` limits), nothing in it is imported here. Its trust level is decided here:
``untrusted`` as declared; ``trusted`` only with a valid Ed25519 signature by a configured key over the
manifest and the content hash (otherwise rejected, or downgraded to Untrusted when ``[trust]
unsigned_trusted = "downgrade"``; never upgraded); ``builtin`` is refused.

**Entry points are installed code, so they run with in-process trust**, and importing one runs its code
in the host. So the decision is made before any import, from the installed metadata alone: an entry point
is offered only when its distribution is listed in ``[discovery] entry_point_distributions`` (``"*"``:
any); any other is refused and reported, never imported. The host imports an offered one when it adds it
and fails it (without routing to it) unless the object says BuiltIn or Trusted.

The result is ordered deterministically: priority (higher first), then id. :class:`Discovery` caches it
until :meth:`Discovery.rescan`, which reports what was added, changed (content hash differs) and removed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from plugin_pool.content import ContentHash, FolderLimits, compute_content_hash
from plugin_pool.errors import (
    ContentHashMismatchError,
    IntegrityError,
    IntegrityRejectedError,
    PluginPoolError,
    SignatureError,
    TrustViolationError,
)
from plugin_pool.integrity import load_trusted_keys, verify_plugin
from plugin_pool.manifest import MANIFEST_NAME, Manifest, ManifestError, check_host_version, read_manifest
from plugin_pool.model import TrustLevel, is_valid_plugin_id
from plugin_pool.trust import TrustSource, decide_trust_level

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from plugin_pool.config import Config

__all__ = [
    "ANY_DISTRIBUTION",
    "DEFAULT_ENTRY_POINT_GROUP",
    "ContentHashMismatchError",
    "DiscoveredPlugin",
    "Discovery",
    "DiscoveryResult",
    "RescanReport",
    "check_content_hash",
    "compare_results",
    "discover",
    "examine_folder",
    "format_discovery_report",
    "printable",
]

_log = logging.getLogger("plugin_pool.discovery")

DEFAULT_ENTRY_POINT_GROUP = "plugin_pool.plugins"
ANY_DISTRIBUTION = "*"
"""In ``entry_point_distributions``: entry points of every installed distribution may load."""

ErrorKind = Literal[
    "manifest", "signature", "integrity", "host_version", "duplicate", "entry_point", "missing_path", "path"
]
"""Why a candidate was not accepted: a bad manifest, a rejected signature, a content problem (a symlink,
a special file, bytecode, a limit passed, an unreadable file: ``integrity_kind`` says which), an
unsupported host version, an id seen before (audited as ``duplicate_rejected``), an entry point that may
not load (bad name, distribution not allowed), a configured path that does not exist, or one that cannot
be listed."""


def check_content_hash(
    plugin_id: str,
    directory: Path,
    expected: ContentHash,
    *,
    shown: Path | None = None,
    limits: FolderLimits | None = None,
) -> ContentHash:
    """Hash ``directory`` and raise ContentHashMismatchError unless it matches ``expected``. Blocks to read
    the files; safe to call any number of times. Returns the fresh hash. ``shown`` is the folder the error
    names (the original folder when ``directory`` is a private copy of it). Superseded for staging by
    :func:`plugin_pool.staging.stage_plugin`, which copies and hashes in one pass."""
    actual = compute_content_hash(directory, limits=limits, plugin_id=plugin_id)
    if actual.digest != expected.digest:
        raise ContentHashMismatchError(plugin_id, shown or directory, expected, actual)
    return actual


@dataclass(frozen=True, slots=True)
class DiscoveredPlugin:
    """One candidate discovery found: a plugin it would add, or one it would not and why (``error``)."""

    plugin_id: str | None
    """The plugin's id (None when no valid id could be read: the folder is then named by ``source``)."""
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
    integrity_kind: str | None = None
    """For ``error_kind`` ``integrity`` and ``signature``: the error's ``kind`` (one of REJECTION_KINDS, or
    ``signature``), the label the host counts in ``plugin_integrity_rejections_total{kind}``."""
    duplicate_of: str | None = None
    """For ``error_kind`` ``duplicate``: the source that has the id (this one is the rejected one)."""
    cause: BaseException | None = field(default=None, repr=False, compare=False)
    """The error behind a refusal, when there was one (a ManifestError, an IntegrityError): what a caller
    that adds one folder by hand raises."""
    rejection: Mapping[str, str] | None = None
    """For a content rejection (``error_kind`` ``integrity`` with an IntegrityRejectedError): ``kind``,
    ``file``, ``folder``, ``reason`` and ``fix``, what the host audits as ``integrity_rejected``."""

    @property
    def ok(self) -> bool:
        """Whether the host would add this plugin."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    """What one scan found: ``plugins`` (priority then id) and ``errors`` / ``skipped_paths`` (scan order).

    ``errors`` holds every rejected candidate, a folder without a valid id included (``plugin_id`` None,
    named by ``source``); :attr:`duplicates` and :attr:`rejected` split it for the host's audit.
    """

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

    @property
    def duplicates(self) -> tuple[DiscoveredPlugin, ...]:
        """Candidates refused because an earlier source has their id (``duplicate_of`` names it). Pure."""
        return tuple(e for e in self.errors if e.error_kind == "duplicate")

    @property
    def rejected(self) -> tuple[DiscoveredPlugin, ...]:
        """Every other refused candidate, with its source and reason (ids may be None). Pure."""
        return tuple(e for e in self.errors if e.error_kind != "duplicate")


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
    entry_point_distributions: Iterable[str] = (),
    trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
    unsigned_trusted: str = "reject",
    host_version: str | None = None,
    limits: FolderLimits | None = None,
) -> DiscoveryResult:
    """Scan ``paths`` and the entry points once and return what would load. Blocks to read and hash files.

    Imports nothing from any plugin, folder or entry point. Never raises for a bad plugin, folder or
    path: each is reported in ``errors`` or ``skipped_paths`` and the scan goes on (raises ValueError
    only for a bad ``unsigned_trusted``). Safe to call any number of times (no caching: see
    :class:`Discovery`). ``host_version`` defaults to ``plugin_pool.__version__``; ``limits`` to the
    defaults of ``[discovery]``; ``entry_point_distributions`` to none (no entry point loads).
    """
    if unsigned_trusted not in ("reject", "downgrade"):
        raise ValueError(f"unsigned_trusted = {unsigned_trusted!r} is invalid: expected 'reject' or 'downgrade'")
    if host_version is None:
        from plugin_pool import __version__

        host_version = __version__
    keys = dict(trusted_keys or {})
    folder_limits = limits or FolderLimits()
    allowed = frozenset(_normalize(name) for name in entry_point_distributions)
    found: list[DiscoveredPlugin] = []
    skipped: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not os.path.isdir(path):  # never raises (Path.is_dir raises for EACCES)
            _log.warning(
                "discovery path skipped: %s does not exist or is not a folder",
                path,
                extra={"event": "discovery_path_skipped", "pluginId": None, "trustLevel": None, "path": str(path)},
            )
            skipped.append(str(path))
            continue
        try:
            folders = _plugin_folders(path)
        except OSError as exc:
            found.append(_error(None, str(path), "path", "path", f"cannot list this folder ({exc.strerror})"))
            continue
        for folder in folders:
            found.append(_judge_folder(folder, keys, unsigned_trusted, str(host_version), folder_limits))
    if use_entry_points:
        found.extend(
            _examine_entry_point(ep, allowed) for ep in sorted(entry_points(group=entry_point_group), key=_ep_key)
        )
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
                duplicate_of=first.source,
            )
        if candidate.ok:
            assert candidate.plugin_id is not None
            accepted[candidate.plugin_id] = candidate
            _log.info("discovery: %s: %s", candidate.source, candidate.decision, extra=_log_fields(candidate))
        else:
            _log.warning("discovery: %s: %s", candidate.source, candidate.error, extra=_log_fields(candidate))
            errors.append(candidate)
    ordered = sorted(accepted.values(), key=lambda p: (-p.priority, p.plugin_id or ""))
    return DiscoveryResult(plugins=tuple(ordered), errors=tuple(errors), skipped_paths=tuple(skipped))


def _log_fields(candidate: DiscoveredPlugin) -> dict[str, str | None]:
    """The seed's log fields of one discovery decision: ``event``, ``pluginId`` (None when no valid id could be
    read), ``trustLevel`` (decided, else declared by the manifest, else None) and the source."""
    level = candidate.trust_level or (candidate.manifest.info.trust_level if candidate.manifest else None)
    if candidate.ok:
        event = "plugin_discovered"
    else:
        event = "duplicate_rejected" if candidate.error_kind == "duplicate" else "discovery_rejected"
    return {
        "event": event,
        "pluginId": candidate.plugin_id,
        "trustLevel": level.value if level is not None else None,
        "source": candidate.source,
    }


def _plugin_folders(path: Path) -> list[Path]:
    """The plugin folders of one configured path. A folder counts when anything is named plugin.toml in it
    (a symlink or a fifo there is then rejected with its reason, not silently passed over)."""
    if os.path.lexists(path / MANIFEST_NAME):
        return [path]
    folders = []
    for child in sorted(path.iterdir()):
        if child.name.startswith((".", "__")):
            continue
        try:
            if child.is_dir() and os.path.lexists(child / MANIFEST_NAME):
                folders.append(child)
        except OSError as exc:
            _log.warning(
                "discovery: %s skipped: cannot be read (%s)",
                child,
                exc.strerror,
                extra={"event": "discovery_unreadable", "pluginId": None, "trustLevel": None, "path": str(child)},
            )
            folders.append(child)  # judged (and rejected with the reason) like any other folder
    return folders


def examine_folder(
    folder: str | Path,
    *,
    trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
    unsigned_trusted: str = "reject",
    host_version: str | None = None,
    limits: FolderLimits | None = None,
) -> DiscoveredPlugin:
    """Judge one plugin folder as discovery does: manifest, host version, hash, signature, trust decision.

    Never raises for what the folder holds: a refusal is a DiscoveredPlugin with ``error`` set. Imports
    nothing from it. Blocks to read and hash its files; safe to call any number of times. Used for folders
    named one by one (``[plugins.<id>] path``, ``host.add_plugin_dir``), so they follow the same rule as
    those found under ``[discovery] paths``.
    """
    if host_version is None:
        from plugin_pool import __version__

        host_version = __version__
    return _judge_folder(
        Path(folder), dict(trusted_keys or {}), unsigned_trusted, host_version, limits or FolderLimits()
    )


def _judge_folder(
    folder: Path, keys: Mapping[str, Ed25519PublicKey], unsigned_trusted: str, host_version: str, limits: FolderLimits
) -> DiscoveredPlugin:
    """Examine one folder; whatever it holds ends as a DiscoveredPlugin, never as an exception."""
    try:
        return _examine_folder(folder, keys, unsigned_trusted, host_version, limits)
    except (PluginPoolError, OSError, ValueError, RecursionError) as exc:
        # Every expected problem is handled in _examine_folder; this is the guarantee that one folder
        # cannot stop the scan, whatever it holds.
        _log.exception(
            "discovery: unexpected error examining %s",
            folder,
            extra={"event": "discovery_error", "pluginId": None, "trustLevel": None, "path": str(folder)},
        )
        return _error(
            _valid_id(getattr(exc, "plugin_id", None)) or _valid_id(folder.name),
            str(folder),
            "folder",
            "integrity",
            f"cannot examine this folder ({type(exc).__name__}: {exc}); check its files and permissions",
            cause=exc,
        )


def _examine_folder(
    folder: Path, keys: Mapping[str, Ed25519PublicKey], unsigned_trusted: str, host_version: str, limits: FolderLimits
) -> DiscoveredPlugin:
    source = str(folder)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        return _error(
            _valid_id(exc.plugin_id) or _valid_id(folder.name), source, "folder", "manifest", str(exc), cause=exc
        )
    info = manifest.info
    unsupported = check_host_version(manifest, host_version)
    if unsupported is not None:
        return _error(info.id, source, "folder", "host_version", unsupported, manifest=manifest)
    key_id: str | None = None
    problem: str | None = None
    directory = manifest.directory  # resolved once: the folder hashed here is the one staged later
    content_hash: ContentHash | None = None
    try:
        if info.trust_level is TrustLevel.TRUSTED:
            try:
                key_id, content_hash = verify_plugin(directory, keys, limits=limits, plugin_id=info.id)
            except SignatureError as exc:
                problem = _signature_problem(exc)
        try:
            decision = decide_trust_level(
                info.id,
                TrustSource.FOLDER,
                claimed=info.trust_level,
                signed_by=key_id,
                signature_problem=problem,
                unsigned_trusted=unsigned_trusted,
            )
        except TrustViolationError as exc:
            return _error(
                info.id, source, "folder", "signature", str(exc), manifest=manifest, integrity_kind="signature"
            )
        if content_hash is None:
            content_hash = compute_content_hash(directory, limits=limits, plugin_id=info.id)
    except IntegrityError as exc:
        return _error(
            info.id,
            source,
            "folder",
            "integrity",
            str(exc),
            manifest=manifest,
            integrity_kind=exc.kind,
            rejection=_rejection_details(exc),
            cause=exc,
        )
    return DiscoveredPlugin(
        plugin_id=info.id,
        source=source,
        kind="folder",
        trust_level=decision.level,
        decision=decision.reason,
        priority=manifest.priority,
        manifest=manifest,
        content_hash=content_hash,
        key_id=key_id,
    )


def _rejection_details(exc: IntegrityError) -> Mapping[str, str] | None:
    if not isinstance(exc, IntegrityRejectedError):
        return None
    return {
        "kind": exc.kind,
        "file": printable(exc.file),
        "folder": printable(str(exc.folder)),
        "reason": printable(exc.reason),
        "fix": exc.fix,
    }


def _signature_problem(exc: SignatureError) -> str:
    if exc.reason == "unsigned":
        return "unsigned"
    return f"its signature is not valid ({exc.reason}): {exc}"


def _normalize(distribution: str) -> str:
    """A distribution name as PEP 503 compares them (``Demo_Plugins`` is ``demo-plugins``). Pure."""
    return distribution if distribution == ANY_DISTRIBUTION else re.sub(r"[-_.]+", "-", distribution).lower()


def _examine_entry_point(ep: EntryPoint, allowed: frozenset[str]) -> DiscoveredPlugin:
    """Judge an entry point from the installed metadata alone: it is never imported here."""
    dist = getattr(ep.dist, "name", None) if ep.dist is not None else None
    source = f"entry point {ep.name} = {ep.value}" + (f" (distribution {dist})" if dist else "")
    plugin_id = _valid_id(ep.name)
    if plugin_id is None:
        return _error(
            None,
            source,
            "entry_point",
            "entry_point",
            f"entry point name {ep.name!r} is not a valid plugin id; name it after the plugin's id",
        )
    if ANY_DISTRIBUTION not in allowed and (dist is None or _normalize(dist) not in allowed):
        return _error(
            plugin_id,
            source,
            "entry_point",
            "entry_point",
            f"refused without importing it: an entry point runs in the host process, and distribution "
            f"{dist or '(unknown)'!r} is not in [discovery] entry_point_distributions; list it there if you "
            f"trust its code in-process, or ship the plugin as an Untrusted plugin folder",
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


def _valid_id(name: object) -> str | None:
    return name if isinstance(name, str) and is_valid_plugin_id(name) else None


def _error(
    plugin_id: str | None,
    source: str,
    kind: Literal["folder", "entry_point", "path"],
    error_kind: ErrorKind,
    message: str,
    *,
    manifest: Manifest | None = None,
    priority: int = 0,
    integrity_kind: str | None = None,
    duplicate_of: str | None = None,
    rejection: Mapping[str, str] | None = None,
    cause: BaseException | None = None,
) -> DiscoveredPlugin:
    verdict = "rejected" if error_kind in ("signature", "integrity", "host_version", "entry_point") else "error"
    return DiscoveredPlugin(
        plugin_id=_valid_id(plugin_id),
        source=source,
        kind=kind,
        trust_level=None,
        decision=f"{verdict}: {message}",
        priority=manifest.priority if manifest is not None else priority,
        manifest=manifest,
        error=message,
        error_kind=error_kind,
        integrity_kind=integrity_kind,
        duplicate_of=duplicate_of,
        rejection=rejection,
        cause=cause,
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
        entry_point_distributions: Iterable[str] = (),
        trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
        unsigned_trusted: str = "reject",
        host_version: str | None = None,
        limits: FolderLimits | None = None,
    ) -> None:
        distributions = tuple(entry_point_distributions)
        self.limits = limits or FolderLimits()
        """The folder limits this discovery hashes under (the host stages under the same)."""
        self._keys = dict(trusted_keys or {})
        self._unsigned_trusted = unsigned_trusted
        self._host_version = host_version
        self._scan: Callable[[], DiscoveryResult] = lambda: discover(
            paths,
            entry_point_group=entry_point_group,
            use_entry_points=use_entry_points,
            entry_point_distributions=distributions,
            trusted_keys=trusted_keys,
            unsigned_trusted=unsigned_trusted,
            host_version=host_version,
            limits=self.limits,
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
            entry_point_distributions=config.discovery.entry_point_distributions,
            trusted_keys=keys,
            unsigned_trusted=config.trust.unsigned_trusted,
            host_version=host_version,
            limits=FolderLimits.from_config(config.discovery),
        )

    def examine_folder(self, folder: str | Path) -> DiscoveredPlugin:
        """Judge one folder under this discovery's keys, policy and limits (see :func:`examine_folder`).

        Not cached and not part of :meth:`get_result`. Blocks to read and hash the folder."""
        return examine_folder(
            folder,
            trusted_keys=self._keys,
            unsigned_trusted=self._unsigned_trusted,
            host_version=self._host_version,
            limits=self.limits,
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
    ``plugin-pool discover``): every rejected folder with its path and reason, every duplicate with both
    sources. Control characters from folder names and manifests are shown escaped, so a crafted name
    cannot forge lines of the report. Pure."""
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
        lines.append(f"  load  {row.plugin_id:<32} {level:<10} prio {row.priority:<4} {printable(row.source)}{digest}")
        lines.append(f"        {printable(row.decision)}")
    for row in fails:
        label = "DUPLICATE" if row.error_kind == "duplicate" else "FAIL"
        kind = row.error_kind + (f"/{row.integrity_kind}" if row.integrity_kind else "") if row.error_kind else ""
        lines.append(f"  {label}  {row.plugin_id or '-':<32} {printable(row.source)}")
        if row.duplicate_of is not None:
            lines.append(f"        duplicate_rejected: the id belongs to {printable(row.duplicate_of)}")
        lines.append(f"        [{kind}] {printable(row.decision)}")
    for path in skipped:
        lines.append(f"  SKIP  {printable(path)}: does not exist or is not a folder")
    return "\n".join(lines) + "\n"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), surrogates from undecodable names too.

    What a folder name or a manifest value becomes before it reaches a report line, a log record or an
    audit event (no forged lines, valid UTF-8 and JSON). Pure."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
