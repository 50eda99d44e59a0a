"""Configuration: one frozen dataclass per component, loaded from arguments, environment, a TOML file, defaults.

Precedence, highest first: explicit overrides passed in code, ``PLUGIN_POOL_<SECTION>_<KEY>`` variables
(from the mapping the caller passes; no module below the CLI reads ``os.environ``), the TOML file, the
defaults below. Every field documents its unit, default and variable in its metadata; validation names
the key and the file or variable it came from.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from plugin_pool._bounds import check_pool_size, resolve_pool_size
from plugin_pool.errors import ConfigError
from plugin_pool.model import validate_plugin_id

__all__ = [
    "Config",
    "DiscoveryConfig",
    "HostConfig",
    "LifecycleConfig",
    "PluginSettings",
    "RegistryConfig",
    "SandboxConfig",
    "TrustConfig",
    "WorkloadConfig",
    "check_pool_size",
    "load_config",
    "parse_uid_range",
    "resolve_pool_size",
    "validate_host_id",
]

ENV_PREFIX = "PLUGIN_POOL_"

HOST_ID_MAX_LEN = 64
_HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_host_id(value: object) -> str:
    """Return ``value`` if it is a valid host id (``[host] id``), else raise ValueError saying the rule.

    Pure; the registry checks ids with this too, so the rule lives here only.
    """
    if not isinstance(value, str) or not _HOST_ID_RE.fullmatch(value):
        raise ValueError(
            f"host id {value!r:.80} is invalid: use 1-{HOST_ID_MAX_LEN} characters, a letter or digit first, "
            f"then letters, digits, '.', '_' or '-' (for example 'scanner-2')"
        )
    return value


_LIST_KIND = "tuple[str, ...]"
"""The annotation of list settings: a TOML array of strings, or one os.pathsep- or comma-separated variable."""
_LIST_SPLIT = re.compile(f"[,{re.escape(os.pathsep)}]")


def _setting(
    default: Any,
    doc: str,
    *,
    unit: str = "",
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    check: Callable[[Any], Any] | None = None,
) -> Any:
    metadata = {"doc": doc, "unit": unit, "minimum": minimum, "choices": choices, "check": check}
    if isinstance(default, Mapping):
        frozen = MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Settings of the host itself (TOML section ``[host]``)."""

    actor: str = _setting("plugin-pool", "identity recorded as the actor of the host's audit events")
    id: str | None = _setting(
        None,
        "this host's identity in a shared registry: its row in the hosts table, its plugin instances, the host "
        "of its audit events; unset: the machine's hostname plus a suffix unique to this start of the host "
        "(e.g. 'scanner-2-3f9a1c'); a fixed id must be unique among running hosts",
        check=validate_host_id,
    )
    monitor_builtin: bool = _setting(
        False, "route BuiltIn calls made by id through the monitoring wrapper (counts and times them)"
    )
    call_timeout_s: float = _setting(
        30.0,
        "deadline of one call where the host can enforce it (async and sandboxed plugins)",
        unit="s",
        minimum=0.001,
    )
    submit_threads: int = _setting(
        4,
        "threads that run calls submitted to Trusted plugins (host.submit, plugin_pool.aio); BuiltIn calls "
        "run inline and Untrusted ones on their plugin's dispatcher",
        unit="threads",
        minimum=1,
    )


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """Timeouts of the lifecycle steps (TOML section ``[lifecycle]``)."""

    initialize_timeout_s: float = _setting(5.0, "time a plugin's initialize(context) may take", unit="s", minimum=0.001)
    start_timeout_s: float = _setting(5.0, "time a plugin's start() may take", unit="s", minimum=0.001)
    stop_timeout_s: float = _setting(5.0, "time a plugin's stop() may take", unit="s", minimum=0.001)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """The worker pool for Untrusted plugins (TOML section ``[sandbox]``)."""

    min_workers: int = _setting(1, "workers each Untrusted plugin keeps running", unit="workers", minimum=1)
    max_workers: int = _setting(2, "workers one Untrusted plugin may grow to under load", unit="workers", minimum=1)
    max_total_workers: int = _setting(16, "workers of all Untrusted plugins together", unit="workers", minimum=1)
    queue_limit: int = _setting(
        256,
        "calls that may wait for a busy plugin's worker before callers get PoolOverloadedError",
        unit="calls",
        minimum=0,
    )
    spare_workers: int = _setting(
        1,
        "warm spares each Untrusted plugin keeps booted, confined, initialized and started beside its serving "
        "workers: one takes a crashed, timed-out or recycled worker's place at once (and grows the pool at "
        "once); counted in max_total_workers, but a spare gives way to another plugin's serving worker",
        unit="workers",
        minimum=0,
    )
    max_batch: int = _setting(
        16,
        "calls waiting for a busy plugin that the next free worker takes in one frame (dynamic batching; "
        "1 turns it off); a call that finds an idle worker always goes at once, alone",
        unit="calls",
        minimum=1,
    )
    batch_wait_us: int = _setting(
        0,
        "how long a call that had to wait may wait more, once it has a worker, for other calls to ride with "
        "it (0: no window, no added latency)",
        unit="µs",
        minimum=0,
    )
    on_crash: str = _setting(
        "isolate",
        "what a batch of calls gets when its worker dies: 'isolate' runs every call of it once more, alone, so "
        "only the call that kills its worker fails (a call then runs at most twice: plugins must be "
        "idempotent); 'fail' gives every call of the batch the crash error",
        choices=("isolate", "fail"),
    )
    chunk_mb: float = _setting(
        1.0,
        "target size of one chunk of invoke_many: large items go in smaller chunks, spread over the workers",
        unit="MiB",
        minimum=0.001,
    )
    worker_threads: int = _setting(
        4,
        "gRPC server threads in each worker (its call stream, its callbacks stream and each lifecycle call hold "
        "one; calls run one at a time)",
        unit="threads",
        minimum=3,
    )
    max_message_mb: float = _setting(
        16.0, "largest payload or reply that crosses the sandbox boundary", unit="MiB", minimum=0.001
    )
    boot_timeout_s: float = _setting(10.0, "time a worker may take from fork to serving", unit="s", minimum=0.1)
    cpu_time_s: int = _setting(300, "RLIMIT_CPU of a worker: CPU seconds over its whole life", unit="s", minimum=1)
    memory_mb: int = _setting(
        512,
        "memory of a worker: RLIMIT_DATA (RLIMIT_AS misfires with gRPC's reservations) and the limit of its memory "
        "cgroup, which also counts shared mappings, memfd and its /tmp",
        unit="MiB",
        minimum=256,
    )
    open_files: int = _setting(256, "RLIMIT_NOFILE of a worker", unit="files", minimum=16)
    file_size_mb: int = _setting(64, "RLIMIT_FSIZE of a worker: largest file it may write", unit="MiB", minimum=1)
    worker_user: str = _setting(
        "auto",
        "identity of the workers: 'auto' (a root host gives each worker its own uid and gid from uid_range; "
        "an unprivileged host uses a user namespace) or 'userns' (a user namespace, also on a root host, "
        "still with one uid from uid_range per worker outside it when the host is root)",
        choices=("auto", "userns"),
    )
    uid_range: str = _setting(
        "1879048192-1879113727",
        "'first-last' uids (and gids) handed out one per worker, released when it exits; no user or other "
        "process of the machine may use them (the default, 0x70000000 + 64 Ki, is outside every range "
        "distributions and systemd allocate)",
    )
    runtime_dir: str = _setting(
        "auto",
        "where the pool keeps its private directory (sockets, staged plugins, uid locks): 'auto' is "
        "/run/plugin-pool for a root host, else the system temp dir; socket paths do not grow with plugin ids",
    )
    tmp_size_mb: int = _setting(
        64, "size of each worker's private /tmp (a tmpfs, counted in its memory cgroup)", unit="MiB", minimum=1
    )
    tmp_max_files: int = _setting(4096, "files and directories each worker's /tmp may hold", unit="inodes", minimum=16)
    max_threads: int = _setting(
        128,
        "threads (and processes) one worker may have: its cgroup's pids.max and RLIMIT_NPROC of its own uid",
        unit="threads",
        minimum=16,
    )
    cpu_quota: float = _setting(
        1.0, "CPU share of one worker in its cgroup (1.0 = one CPU); 0 leaves it unbounded", unit="CPUs", minimum=0
    )
    idle_cpu_limit: float = _setting(
        0.5,
        "CPU share a worker may burn while no call is in flight before it is replaced (counted as 'cpu', "
        "toward the crash loop); 0 turns the watch off",
        unit="CPUs",
        minimum=0,
    )
    required_layers: str = _setting(
        "available",
        "confinement the pool refuses to run below: 'available' (every layer this kernel "
        "offers), 'none', or a comma-separated list of layer names",
    )
    recycle_after_calls: int = _setting(100_000, "calls after which a worker is replaced", unit="calls", minimum=1)
    recycle_after_s: float = _setting(3600.0, "age after which a worker is replaced", unit="s", minimum=1)
    recycle_memory_growth_mb: float = _setting(
        200.0,
        "growth of a worker's resident memory since boot after which it is replaced",
        unit="MiB",
        minimum=1,
    )
    recycle_jitter: float = _setting(0.1, "random spread applied to the recycle limits", unit="fraction", minimum=0)
    max_concurrent_recycles: int = _setting(
        1, "workers of one plugin that may be recycling at once", unit="workers", minimum=1
    )
    crash_limit: int = _setting(
        5, "crashes within crash_window_s after which the plugin goes to Failed", unit="crashes", minimum=1
    )
    crash_window_s: float = _setting(30.0, "window in which crashes are counted", unit="s", minimum=0.1)
    restart_backoff_s: float = _setting(
        0.05, "first delay before replacing a crashed worker; it doubles with each recent crash", unit="s", minimum=0
    )
    restart_backoff_max_s: float = _setting(5.0, "longest delay before replacing a crashed worker", unit="s", minimum=0)
    extra_read_paths: tuple[str, ...] = _setting(
        (),
        "folders (or files) every worker of every Untrusted plugin may read, for a dependency tree the operator "
        "shares between plugins: each is bound read-only into the workers' private root and added to their "
        "Landlock rules. This grants every Untrusted plugin read access to everything below it (secrets "
        "included): prefer dependencies vendored inside the plugin folder (plugin-pool vendor). Relative to "
        "the file; '/' is refused",
        check=lambda paths: _check_read_paths(paths),
    )
    bytecode_cache: str = _setting(
        "auto",
        "where the host keeps the bytecode it compiles from verified plugin sources, keyed by content hash, so "
        "a plugin started again (or by a restarted host) does not compile again: 'auto' (a folder "
        "'bytecode-<uid>' in runtime_dir), 'off' (compile at every start), or a folder; the folder must be "
        "owned by the host's uid and writable by nobody else, or the cache is not used",
    )


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The workload ``plugin-pool run`` pushes through the plugins (TOML section ``[workload]``)."""

    capability: str = _setting("scan", "capability called on every active plugin that declares it")
    calls: int = _setting(2000, "calls made to each plugin", unit="calls", minimum=1)
    threads: int = _setting(4, "concurrent caller threads", unit="threads", minimum=1)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Where ``host.discover()`` looks for plugins (TOML section ``[discovery]``).

    Relative paths are resolved against the configuration file's folder (as given when there is no file).
    """

    paths: tuple[str, ...] = _setting(
        (),
        "folders holding plugin folders (each with a plugin.toml), scanned in order; a folder that is itself "
        "a plugin folder counts as one plugin",
    )
    entry_point_group: str = _setting(
        "plugin_pool.plugins", "entry-point group of installed distributions that provide BuiltIn/Trusted plugins"
    )
    use_entry_points: bool = _setting(True, "whether discovery also loads plugins advertised by entry points")
    entry_point_distributions: tuple[str, ...] = _setting(
        (),
        "installed distributions whose entry points may load: an entry point is imported into the host "
        "process, so only these run (names as pip lists them; '*' for any); an entry point of any other "
        "distribution is refused and reported without being imported",
    )
    max_plugin_bytes: int = _setting(
        256 * 1024 * 1024,
        "largest total size of one plugin folder's files (256 MiB); a larger folder is rejected at discovery "
        "and when it is copied to start",
        unit="bytes",
        minimum=1024,
    )
    max_file_bytes: int = _setting(
        64 * 1024 * 1024,
        "largest single file in a plugin folder (64 MiB; plugin.toml: at most 1 MiB whatever this says)",
        unit="bytes",
        minimum=1024,
    )
    max_plugin_files: int = _setting(
        20_000,
        "most files and folders in one plugin folder (__pycache__ and .git not counted)",
        unit="entries",
        minimum=1,
    )


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where the plugin catalog and the audit trail live (TOML section ``[registry]``)."""

    backend: str = _setting("memory", "'memory' (this process only) or 'postgres' (shared by several hosts)")
    dsn: str | None = _setting(None, "PostgreSQL connection string, e.g. postgresql://user@db:5432/plugins")
    schema: str = _setting("plugin_pool", "PostgreSQL schema holding the registry's tables")
    pool_min_size: int = _setting(1, "connections the registry keeps open", unit="connections", minimum=1)
    pool_max_size: int = _setting(4, "connections the registry may open", unit="connections", minimum=1)
    timeout_s: float = _setting(5.0, "time to get a connection or run a query", unit="s", minimum=0.1)
    buffer_limit: int = _setting(
        10_000, "audit events and status changes kept while the database is unreachable", unit="writes", minimum=1
    )
    retry_max_s: float = _setting(5.0, "longest wait between reconnection attempts", unit="s", minimum=0.1)
    migrate_on_start: bool = _setting(False, "apply pending schema migrations when the host starts")
    offline_start: bool = _setting(
        False,
        "when PostgreSQL is unreachable as the host starts: false fails with an error naming host and port; "
        "true starts on this host's own view and writes its registrations, status changes and audit events "
        "(up to buffer_limit) once the database is reachable",
    )
    heartbeat_s: float = _setting(
        5.0,
        "how often a host writes its heartbeat (hosts.heartbeat_at), on its own connection: also the round "
        "trip that proves the notification link alive",
        unit="s",
        minimum=0.05,
    )
    missed_heartbeats: int = _setting(
        3,
        "heartbeats a host may miss before it is shown lost; a lost host's plugin instances no longer count "
        "as active and it need not acknowledge disables",
        unit="heartbeats",
        minimum=2,
    )
    resync_s: float = _setting(
        30.0,
        "how often the notification link re-reads every operator's disable/enable it may have missed (it also "
        "does after every reconnect)",
        unit="s",
        minimum=0.1,
    )
    keepalive_s: int = _setting(
        5,
        "TCP keepalive of registry connections: idle time before the first probe and between probes (three "
        "unanswered probes end the connection)",
        unit="s",
        minimum=1,
    )
    tcp_user_timeout_s: float = _setting(
        10.0,
        "TCP_USER_TIMEOUT of registry connections: how long sent data may stay unacknowledged before the "
        "kernel gives the connection up (a database that vanished without a reset)",
        unit="s",
        minimum=1,
    )
    host_retention_s: float = _setting(
        86400.0,
        "how long a closed or lost host (with its instances and acknowledgements) stays in the hosts table "
        "before any live host deletes it",
        unit="s",
        minimum=60,
    )


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Which signatures make a folder plugin Trusted (TOML section ``[trust]``).

    Relative paths are resolved against the configuration file's folder (as given when there is no file).
    """

    trusted_keys: tuple[str, ...] = _setting(
        (), "Ed25519 public key files (or folders of them) whose signatures make a folder plugin Trusted"
    )
    unsigned_trusted: str = _setting(
        "reject",
        "what happens to a folder plugin that claims Trusted without a valid signature by a trusted key: "
        "'reject' (it fails, audited) or 'downgrade' (it runs as Untrusted in the sandbox)",
        choices=("reject", "downgrade"),
    )


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """Per-plugin settings (TOML table ``[plugins.<id>]``). Not overridable from the environment."""

    entry: str | None = _setting(
        None, "where to load an in-process plugin from: 'module:attribute' or 'path/file.py:attribute'"
    )
    path: str | None = _setting(
        None, "folder of an Untrusted plugin (with plugin.toml) to run in the sandbox; relative to the file"
    )
    trust_level: str | None = _setting(
        None,
        "the level the host runs this in-process plugin at, 'builtin' or 'trusted' (plugin_pool.trust): required "
        "with entry; for an entry point (default 'trusted') or an object added in code (default: its info's "
        "level) it decides too; the plugin's own info need not agree, but one that says 'untrusted' is refused",
    )
    enabled: bool = _setting(True, "whether the plugin is loaded at all")
    config: Mapping[str, Any] = _setting({}, "the plugin's own configuration table")
    services: tuple[str, ...] = _setting((), "names of host services the plugin may use")
    min_workers: int | None = _setting(
        None, "sandbox workers this Untrusted plugin keeps running (wins over its manifest's [pool] and [sandbox])"
    )
    max_workers: int | None = _setting(
        None, "sandbox workers this Untrusted plugin may grow to (wins over its manifest's [pool] and [sandbox])"
    )


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a host and the CLI read from one configuration file."""

    host: HostConfig = field(default_factory=HostConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    plugins: Mapping[str, PluginSettings] = field(default_factory=lambda: MappingProxyType({}))
    source: str | None = None
    """The file the configuration was read from, if any (used in error messages)."""


_SECTIONS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "host": HostConfig,
        "lifecycle": LifecycleConfig,
        "sandbox": SandboxConfig,
        "workload": WorkloadConfig,
        "discovery": DiscoveryConfig,
        "trust": TrustConfig,
        "registry": RegistryConfig,
    }
)
_PATH_SETTINGS = (("discovery", "paths"), ("trust", "trusted_keys"), ("sandbox", "extra_read_paths"))


def _check_read_paths(paths: tuple[str, ...]) -> None:
    """``sandbox.extra_read_paths``: never the whole filesystem, never a path with a NUL."""
    for path in paths:
        if "\0" in path:
            raise ValueError(f"{path!r:.80} holds a NUL character")
        if os.path.normpath(path) in {"/", "//"}:
            raise ValueError("'/' would let every Untrusted worker read the whole filesystem; name the folders")


def _field_type(cls: type[Any], name: str) -> str:
    return str(cls.__annotations__[name])


def _coerce(
    value: Any,
    kind: str,
    key: str,
    source: str,
    minimum: float | None,
    choices: tuple[str, ...] = (),
    check: Callable[[Any], Any] | None = None,
) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError naming key and source."""
    converted = _convert(value, kind, key, source, minimum, choices)
    if check is not None:
        try:
            check(converted)
        except ValueError as exc:
            raise ConfigError(f"{key} in {source}: {exc}", key=key, source=source) from None
    return converted


