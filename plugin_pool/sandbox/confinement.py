"""Choosing how workers are confined (host side): probe the layers, apply the minimum, build the spec.

The layers themselves are applied by each worker to itself (``_confine``, worker side); what the host
decides is which layers this kernel offers, which it requires (``sandbox.required_layers``), and what it
must provide itself: a uid per worker (``identities``) and cgroups (``cgroups``). docs/SANDBOX.md has
every layer, what it stops and the order.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plugin_pool
from plugin_pool.config import SandboxConfig
from plugin_pool.errors import ConfinementUnavailableError
from plugin_pool.sandbox._confine import (
    ALL_LAYERS,
    LAYER_CGROUP,
    LAYER_MOUNTNS,
    LAYER_PIDNS,
    LAYER_UID,
    LAYER_USERNS,
    ConfinementSpec,
    LayerStatus,
    default_read_only_paths,
    probe_layers,
)
from plugin_pool.sandbox.cgroups import CgroupTree
from plugin_pool.sandbox.identities import WorkerIdentities
from plugin_pool.sandbox.worker_client import WorkerHandle, WorkerPlan

__all__ = [
    "DATA_CEILING_FACTOR",
    "PROGRESS_NAME",
    "WORKER_TMP_DIR",
    "ConfinementChoice",
    "choose_confinement",
    "read_only_paths",
    "worker_spec",
]

WORKER_TMP_DIR = "/tmp"
"""Where a worker with a private root finds its own tmpfs (TMPDIR)."""
PROGRESS_NAME = "progress"
"""The worker's progress cell in its directory (see _codec)."""
DATA_CEILING_FACTOR = 8
"""RLIMIT_DATA as a multiple of sandbox.memory_mb when the memory cgroup enforces memory_mb itself."""


@dataclass
class ConfinementChoice:
    """What the pool gives its workers: the probed layers, those applied and required, and the host-side
    resources (per-worker uids, the cgroup tree), open and owned by the caller (close them)."""

    layers: dict[str, LayerStatus]
    applied: frozenset[str]
    required: frozenset[str]
    identities: WorkerIdentities | None
    cgroups: CgroupTree | None
    user_namespace: bool


