"""The fleet: hosts sharing one registry, each plugin's instance on each host, and what they add up to.

A plugin's lifecycle state is per host. Each host writes only its own instance of a plugin (its state, reason,
version and times), so hosts never overwrite each other; a plugin's status is an aggregate of the instances
on *live* hosts, computed when it is read, so it cannot go stale:

- a host is **live** while it is open and its heartbeats arrive (every ``heartbeat_s``); one that missed
  ``missed_heartbeats`` of them is **lost** (killed, frozen, cut off), one that closed is **gone**. Instances
  on lost and gone hosts do not count: a host killed with SIGKILL stops counting as active on its own.
- the aggregate status is the first state in :data:`AGGREGATE_ORDER` that any live instance is in (so a
  plugin Active anywhere is ``active``), Discovered when no live host has an instance; when it is Failed,
  its reason is that of the live instance that failed last. :meth:`FleetStatus.summary` says the rest:
  "active on 3 of 4 live hosts; failed on scanner-2: boom".

Both backends compute the aggregate with this rule (the PostgreSQL backend's ``plugins`` view mirrors
AGGREGATE_ORDER; a test compares them). Pure module: records and functions, no I/O.
"""

from __future__ import annotations

import enum
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from plugin_pool.config import HOST_ID_MAX_LEN
from plugin_pool.errors import RegistryConflictError
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import TrustLevel

__all__ = [
    "AGGREGATE_ORDER",
    "AT_REST",
    "Acknowledgements",
    "FleetStatus",
    "HostLiveness",
    "HostRecord",
    "InstanceRecord",
    "PluginStatus",
    "RegistryStats",
    "aggregate_state",
    "default_host_id",
    "source_state",
]

S = PluginState

AGGREGATE_ORDER: tuple[PluginState, ...] = (
    S.ACTIVE,
    S.FAILED,
    S.INITIALIZING,
    S.LOADING,
    S.STOPPING,
    S.STOPPED,
    S.DISCOVERED,
)
"""The aggregate status of a plugin is the first of these that a live instance is in."""

AT_REST: frozenset[PluginState] = frozenset({S.DISCOVERED, S.STOPPED, S.FAILED})
"""States in which a host runs none of the plugin's code: a host without an instance is at rest too."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_host_id(hostname: str | None = None) -> str:
    """The default ``[host] id``: the machine's hostname plus a suffix unique to this start of the host
    (``scanner-2-3f9a1c``), so two hosts on one machine, or one host restarted, never share an id.

    Not pure (reads the hostname, draws randomness); each call returns a new id.
    """
    name = _UNSAFE.sub("-", hostname if hostname is not None else socket.gethostname()).strip("-._") or "host"
    suffix = secrets.token_hex(3)
    return f"{name[: HOST_ID_MAX_LEN - len(suffix) - 1]}-{suffix}"


class HostLiveness(enum.StrEnum):
    """Whether a host counts: ``live`` (heartbeats arrive), ``lost`` (missed too many), ``gone`` (closed)."""

    LIVE = "live"
    LOST = "lost"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class HostRecord:
    """A row of ``hosts``: one running (or lost, or gone) host that shares the registry."""

    id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_s: float
    lost_after_s: float
    closed_at: datetime | None
    liveness: HostLiveness


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A row of ``plugin_instances``: one plugin on one host. ``started_at`` is when the host last made it
    Active (None before that); ``host_liveness`` is the host's liveness when read."""

    plugin_id: str
    host_id: str
    version: str
    state: PluginState
    reason: str | None
    started_at: datetime | None
    updated_at: datetime
    host_liveness: HostLiveness = HostLiveness.LIVE

    @property
    def counts(self) -> bool:
        """Whether this instance counts in the plugin's aggregate status (its host is live)."""
        return self.host_liveness is HostLiveness.LIVE

    @property
    def is_active(self) -> bool:
        """Whether the plugin is Active on this (live) host."""
        return self.counts and self.state is S.ACTIVE