def _convert(value: Any, kind: str, key: str, source: str, minimum: float | None, choices: tuple[str, ...]) -> Any:
    from_env = isinstance(value, str) and source.startswith(ENV_PREFIX)
    try:
        if kind == _LIST_KIND:
            # From a variable: one string split on os.pathsep or commas; an empty variable is refused so a
            # typo cannot silently clear the list (set it in the file or in overrides instead).
            items = [part.strip() for part in _LIST_SPLIT.split(value)] if from_env else value
            if isinstance(items, tuple):
                items = list(items)
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ValueError
            if from_env and not items:
                raise ValueError
            return tuple(items)
        if kind == "bool":
            if from_env:
                low = value.strip().lower()
                if low not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError
                return low in {"1", "true", "yes", "on"}
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in {"int", "float"}:
            if isinstance(value, bool):
                raise ValueError
            number: float = (int(value) if kind == "int" else float(value)) if from_env else value
            if kind == "int" and not isinstance(number, int):
                raise ValueError
            if kind == "float" and isinstance(number, int):
                number = float(number)
            if not isinstance(number, int | float) or not math.isfinite(number):
                raise ValueError
            if minimum is not None and number < minimum:
                raise ConfigError(
                    f"{key} = {value!r} in {source} is too small: the minimum is {minimum:g}",
                    key=key,
                    source=source,
                )
            return number
        if kind == "str" or kind == "str | None":
            if not isinstance(value, str) or not value:
                raise ValueError
            if choices and value not in choices:
                raise ConfigError(
                    f"{key} = {value!r} in {source} is invalid: expected one of {', '.join(choices)}",
                    key=key,
                    source=source,
                )
            return value
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(
            f"{key} = {value!r} in {source} is invalid: expected {_kind_name(kind).replace(' | None', '')}",
            key=key,
            source=source,
        ) from None
    raise ConfigError(f"{key} in {source}: unsupported setting type {kind}", key=key, source=source)


