"""This host in the fleet: its identity and its row in ``hosts`` (join, heartbeat, leave, pruning of hosts long
gone), and its own plugin instances (the compare-and-set of its moves).

A host joins with a token new to this start: a host restarted under a fixed ``[host] id`` replaces its earlier
run (whose instances and acknowledgements are forgotten: none of that runs any more), unless that earlier run
is still live elsewhere, which is refused with an error naming it. Each heartbeat moves ``heartbeat_at``
(database time, so hosts' clocks never matter); a host that misses ``missed_heartbeats`` of them is shown lost.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from plugin_pool.errors import RegistryError
from plugin_pool.lifecycle import PluginState, check_transition
from plugin_pool.registry.fleet import InstanceRecord, source_state

__all__ = ["HostIdentity", "OwnInstances"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class HostIdentity:
    """Who this registry instance records for, and the SQL that keeps its ``hosts`` row. Thread-safe: its
    fields never change after construction and each method runs on the connection it is given."""

    id: str
    heartbeat_s: float
    missed_heartbeats: int
    retention_s: float
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @property
    def lost_after_s(self) -> float:
        """How long without a heartbeat before others show this host lost."""
        return self.heartbeat_s * self.missed_heartbeats

    def join(self, conn: psycopg.Connection[Any], q: dict[str, sql.Composed]) -> None:
        """Insert or take over this host's row (one transaction). Raises RegistryError when another run of this
        id is live (on another machine, or a process of this one that still exists)."""
        with conn.transaction():
            row = conn.execute(q["lock_host"], [self.id]).fetchone()
            if row is not None and str(row[0]) != self.token:
                _, hostname, pid, liveness, age_s, lost_after_s = row
                if liveness == "live" and (hostname != self.hostname or _pid_alive(pid)):
                    raise RegistryError(
                        f"host id {self.id!r} is in use by a live host (pid {pid} on {hostname}, last heartbeat "
                        f"{float(age_s):.1f} s ago): give each host its own [host] id, or wait "
                        f"{max(float(lost_after_s) - float(age_s), 0):.0f} s for that host to be shown lost"
                    )
                conn.execute(q["forget_host_run"], {"host": self.id})
            conn.execute(
                q["join_host"],
                {
                    "host": self.id,
                    "token": self.token,
                    "hostname": self.hostname[:255],
                    "pid": self.pid,
                    "heartbeat_s": self.heartbeat_s,
                    "lost_after_s": self.lost_after_s,
                },
            )

    def beat(self, conn: psycopg.Connection[Any], q: dict[str, sql.Composed]) -> None:
        """Write a heartbeat; join again when the row is gone (pruned while this host was cut off) or closed."""
        if conn.execute(q["heartbeat"], [self.id, self.token]).rowcount == 0:
            self.join(conn, q)

    def leave(self, conn: psycopg.Connection[Any], q: dict[str, sql.Composed]) -> None:
        """Mark this host gone and drop its instances (its plugins stopped with it)."""
        conn.execute(q["leave_host"], {"host": self.id, "token": self.token})

    def prune(self, conn: psycopg.Connection[Any], q: dict[str, sql.Composed]) -> int:
        """Delete hosts closed or silent for longer than ``retention_s`` (their instances and acknowledgements
        go with them); return how many."""
        return conn.execute(q["prune_hosts"], {"host": self.id, "retention_s": self.retention_s}).rowcount


class OwnInstances:
    """This host's own instances and the versions it registered: the compare-and-set of set_status is decided
    here, without the database (only this host writes its instances). Thread-safe."""

    def __init__(self, host_id: str) -> None:
        self._host_id = host_id
        self._lock = threading.Lock()
        self._registered: dict[str, str] = {}
        self._instances: dict[str, InstanceRecord] = {}

    def note_registered(self, plugin_id: str, version: str) -> None:
        """This host registered ``version`` of the plugin (its instances run that version)."""
        with self._lock:
            self._registered[plugin_id] = version

    def is_registered(self, plugin_id: str) -> bool:
        """Whether this host registered the plugin."""
        with self._lock:
            return plugin_id in self._registered

    def move(
        self,
        plugin_id: str,
        status: PluginState,
        expected: PluginState | None,
        reason: str | None,
        queue: Callable[[InstanceRecord, PluginState, str | None], None],
    ) -> InstanceRecord:
        """Move the instance to ``status`` if it is in ``expected`` (see fleet.source_state) and the move is
        legal; ``queue(instance, source, version)`` writes it, called under the lock so writes keep the order
        of the moves. Raises RegistryConflictError or IllegalTransitionError."""
        with self._lock:
            current = self._instances.get(plugin_id)
            source = source_state(plugin_id, current.state if current else None, expected)
            check_transition(source, status, plugin_id=plugin_id)
            at = datetime.now(UTC)
            version = self._registered.get(plugin_id)
            instance = InstanceRecord(
                plugin_id=plugin_id,
                host_id=self._host_id,
                version=version or "0",
                state=status,
                reason=reason,
                started_at=at if status is PluginState.ACTIVE else (current.started_at if current else None),
                updated_at=at,
            )
            queue(instance, source, version)
            self._instances[plugin_id] = instance
            return instance

    def is_active(self, plugin_id: str) -> bool:
        """Whether this host's instance of the plugin is Active."""
        with self._lock:
            instance = self._instances.get(plugin_id)
        return instance is not None and instance.state is PluginState.ACTIVE