_EMPTY_COUNTS: Mapping[PluginState, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """How a plugin stands across the fleet: instances per state on live hosts, instances left running on
    lost hosts (they do not count), and the live hosts where it failed, with their reasons."""

    by_state: Mapping[PluginState, int] = field(default_factory=lambda: _EMPTY_COUNTS)
    lost: int = 0
    failed_on: tuple[tuple[str, str | None], ...] = ()

    @property
    def live(self) -> int:
        """Live hosts that have an instance of the plugin."""
        return sum(self.by_state.values())

    @property
    def active(self) -> int:
        """Live hosts on which the plugin is Active."""
        return self.by_state.get(S.ACTIVE, 0)

    def summary(self) -> str:
        """One line for operators: "active on 3 of 4 live hosts; failed on scanner-2: boom; 1 on lost hosts"."""
        if not self.live:
            text = "on no live host"
        else:
            text = f"active on {self.active} of {self.live} live host{'s' if self.live != 1 else ''}"
            busy = [
                f"{n} {state.value}"
                for state in AGGREGATE_ORDER
                if state not in (S.ACTIVE, S.FAILED) and (n := self.by_state.get(state, 0))
            ]
            if busy:
                text += f" ({', '.join(busy)})"
        for host, reason in self.failed_on:
            text += f"; failed on {host}" + (f": {reason}" if reason else "")
        if self.lost:
            text += f"; {self.lost} instance{'s' if self.lost != 1 else ''} on lost hosts (not counted)"
        return text

    @classmethod
    def of(cls, instances: Iterable[InstanceRecord]) -> tuple[FleetStatus, PluginState, str | None]:
        """The fleet status of one plugin's instances, its aggregate state and that state's reason (the reason
        of the live instance that failed last, when the aggregate is Failed; else None)."""
        counts: dict[PluginState, int] = {}
        failed: list[InstanceRecord] = []
        lost = 0
        for instance in instances:
            if instance.counts:
                counts[instance.state] = counts.get(instance.state, 0) + 1
                if instance.state is S.FAILED:
                    failed.append(instance)
            elif instance.host_liveness is HostLiveness.LOST and instance.state not in AT_REST:
                lost += 1
        state = aggregate_state(counts)
        reason = max(failed, key=lambda i: i.updated_at).reason if state is S.FAILED else None
        failed_on = tuple(sorted((i.host_id, i.reason) for i in failed))
        return cls(by_state=MappingProxyType(counts), lost=lost, failed_on=failed_on), state, reason


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """One plugin as ``plugin-pool status`` shows it: its aggregate status across the live hosts, the
    operator's switch, and the fleet behind it (a PluginRecord without configuration and history)."""

    plugin_id: str
    trust_level: TrustLevel
    status: PluginState
    status_reason: str | None
    enabled: bool
    enabled_by: str | None
    enabled_reason: str | None
    updated_at: datetime
    fleet: FleetStatus


def aggregate_state(by_state: Mapping[PluginState, int]) -> PluginState:
    """The aggregate state of a plugin whose live instances per state are ``by_state``: the first state of
    AGGREGATE_ORDER with any instance (Discovered when there are none)."""
    return next((state for state in AGGREGATE_ORDER if by_state.get(state, 0) > 0), S.DISCOVERED)


@dataclass(frozen=True, slots=True)
class Acknowledgements:
    """Which live hosts applied an operator's latest disable/enable of a plugin (change number ``seq``)."""

    plugin_id: str
    seq: int
    enabled: bool
    acknowledged: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Whether every live host acknowledged."""
        return not self.pending


@dataclass(frozen=True, slots=True)
class RegistryStats:
    """Counters of one registry instance (the host exports them as metrics). Reading them never blocks."""

    available: bool = True
    pending_writes: int = 0
    written_writes: int = 0
    dropped_writes: int = 0
    conflicted_writes: int = 0
    link_losses: int = 0
    resyncs: int = 0
    heartbeats: int = 0


def source_state(plugin_id: str, current: PluginState | None, expected: PluginState | None) -> PluginState:
    """The state a move of a host's own instance starts from, checked against ``expected`` (compare-and-set);
    ``current`` is the instance's state, None when the host has none. Raises RegistryConflictError.

    A host without an instance is at rest: it matches an expected Discovered, Stopped or Failed (a host that
    saw the plugin Stopped or Failed in the aggregate goes on from there) and otherwise starts from Discovered.
    """
    if current is None:
        if expected is None:
            return S.DISCOVERED
        if expected not in AT_REST:
            raise RegistryConflictError(plugin_id, expected, S.DISCOVERED)
        return expected
    if expected is not None and current is not expected:
        raise RegistryConflictError(plugin_id, expected, current)
    return current