def _kind_name(kind: str) -> str:
    """The type as users write it: list settings are TOML arrays of strings."""
    return "list[str]" if kind == _LIST_KIND else kind


def _build_section(cls: type[Any], table: Mapping[str, Any], section: str, source: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{section}] in {source} must be a table", key=section, source=source)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in known:
            raise ConfigError(
                f"unknown setting {section}.{key} in {source}; known settings: {', '.join(known)}",
                key=f"{section}.{key}",
                source=source,
            )
        f = known[key]
        values[key] = _coerce(
            raw,
            _field_type(cls, key),
            f"{section}.{key}",
            source,
            f.metadata.get("minimum"),
            f.metadata["choices"],
            f.metadata.get("check"),
        )
    return cls(**values)


def _build_plugin(plugin_id: str, table: Any, source: str) -> PluginSettings:
    key = f"plugins.{plugin_id}"
    try:
        validate_plugin_id(plugin_id)
    except ValueError as exc:
        raise ConfigError(f"[{key}] in {source}: {exc}", key=key, source=source) from None
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{key}] in {source} must be a table", key=key, source=source)
    allowed = {f.name for f in fields(PluginSettings)}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(
            f"unknown setting {key}.{sorted(unknown)[0]} in {source}; known settings: {', '.join(sorted(allowed))}",
            key=f"{key}.{sorted(unknown)[0]}",
            source=source,
        )
    entry = table.get("entry")
    if entry is not None and (not isinstance(entry, str) or ":" not in entry):
        raise ConfigError(
            f"{key}.entry = {entry!r} in {source} is invalid: expected 'module:attribute' or 'file.py:attribute'",
            key=f"{key}.entry",
            source=source,
        )
    path = table.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ConfigError(f"{key}.path in {source} must be a folder path", key=f"{key}.path", source=source)
    if path is not None and (entry is not None or "trust_level" in table):
        raise ConfigError(
            f"[{key}] in {source} sets path and also entry or trust_level; a folder plugin's manifest declares "
            f"its own entry and trust level, so set path alone",
            key=f"{key}.path",
            source=source,
        )
    trust_level = table.get("trust_level")
    if (entry is not None or trust_level is not None) and trust_level not in {"builtin", "trusted"}:
        raise ConfigError(
            f"{key}.trust_level = {trust_level!r} in {source} is invalid: a plugin loaded from an entry runs "
            f"in the host process, so it must be 'builtin' or 'trusted' (Untrusted plugins are never imported "
            f"by the host; they run in the sandbox)",
            key=f"{key}.trust_level",
            source=source,
        )
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled in {source} must be true or false", key=f"{key}.enabled", source=source)
    config = table.get("config", {})
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key}.config in {source} must be a table", key=f"{key}.config", source=source)
    services = table.get("services", [])
    if not isinstance(services, list) or not all(isinstance(s, str) and s for s in services):
        raise ConfigError(
            f"{key}.services in {source} must be a list of service names", key=f"{key}.services", source=source
        )
    sizes: dict[str, int | None] = {}
    for name in ("min_workers", "max_workers"):
        value = table.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(
                f"{key}.{name} = {value!r} in {source} is invalid: expected a whole number of workers, at least 1",
                key=f"{key}.{name}",
                source=source,
            )
        sizes[name] = value
    if sizes["min_workers"] is not None and sizes["max_workers"] is not None:
        check_pool_size(sizes["min_workers"], sizes["max_workers"], where=key, source=source)
    return PluginSettings(
        min_workers=sizes["min_workers"],
        max_workers=sizes["max_workers"],
        entry=entry,
        path=path,
        trust_level=trust_level,
        enabled=enabled,
        config=MappingProxyType(dict(config)),
        services=tuple(services),
    )


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load a :class:`Config`. Blocks only to read the file; safe to call any number of times.

    ``env`` is a mapping such as ``os.environ`` (only the CLI passes the real one); ``overrides`` maps
    section to settings, e.g. ``{"lifecycle": {"start_timeout_s": 2.0}}``, and wins over everything.
    Relative plugin entry paths, ``discovery.paths`` and ``trust.trusted_keys`` are resolved against the
    file's directory (``base / p`` leaves absolute paths as they are).
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        file = Path(path)
        source = str(file)
        try:
            with file.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {source} does not exist", source=source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {source} is not valid TOML: {exc}", source=source) from None
    unknown = set(data) - set(_SECTIONS) - {"plugins"}
    if unknown:
        raise ConfigError(
            f"unknown section [{sorted(unknown)[0]}] in {source}; known sections: {', '.join([*_SECTIONS, 'plugins'])}",
            key=sorted(unknown)[0],
            source=source,
        )
    bad_override = next(iter(sorted(set(overrides or {}) - set(_SECTIONS))), None)
    if bad_override is not None:
        raise ConfigError(
            f"unknown section {bad_override!r} in overrides; known sections: {', '.join(_SECTIONS)}",
            key=bad_override,
            source="overrides",
        )
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = _build_section(cls, data.get(name, {}), name, source)
        section = _apply_env(section, name, env or {})
        if overrides and name in overrides:
            given = _build_section(cls, overrides[name], name, "overrides")
            section = replace(section, **{k: getattr(given, k) for k in overrides[name]})
        sections[name] = section
    sandbox: SandboxConfig = sections["sandbox"]
    check_pool_size(
        sandbox.min_workers,
        sandbox.max_workers,
        max_total_workers=sandbox.max_total_workers,
        source=_sources_of(source, env or {}, overrides),
    )
    _check_uid_range(sections["sandbox"].uid_range, source)
    plugins_table = data.get("plugins", {})
    if not isinstance(plugins_table, Mapping):
        raise ConfigError(f"[plugins] in {source} must be a table of tables", key="plugins", source=source)
    plugins = {pid: _build_plugin(pid, table, source) for pid, table in plugins_table.items()}
    if path is not None:
        base = Path(path).resolve().parent
        plugins = {pid: _resolve_entry(p, base) for pid, p in plugins.items()}
        for name, key in _PATH_SETTINGS:
            given = getattr(sections[name], key)
            sections[name] = replace(sections[name], **{key: tuple(str(base / p) for p in given)})
    return Config(plugins=MappingProxyType(plugins), source=None if path is None else source, **sections)