def read_only_paths(plugin_dir: Path | None, extra_read_paths: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The trees a worker may read: the runtime, the worker code, (when given) the plugin's copy, and the
    operator's ``[sandbox] extra_read_paths``."""
    package_dir = str(Path(plugin_pool.__file__).resolve().parent)
    extra = [package_dir] + ([str(plugin_dir)] if plugin_dir is not None else [])
    return default_read_only_paths(*extra, *extra_read_paths)


def choose_confinement(config: SandboxConfig, runtime_dir: Path) -> ConfinementChoice:
    """Probe the layers and choose how workers are confined. Blocks briefly (the probes run in children).

    Raises ConfinementUnavailableError when ``sandbox.required_layers`` cannot be met, naming each missing
    layer and why. Opens the uid claims and the cgroup tree it chooses (the caller closes them).
    """
    root = os.geteuid() == 0
    # A root host gives every worker a uid of its own, also in user-namespace mode (dropped before the
    # namespace is made), so no worker ever keeps real root outside; an unprivileged host cannot.
    identities = WorkerIdentities(config.uid_range, runtime_dir / "uids") if root else None
    user_namespace = config.worker_user == "userns" or not root
    sample_uid = identities.first if identities is not None else None
    spec = ConfinementSpec(
        temp_dir=WORKER_TMP_DIR,
        read_only_paths=read_only_paths(None, config.extra_read_paths),
        uid=sample_uid,
        user_namespace=user_namespace,
        mount_namespace=True,
        root_dir=str(runtime_dir),
    )
    layers = probe_layers(spec)
    if sample_uid is not None and not layers[LAYER_MOUNTNS].available:
        # Without a private root the uid must reach the runtime through the host's own directories.
        layers[LAYER_UID] = probe_layers(dataclasses.replace(spec, mount_namespace=False))[LAYER_UID]
    available = {name for name, status in layers.items() if status.available}
    if identities is None:
        available.discard(LAYER_UID)
    if not user_namespace:
        available.discard(LAYER_USERNS)
    wanted = config.required_layers.strip().lower()
    if wanted == "available":
        required = set(available)
    elif wanted == "none":
        required = set()
    else:
        required = {name.strip() for name in wanted.split(",") if name.strip()}
        unknown = required - set(ALL_LAYERS)
        if unknown:
            raise ConfinementUnavailableError(
                f"sandbox.required_layers names unknown layers {sorted(unknown)}; known: {', '.join(ALL_LAYERS)}"
            )
    if identities is not None and LAYER_UID not in available and wanted == "available":
        raise ConfinementUnavailableError(
            f"workers cannot run as uids of their own: {layers[LAYER_UID].reason}. Make the Python "
            "runtime readable by other users, or name sandbox.required_layers without 'uid' to accept "
            "workers that keep the host's uid"
        )
    missing = sorted(required - available)
    if missing:
        why = "; ".join(f"{m}: {layers[m].reason}" for m in missing)
        raise ConfinementUnavailableError(
            f"the sandbox cannot confine workers as required: {why}. Lower sandbox.required_layers "
            f"only if you accept weaker isolation"
        )
    chosen_identities = None
    if LAYER_UID in available and identities is not None:
        identities.open()
        chosen_identities = identities
    cgroups = None
    if LAYER_CGROUP in available:
        tree = CgroupTree()
        try:
            tree.open()
            cgroups = tree
        except OSError as exc:
            if LAYER_CGROUP in required:
                if chosen_identities is not None:
                    chosen_identities.close()
                raise ConfinementUnavailableError(f"the sandbox cannot create worker cgroups: {exc}") from exc
            available.discard(LAYER_CGROUP)
    return ConfinementChoice(
        layers=layers,
        applied=frozenset(available),
        required=frozenset(required),
        identities=chosen_identities,
        cgroups=cgroups,
        user_namespace=user_namespace,
    )


def worker_spec(
    config: SandboxConfig,
    plan: WorkerPlan,
    handle: WorkerHandle,
    *,
    applied: frozenset[str],
    required: frozenset[str],
    user_namespace: bool,
) -> dict[str, Any]:
    """The spawn request of one worker: its confinement and what it serves. No side effects."""
    identity = handle.identity
    mount_namespace = LAYER_MOUNTNS in applied
    memory_mb = min(plan.memory_mb or config.memory_mb, config.memory_mb)
    confinement = ConfinementSpec(
        temp_dir=WORKER_TMP_DIR if mount_namespace else str(handle.directory / "tmp"),
        read_only_paths=read_only_paths(plan.plugin_dir, config.extra_read_paths),
        socket_dir=str(handle.socket_path.parent),
        cpu_time_s=min(plan.cpu_time_s or config.cpu_time_s, config.cpu_time_s),
        # The memory cgroup holds the worker to memory_mb, counting what it touches; RLIMIT_DATA then only
        # stops absurd reservations (orjson reserves several times a big string's size before writing it).
        memory_mb=memory_mb * DATA_CEILING_FACTOR if handle.cgroup is not None else memory_mb,
        open_files=config.open_files,
        # With a uid of its own, RLIMIT_NPROC counts this worker's threads alone.
        processes=config.max_threads if identity is not None else None,
        file_size_mb=config.file_size_mb,
        uid=identity.uid if identity is not None else None,
        unshare_net=True,
        user_namespace=user_namespace,
        layers=frozenset(applied),
        required_layers=frozenset(required),
        cgroup_dirs=handle.cgroup.group_dirs if handle.cgroup is not None else (),
        pid_namespace=LAYER_PIDNS in applied,
        mount_namespace=mount_namespace,
        root_dir=str(handle.directory / "root") if mount_namespace else None,
        tmp_size_mb=config.tmp_size_mb,
        tmp_max_files=config.tmp_max_files,
    )
    return {
        "plugin_id": plan.plugin_id,
        "plugin_dir": str(plan.plugin_dir),
        "python_path": list(plan.python_path),
        "entry": plan.entry,
        "capabilities": list(plan.capabilities),
        "socket_path": str(handle.socket_path),
        "progress_path": str(handle.directory / PROGRESS_NAME),
        "confinement": confinement.to_dict(),
        "threads": config.worker_threads,
        "max_message_bytes": int(config.max_message_mb * 1024 * 1024),
    }
