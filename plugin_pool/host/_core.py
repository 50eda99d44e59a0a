"""What every part of the host shares: configuration, registry, the host lock, the slots, metrics, the actor,
the host's background thread, and whether the host is open.

The parts (admission, lifecycle, routes, the Untrusted bridge, health) each own one thing and reach the
shared state through one :class:`HostCore`, which the :class:`~plugin_pool.host.PluginHost` facade builds.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from plugin_pool._steps import StepRunner
from plugin_pool.config import Config
from plugin_pool.discovery import printable
from plugin_pool.errors import (
    ContentHashMismatchError,
    HostClosedError,
    IntegrityError,
    IntegrityRejectedError,
    SignatureError,
)
from plugin_pool.host._slots import SlotTable
from plugin_pool.lifecycle import PluginState
from plugin_pool.metrics import HostMetrics
from plugin_pool.registry.base import EventKind, PluginRegistry

__all__ = ["HostCore", "integrity_audit", "os_user"]

_log = logging.getLogger("plugin_pool.host")


class HostCore:
    """The host's shared state. Thread-safe where its parts need it: ``lock`` guards lifecycle moves and
    slot additions; the flags are plain attributes read without a lock."""

    def __init__(
        self,
        config: Config,
        registry: PluginRegistry,
        services: Mapping[str, Any],
        metrics: HostMetrics,
        slots: SlotTable,
    ) -> None:
        self.config = config
        self.registry = registry
        self.services: dict[str, Any] = dict(services)
        self.metrics = metrics
        self.slots = slots
        self.actor = f"{config.host.actor}/{os_user()}"
        """Who the host's own audit events name: ``<host.actor>/<OS user>``."""
        self.lock = threading.RLock()
        self.runner = StepRunner()
        # One thread of the host's own, in order, for work that must not hold up the thread that asks for
        # it: an operator's disable/enable (the registry calls back in its listener thread, which must not
        # block), and the sandbox's reports (a worker replacement's audit, a plugin failed in the sandbox):
        # the supervisor and zygote reader threads must never wait for the host lock or the database.
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugin-pool-host")
        self.opened = False
        self.closed = False
        self.closing = False

    def check_usable(self) -> None:
        """Raise HostClosedError once the host is closed."""
        if self.closed:
            raise HostClosedError("the plugin host is already closed; create a new PluginHost")

    def check_open(self) -> None:
        """Raise HostClosedError unless the host is open."""
        self.check_usable()
        if not self.opened:
            raise HostClosedError("the plugin host is not open yet; call host.open() or use 'with PluginHost()'")

    def closed_error(self) -> HostClosedError | None:
        """The error for a call made while the host is not open, or None when it is open."""
        if self.closed or not self.opened:
            state = "already closed" if self.closed else "not open yet"
            return HostClosedError(f"the plugin host is {state}; calls need an open host")
        return None

    def in_background(self, task: Callable[..., None], *args: Any) -> bool:
        """Queue ``task(*args)`` on the host's background thread; False when the host is closing (not queued)."""
        try:
            self.background.submit(_logged, task, *args)
        except RuntimeError:  # shut down: the host is closing
            return False
        return True

    def audit(
        self,
        kind: EventKind,
        plugin_id: str | None,
        *,
        actor: str | None = None,
        state: PluginState | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one audit event (as the host, unless ``actor`` names who asked). Blocks on the registry."""
        self.registry.record_event(kind, plugin_id=plugin_id, actor=actor or self.actor, state=state, details=details)


def integrity_audit(exc: IntegrityError) -> tuple[EventKind, dict[str, Any], str | None]:
    """How a plugin refused for its content is audited and counted: (event, details, metric kind).

    ``hash_mismatch`` (the files differ from the registered hash: the changes), ``integrity_rejected`` (what
    the folder may not hold: kind, file, folder, reason, fix), ``signature_rejected``; the metric kind is
    the ``kind`` label of ``plugin_integrity_rejections_total`` (None for an IntegrityError of no content
    kind, audited as ``failed``). Every path is the plugin's own folder, never a private copy. Pure.
    """
    reason = printable(str(exc))
    if isinstance(exc, ContentHashMismatchError):
        details: dict[str, Any] = {
            "folder": printable(str(exc.path)),
            "changes": [printable(c) for c in exc.changes[:100]],
            "expected": exc.expected.digest,
            "actual": exc.actual.digest,
            "reason": reason,
        }
        return EventKind.HASH_MISMATCH, details, "hash_mismatch"
    if isinstance(exc, IntegrityRejectedError):
        details = {
            "kind": exc.kind,
            "file": printable(exc.file),
            "folder": printable(str(exc.folder)),
            "reason": printable(exc.reason),
            "fix": exc.fix,
        }
        return EventKind.INTEGRITY_REJECTED, details, exc.kind
    if isinstance(exc, SignatureError):
        return EventKind.SIGNATURE_REJECTED, {"folder": printable(str(exc.path)), "reason": reason}, "signature"
    return EventKind.FAILED, {"reason": reason}, None


def _logged(task: Callable[..., None], *args: Any) -> None:
    """Run a background task; what it raises is logged (a background thread has nobody to raise to)."""
    try:
        task(*args)
    except Exception:
        _log.exception("host: a background task failed", extra={"event": "host_task_failed"})


def os_user() -> str:
    """The OS user this process runs as, for audit actors (the uid when there is no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER: the uid is still an identity
        return f"uid {os.geteuid()}"