def _sources_of(source: str, env: Mapping[str, str], overrides: Mapping[str, Any] | None) -> str:
    """Where the pool sizes of a configuration came from, for an error that names them."""
    names = [source]
    names += [
        env_var("sandbox", k)
        for k in ("min_workers", "max_workers", "max_total_workers")
        if env_var("sandbox", k) in env
    ]
    if overrides and "sandbox" in overrides:
        names.append("overrides")
    return " + ".join(names)


UID_MAX = 2**31 - 1
"""Highest uid a worker may get: larger ids break tools that read uids as signed 32-bit numbers."""


def parse_uid_range(text: str) -> tuple[int, int]:
    """Parse ``sandbox.uid_range`` ('first-last', inclusive) into (first, last). No side effects.

    Raises ValueError saying what is wrong: not two numbers, uid 0 or a system uid (below 1000), first above
    last, or beyond ``UID_MAX``.
    """
    first_text, sep, last_text = text.strip().partition("-")
    if not sep or not first_text.strip().isdigit() or not last_text.strip().isdigit():
        raise ValueError(f"expected 'first-last', two uids such as '1879048192-1879113727', got {text!r}")
    first, last = int(first_text), int(last_text)
    if first < 1000:
        raise ValueError(f"the range starts at {first}: uids below 1000 belong to the system")
    if last < first:
        raise ValueError(f"the range ends at {last}, before its first uid {first}")
    if last > UID_MAX:
        raise ValueError(f"the range ends at {last}, above {UID_MAX}")
    return first, last


def _check_uid_range(text: str, source: str) -> None:
    try:
        parse_uid_range(text)
    except ValueError as exc:
        raise ConfigError(
            f"sandbox.uid_range in {source} is invalid: {exc}", key="sandbox.uid_range", source=source
        ) from None


def _resolve_entry(settings: PluginSettings, base: Path) -> PluginSettings:
    if settings.path is not None and not Path(settings.path).is_absolute():
        return replace(settings, path=str(base / settings.path))
    if settings.entry is None:
        return settings
    target, _, attr = settings.entry.rpartition(":")
    if target.endswith(".py") and not Path(target).is_absolute():
        return replace(settings, entry=f"{base / target}:{attr}")
    return settings


def _apply_env(section: Any, name: str, env: Mapping[str, str]) -> Any:
    cls = type(section)
    changes: dict[str, Any] = {}
    for f in fields(cls):
        var = env_var(name, f.name)
        if var in env:
            changes[f.name] = _coerce(
                env[var],
                _field_type(cls, f.name),
                f"{name}.{f.name}",
                var,
                f.metadata.get("minimum"),
                f.metadata["choices"],
                f.metadata.get("check"),
            )
    return replace(section, **changes) if changes else section


def env_var(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


def list_settings() -> list[dict[str, Any]]:
    """Every environment-overridable setting with its key, type, unit, default, variable and doc."""
    rows = []
    for name, cls in _SECTIONS.items():
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            rows.append(
                {
                    "key": f"{name}.{f.name}",
                    "type": _kind_name(_field_type(cls, f.name)),
                    "unit": f.metadata.get("unit", ""),
                    "default": default,
                    "env": env_var(name, f.name),
                    "doc": f.metadata.get("doc", ""),
                }
            )
    return rows
