"""PostgresPluginRegistry: open/close, and each method of the registry protocol as a few lines over the parts
that own the work: _database (pool, deadlines, errors), _outbox (every write, in order, in the background),
_listener (notifications, heartbeat, re-sync; the switchboard), _hosts (this host's row and its instances),
_catalog (registration), _reads, _schema, _sql and _rows."""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import orjson
import psycopg
from packaging.utils import canonicalize_version
from packaging.version import Version
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from plugin_pool.errors import PluginNotFoundError, RegistryError, RegistryUnavailableError
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import Capabilities, PluginInfo, TrustLevel
from plugin_pool.registry.base import (
    AuditEvent,
    CapabilityRecord,
    ChangeCallback,
    EventKind,
    PluginRecord,
    RegistryChange,
    Subscribers,
    VersionRecord,
)
from plugin_pool.registry.fleet import (
    Acknowledgements,
    HostRecord,
    InstanceRecord,
    PluginStatus,
    RegistryStats,
    default_host_id,
)
from plugin_pool.registry.postgres import _reads, _sql
from plugin_pool.registry.postgres._catalog import predicted_registration, read_plugin, register_in
from plugin_pool.registry.postgres._database import Conn, Database
from plugin_pool.registry.postgres._hosts import HostIdentity, OwnInstances
from plugin_pool.registry.postgres._link import Deadlines, Endpoint, LinkSettings, connect_options
from plugin_pool.registry.postgres._listener import Listener, Switchboard
from plugin_pool.registry.postgres._outbox import Outbox, Write
from plugin_pool.registry.postgres._schema import DEFAULT_SCHEMA, check_schema
from plugin_pool.registry.validation import (
    check_enabled_change,
    check_event,
    check_host_id,
    check_limit,
    check_plugin_id,
    check_registration,
    check_state,
    check_status_move,
    check_trust_level,
    details_to_storable,
    to_storable,
)

__all__ = ["PostgresPluginRegistry"]

_log = logging.getLogger("plugin_pool.registry")
_T = TypeVar("_T")
_NOTIFY_REASON_MAX_LEN = 500  # a NOTIFY payload must stay under 8,000 bytes


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _plugin_id(plugin_id: object) -> str:
    """``plugin_id`` if it is a valid id, else PluginNotFoundError (no plugin can have it)."""
    try:
        return check_plugin_id(plugin_id)
    except RegistryError:
        raise PluginNotFoundError(
            f"plugin {plugin_id!r:.80} is not registered; register it first",
            plugin_id=plugin_id if isinstance(plugin_id, str) else None,
        ) from None


class PostgresPluginRegistry:
    """A :class:`~plugin_pool.registry.PluginRegistry` in PostgreSQL, shared by every host using the database.

    Opens on construction (``open=False`` defers it to :meth:`open`); ``open`` and ``close`` are idempotent and
    it works as a ``with`` block. All methods are thread-safe.

    - **Identity.** ``host_id`` (default: :func:`~plugin_pool.registry.fleet.default_host_id`) is the host it
      records for. ``join=True`` (what ``open_registry`` passes for a host) enters the fleet at open: a row in
      ``hosts`` and a heartbeat every ``heartbeat_s`` on the link thread; otherwise it joins on its first host
      write (register, set_status, record_event, acknowledge). An operator's tool that only reads and switches
      plugins never joins. ``close`` leaves the fleet (shown gone).
    - **Writes never wait for the database on a call path.** ``set_status``, ``record_event`` and
      ``acknowledge`` are checked here (set_status against this host's own instance) and queued in the
      outbox, written by its thread in order, idempotently (client-generated event uids); ``register`` waits
      up to ``timeout_s`` for its write, else returns the record as this instance saw it. During an outage up
      to ``buffer_limit`` writes are kept (overflow counted and logged). Reads first wait (up to ``timeout_s``)
      for this instance's earlier writes, raise RegistryUnavailableError during an outage; ``set_enabled``
      (an operator's action) is never buffered.
    - **Liveness.** Every connection has TCP keepalive and TCP_USER_TIMEOUT, every statement a deadline; the
      link thread runs a round trip every ``heartbeat_s`` and re-syncs after every reconnect and every
      ``resync_s``. A host silent for ``heartbeat_s * missed_heartbeats`` is shown lost by everyone.

    Counters: ``pending_writes``, ``flushed_writes``, ``dropped_writes``, ``conflicted_writes`` and
    :meth:`get_stats` (which the host exports as metrics).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        host_id: str | None = None,
        join: bool = False,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 5.0,
        buffer_limit: int = 10_000,
        retry_max_s: float = 5.0,
        heartbeat_s: float = 5.0,
        missed_heartbeats: int = 3,
        resync_s: float = 30.0,
        keepalive_s: int = 5,
        tcp_user_timeout_s: float = 10.0,
        host_retention_s: float = 86400.0,
        migrate: bool = False,
        offline_start: bool = False,
        open: bool = True,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise RegistryError(
                f"registry pool sizes are invalid: need 0 <= min_size ({min_size}) <= max_size "
                f"({max_size}) and max_size >= 1"
            )
        if min(timeout_s, retry_max_s, heartbeat_s, resync_s, tcp_user_timeout_s) <= 0 or buffer_limit < 0:
            raise RegistryError(
                "registry timeout_s, retry_max_s, heartbeat_s, resync_s and tcp_user_timeout_s must be > 0 and "
                "buffer_limit >= 0"
            )
        if missed_heartbeats < 2 or keepalive_s < 1:
            raise RegistryError("registry missed_heartbeats must be >= 2 and keepalive_s >= 1")
        self.schema = check_schema(schema)
        self.channel = f"{schema}_status"
        self._dsn = dsn
        self._timeout_s = timeout_s
        self._buffer_limit = buffer_limit
        self._offline_start = offline_start
        self._join_at_open = join
        self._endpoint = Endpoint.parse(dsn)
        self._settings = LinkSettings(timeout_s, keepalive_s, tcp_user_timeout_s)
        self._host = HostIdentity(
            id=check_host_id(host_id) if host_id is not None else default_host_id(),
            heartbeat_s=heartbeat_s,
            missed_heartbeats=missed_heartbeats,
            retention_s=host_retention_s,
        )
        self._q = _sql.build_queries(schema)
        self._origin = uuid.uuid4().hex  # tells this instance's notifications from other hosts'
        self._lock = threading.Lock()  # open/close and joining
        self._state_lock = threading.Lock()  # _known
        self._opened = False
        self._closed = False
        self._joined = False
        self._beat_error: str | None = None
        self._known: dict[str, PluginRecord] = {}  # plugins this instance registered or read
        self._own = OwnInstances(self._host.id)
        self._deadlines = Deadlines(f"plugin-pool-registry-deadlines-{schema}")
        self._db = Database(
            dsn,
            schema=schema,
            endpoint=self._endpoint,
            settings=self._settings,
            deadlines=self._deadlines,
            min_size=min_size,
            max_size=max_size,
            migrate=migrate,
        )
        self._outbox = Outbox(
            name=f"plugin-pool-registry-writer-{schema}",
            connect=lambda: self._db.writer_connection(lambda: self._outbox.pending),
            endpoint=self._endpoint,
            deadlines=self._deadlines,
            limit=buffer_limit,
            timeout_s=timeout_s,
            retry_max_s=retry_max_s,
        )
        self._switchboard = Switchboard(
            subscribers=Subscribers(),
            origin=self._origin,
            is_ours=lambda plugin_id: (
                self._own.is_registered(plugin_id) or (not self._joined and self._knows(plugin_id))
            ),
            is_host=lambda: self._joined,
            acknowledge=self.acknowledge,
        )
        self._listener = Listener(
            name=f"plugin-pool-registry-listen-{schema}",
            dsn=dsn,
            channel=self.channel,
            endpoint=self._endpoint,
            settings=self._settings,
            deadlines=self._deadlines,
            heartbeat_s=heartbeat_s,
            resync_s=resync_s,
            retry_max_s=retry_max_s,
            beat=self._beat,
            resync=self._resync,
            dispatch=self._switchboard.dispatch,
        )
        if open:
            self.open()

    # -- open / close --------------------------------------------------------------------------------------

    def open(self) -> PostgresPluginRegistry:
        """Connect (and migrate if asked; join the fleet if ``join``). Blocks up to about ``timeout_s``;
        idempotent. Raises RegistryUnavailableError naming host and port if the database cannot be reached
        (unless ``offline_start``: then it logs a warning and starts buffering), RegistryPermissionError for a
        missing privilege, and RegistryError if the schema is not migrated, the host id is in use by a live
        host, or the registry is already closed."""
        with self._lock:
            if self._closed:
                raise RegistryError("the PostgreSQL registry is already closed; create a new one")
            if self._opened:
                return self
            try:
                self._db.connect()
            except RegistryUnavailableError as exc:
                if not self._offline_start:
                    raise
                _log.warning(
                    "registry: %s; starting offline (registry.offline_start): this host's registrations, status "
                    "changes and audit events are kept (up to %d) and written when the database is reachable",
                    exc,
                    self._buffer_limit,
                )
                self._outbox.mark_unreachable(exc)
            self._outbox.start()
            self._opened = True
        if self._join_at_open:
            try:
                self._ensure_joined(now=self._db.pool is not None)
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Stop the link thread, write what is queued (trying for up to ``timeout_s``), leave the fleet (shown
        gone; its instances are dropped), close the pool. Blocks up to about twice ``timeout_s``; idempotent.
        Writes still buffered are logged (with their count) as lost."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._listener.stop()
        lost = self._outbox.close(self._timeout_s)
        if self._joined and self._outbox.available:
            # Bounded tighter than other queries: a host that cannot say goodbye is shown lost soon anyway.
            goodbye_s = min(self._timeout_s, 2.0)
            self._db.try_once("mark this host gone", lambda conn: self._host.leave(conn, self._q), timeout_s=goodbye_s)
        if lost:
            _log.error(
                "registry closed with %d buffered writes not written: the database at %s:%s %s",
                lost,
                self._endpoint.host,
                self._endpoint.port,
                "was never reachable" if self._db.pool is None else "stayed unreachable",
            )
        self._deadlines.close()
        self._db.close()

    def __enter__(self) -> PostgresPluginRegistry:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- identity and counters -----------------------------------------------------------------------------

    @property
    def host_id(self) -> str:
        """See :attr:`PluginRegistry.host_id`."""
        return self._host.id

    @property
    def pending_writes(self) -> int:
        """How many writes wait in the buffer. Never blocks on I/O."""
        return self._outbox.pending

    @property
    def dropped_writes(self) -> int:
        """Writes that did not fit the buffer (or were queued when the registry closed)."""
        return self._outbox.dropped

    @property
    def conflicted_writes(self) -> int:
        """Queued writes the database refused (logged, never retried)."""
        return self._outbox.conflicted

    @property
    def flushed_writes(self) -> int:
        """Queued writes written."""
        return self._outbox.written

    @property
    def is_available(self) -> bool:
        """False while the database is known unreachable (writes are being buffered). Never blocks on I/O."""
        return self._outbox.available

    def flush(self, *, timeout_s: float) -> bool:
        """See :meth:`PluginRegistry.flush`."""
        return self._outbox.wait(self._outbox.last_seq, timeout_s)

    def get_stats(self) -> RegistryStats:
        """See :meth:`PluginRegistry.get_stats`."""
        return RegistryStats(
            available=self._outbox.available,
            pending_writes=self._outbox.pending,
            written_writes=self._outbox.written,
            dropped_writes=self._outbox.dropped,
            conflicted_writes=self._outbox.conflicted,
            link_losses=self._listener.link_losses,
            resyncs=self._listener.resyncs,
            heartbeats=self._listener.heartbeats,
        )

    # -- writes --------------------------------------------------------------------------------------------

    def register(
        self,
        info: PluginInfo,
        capabilities: Capabilities,
        *,
        actor: str,
        assembly_hash: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> PluginRecord:
        """See :meth:`PluginRegistry.register`. One transaction, safe against hosts registering at once; waits
        up to ``timeout_s`` for it, else (an outage) returns the record as this instance last saw the plugin
        (Discovered if it never did) and a hash conflict found later is logged and counted."""
        checked = check_registration(info, capabilities, actor=actor, assembly_hash=assembly_hash, config=config)
        plugin_id, level, name, version = checked.plugin_id, checked.level, checked.name, checked.version
        config_json, params = checked.config, checked.capabilities
        self._require_open()
        self._ensure_joined()
        values = {
            "id": plugin_id,
            "name": name,
            "trust_level": level.value,
            "config": Jsonb(config_json) if config is not None else None,
            "new_config": Jsonb(config_json),
            "actor": actor,
            "details": {"version": str(version), "trust_level": level.value},
            "version": str(version),
            "version_key": canonicalize_version(version),
            "hash": assembly_hash,
            "capabilities": Jsonb(params),
            "uid": uuid.uuid4(),
            "host": self.host_id,
        }
        done = threading.Event()
        write = Write(f"registration of plugin {plugin_id!r}", functools.partial(self._register_in, values), done)
        self._own.note_registered(plugin_id, str(version))
        if self._outbox.put(write):
            if self._outbox.available:
                done.wait(self._timeout_s)
            if not self._outbox.abandon(write):  # written (or refused): its outcome
                if write.error is not None:
                    raise write.error
                record: PluginRecord = write.result
                self._remember(record)
                return record
        # Buffered (the database is unreachable or slow) or dropped: this instance's view of the plugin.
        with self._state_lock:
            known = self._known.get(plugin_id)
        return predicted_registration(plugin_id, name, level, config_json if config is not None else None, known)

    def _register_in(self, values: Mapping[str, Any], conn: Conn) -> PluginRecord:
        with self._db.sql_errors("register", values["id"]):
            return register_in(conn, self._q, values, self._event_params)

    def set_status(
        self,
        plugin_id: str,
        status: PluginState,
        *,
        expected: PluginState | None,
        actor: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> InstanceRecord:
        """See :meth:`PluginRegistry.set_status`. Checked against this host's own instance and queued (the
        instance row, the audit event and the NOTIFY are one statement, written once however often it is
        replayed). Blocks only the first time this instance sees a plugin (to check that it exists): during
        an outage that raises RegistryUnavailableError."""
        move = check_status_move(plugin_id, status, expected=expected, actor=actor, reason=reason, details=details)
        status, expected, reason, extra = move.status, move.expected, move.reason, move.details
        plugin_id = _plugin_id(plugin_id)
        self._require_open()
        self._require_plugin(plugin_id)
        self._ensure_joined()

        def queue(instance: InstanceRecord, source: PluginState, version: str | None) -> None:
            moved = {**extra, "from": source.value, **({"reason": reason} if reason is not None else {})}
            event = EventKind.for_state(status)
            params = {
                **self._event_params(uuid.uuid4(), plugin_id, event, status.value, actor, instance.updated_at, moved),
                "id": plugin_id,
                "status": status.value,
                "reason": to_storable(reason) if reason is not None else None,
                "version": version,
                "channel": self.channel,
                "payload": orjson.dumps(
                    {"id": plugin_id, "status": status.value, "host": self.host_id, "origin": self._origin}
                ).decode(),
            }
            describe = f"status of plugin {plugin_id!r} {source.value} -> {status.value}"
            self._outbox.put(Write(describe, functools.partial(self._write, "write_status", params)))

        return self._own.move(plugin_id, status, expected, reason, queue)

    def record_event(
        self,
        event: EventKind,
        *,
        plugin_id: str | None,
        actor: str,
        state: PluginState | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """See :meth:`PluginRegistry.record_event`: queued, never waits; returned with ``id`` 0 (assigned when
        written) and the ``uid`` it is stored under."""
        request = check_event(plugin_id, actor=actor, state=state, details=details)
        plugin_id, state, extra = request.plugin_id, request.state, request.details
        kind = EventKind.checked(event, plugin_id)
        self._require_open()
        self._ensure_joined()
        uid, at = uuid.uuid4(), _utcnow()
        params = self._event_params(uid, plugin_id, kind, state.value if state else None, actor, at, extra)
        write = functools.partial(self._write, "insert_event", params)
        self._outbox.put(Write(f"audit event {kind.value} of plugin {plugin_id!r}", write))
        return AuditEvent(0, plugin_id, kind, state, actor, at, MappingProxyType(extra), str(uid), self.host_id)

    def set_enabled(self, plugin_id: str, enabled: bool, *, actor: str, reason: str | None = None) -> PluginRecord:
        """See :meth:`PluginRegistry.set_enabled`. One statement: the flag and its number, the audit event and
        the NOTIFY. An operator's action, so it is not buffered: during an outage it raises
        RegistryUnavailableError."""
        reason = check_enabled_change(plugin_id, enabled, actor=actor, reason=reason)
        plugin_id = _plugin_id(plugin_id)
        stored = to_storable(reason) if reason is not None else None
        kind = EventKind.ENABLED if enabled else EventKind.DISABLED
        note = {"id": plugin_id, "enabled": enabled, "actor": actor, "origin": self._origin}
        params = {
            **self._event_params(
                uuid.uuid4(), plugin_id, kind, None, actor, None, {"reason": reason} if reason else {}
            ),
            "host": self.host_id if self._joined else None,  # an operator's tool is no host
            "id": plugin_id,
            "enabled": enabled,
            "reason": stored,
            "channel": self.channel,
            "payload": orjson.dumps({**note, "reason": stored and stored[:_NOTIFY_REASON_MAX_LEN]}).decode(),
        }

        def work(conn: Conn) -> PluginRecord:
            conn.execute(self._q["set_enabled"], params)
            return read_plugin(conn, self._q, plugin_id)

        record = self._run("set_enabled", work, plugin_id=plugin_id)
        self._remember(record, seen=False)  # subscribers here are told through the notification
        return record

    def acknowledge(self, change: RegistryChange) -> None:
        """See :meth:`PluginRegistry.acknowledge`: queued, never waits."""
        if change.kind != "enabled" or change.seq is None or self._closed:
            return
        self._ensure_joined()
        params = {
            "id": change.plugin_id,
            "host": self.host_id,
            "seq": change.seq,
            "channel": self.channel,
            "payload": orjson.dumps({"ack": change.plugin_id, "host": self.host_id, "seq": change.seq}).decode(),
        }
        describe = f"acknowledgement of switch {change.seq} of plugin {change.plugin_id!r}"
        self._outbox.put(Write(describe, functools.partial(self._write, "acknowledge", params)))

    def _write(self, query: str, params: Mapping[str, Any], conn: Conn) -> None:
        with self._db.sql_errors(query, params.get("id") or params.get("plugin_id")):
            conn.execute(self._q[query], params)

    def _event_params(
        self,
        uid: uuid.UUID,
        plugin_id: str | None,
        kind: EventKind,
        state: str | None,
        actor: str,
        at: datetime | None,
        details: Mapping[str, Any],
    ) -> dict[str, Any]:
        return {
            "uid": uid,
            "plugin_id": plugin_id,
            "host": self.host_id,
            "event": kind.value,
            "state": state,
            "actor": actor,
            "at": at if at is not None else _utcnow(),
            "details": Jsonb(details_to_storable(details)),  # NUL and the like are escaped, never lost
        }

    # -- reads ---------------------------------------------------------------------------------------------

    def get_acknowledgements(self, plugin_id: str) -> Acknowledgements:
        """See :meth:`PluginRegistry.get_acknowledgements`."""
        plugin_id = _plugin_id(plugin_id)
        return self._run(
            "get_acknowledgements", lambda c: _reads.acknowledgements(c, self._q, plugin_id), plugin_id=plugin_id
        )

    def wait_for_acknowledgements(self, plugin_id: str, *, timeout_s: float) -> Acknowledgements:
        """See :meth:`PluginRegistry.wait_for_acknowledgements`: on a connection of its own, listening for
        acknowledgements (and looking again at least every 0.25 s, as hosts may be lost meanwhile)."""
        state = self.get_acknowledgements(plugin_id)
        if state.complete:
            return state
        try:
            with psycopg.connect(self._dsn, autocommit=True, **connect_options(self._settings)) as conn:
                return _reads.wait_for_acknowledgements(conn, self._q, self.channel, state.plugin_id, timeout_s)
        except psycopg.OperationalError as exc:
            raise self._endpoint.unavailable("waiting for acknowledgements failed", exc) from exc

    def get_plugin(self, plugin_id: str) -> PluginRecord:
        """See :meth:`PluginRegistry.get_plugin`. Raises RegistryUnavailableError during an outage."""
        plugin_id = _plugin_id(plugin_id)
        record = self._run("get_plugin", lambda conn: read_plugin(conn, self._q, plugin_id), plugin_id=plugin_id)
        self._remember(record)
        return record

    def list_plugins(
        self,
        *,
        trust_level: TrustLevel | None = None,
        status: PluginState | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[PluginRecord]:
        """See :meth:`PluginRegistry.list_plugins`. One query on the ``plugins`` view."""
        params = {
            "trust_level": check_trust_level(trust_level, None).value if trust_level is not None else None,
            "status": check_state(status, "status").value if status is not None else None,
            "after": str(after) if after is not None else None,
            "limit": check_limit(limit),
        }
        records = self._run("list_plugins", lambda conn: _reads.plugins(conn, self._q, params))
        with self._state_lock:
            self._known.update((r.id, r) for r in records)
        return records

    def list_status(self, *, after: str | None = None, limit: int | None = None) -> list[PluginStatus]:
        """See :meth:`PluginRegistry.list_status`. One query on the ``plugins`` view, without configuration."""
        params = {"after": str(after) if after is not None else None, "limit": check_limit(limit)}
        return self._run("list_status", lambda conn: _reads.statuses(conn, self._q, params))

    def list_instances(
        self,
        *,
        plugin_id: str | None = None,
        host_id: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        """See :meth:`PluginRegistry.list_instances`."""
        params = {
            "plugin_id": plugin_id,
            "host_id": host_id,
            "after_plugin": after[0] if after else None,
            "after_host": after[1] if after else None,
            "limit": check_limit(limit),
        }
        return self._run("list_instances", lambda conn: _reads.instances(conn, self._q, params))

    def list_hosts(self) -> list[HostRecord]:
        """See :meth:`PluginRegistry.list_hosts`."""
        return self._run("list_hosts", lambda conn: _reads.hosts(conn, self._q))

    def list_versions(self, plugin_id: str) -> list[VersionRecord]:
        """See :meth:`PluginRegistry.list_versions`. Ordered by PEP 440 version (sorted here, not in SQL)."""
        plugin_id = _plugin_id(plugin_id)
        return self._run("list_versions", lambda conn: _reads.versions(conn, self._q, plugin_id), plugin_id=plugin_id)

    def list_capabilities(self, plugin_id: str, version: Version | str | None = None) -> list[CapabilityRecord]:
        """See :meth:`PluginRegistry.list_capabilities`. One query; the version is picked here (PEP 440)."""
        plugin_id = _plugin_id(plugin_id)

        def work(conn: Conn) -> list[CapabilityRecord]:
            return _reads.capabilities(conn, self._q, plugin_id, version)

        return self._run("list_capabilities", work, plugin_id=plugin_id)

    def list_events(
        self,
        *,
        plugin_id: str | None = None,
        event: EventKind | None = None,
        host_id: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """See :meth:`PluginRegistry.list_events`. Raises RegistryUnavailableError during an outage."""
        if limit is not None and limit <= 0:
            return []
        filters = {"plugin_id": plugin_id, "event": event, "host_id": host_id}
        return self._run(
            "list_events", lambda c: _reads.events(c, self.schema, filters, after_id, limit), plugin_id=plugin_id
        )

    def is_active(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active`. False for unknown ids; RegistryUnavailableError in an outage."""
        try:
            plugin_id = check_plugin_id(plugin_id)
        except RegistryError:
            return False
        return self._run("is_active", lambda conn: _reads.is_active(conn, self._q, plugin_id), plugin_id=plugin_id)

    def is_active_here(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active_here`: from this instance's own moves, no query."""
        return self._own.is_active(plugin_id) and not self._closed

    # -- notifications -------------------------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """See :meth:`PluginRegistry.subscribe`: other hosts' status changes and every enable/disable (LISTEN on
        :attr:`channel`, on the link thread). Blocks until the thread listens (at most ``timeout_s``, else
        RegistryUnavailableError; during an outage it returns at once and the thread listens when it can).
        Callbacks run in that thread and must not block; an exception from one is logged. Returns
        ``unsubscribe`` (safe to call twice). A change missed while the link was down (or not yet listening)
        is delivered by the re-sync, with the operator and reason of the change."""
        with self._lock:
            if self._closed or not self._opened:
                raise RegistryError("the PostgreSQL registry is not open; open it before subscribing")
            self._switchboard.subscribers.add(callback)
        self._listener.start()

        def unsubscribe() -> None:
            if not self._switchboard.subscribers.remove(callback) and not self._joined:
                self._listener.stop()

        if self._outbox.available and not self._listener.ready.wait(self._timeout_s):
            unsubscribe()
            raise self._endpoint.unavailable("cannot listen for registry changes", "LISTEN timed out")
        return unsubscribe

    def _beat(self, conn: Conn) -> None:
        """Link thread: this host's heartbeat (joining again if its row went), or a bare round trip."""
        if not self._joined:
            conn.execute("SELECT 1")
            return
        try:
            with self._db.sql_errors("heartbeat", None):
                self._host.beat(conn, self._q)
        except RegistryError as exc:  # another live host holds the id, or a privilege is missing
            if str(exc) != self._beat_error:
                _log.error("registry: host %s cannot write its heartbeat: %s", self.host_id, exc)
                self._beat_error = str(exc)
            return
        self._beat_error = None

    def _resync(self, conn: Conn) -> None:
        """Link thread: every operator's switch this host has not acknowledged (or, for an instance that is not
        a host, every one newer than what it told); and hosts long gone are pruned."""
        rows = conn.execute(self._q["pending_switches"], {"host": self.host_id if self._joined else None}).fetchall()
        self._switchboard.resync(rows)
        if self._joined:
            self._host.prune(conn, self._q)

    # -- internals -----------------------------------------------------------------------------------------

    def _ensure_joined(self, *, now: bool = False) -> None:
        """Enter the fleet (once): a row in hosts (``now``: at once, raising what goes wrong; else queued
        ahead of this host's writes) and the link thread's heartbeat."""
        with self._lock:
            if self._joined or self._closed:
                return
            self._joined = True
        if now:
            self._run("join the fleet", lambda conn: self._host.join(conn, self._q))
        else:
            self._outbox.put(Write(f"join of host {self.host_id!r}", lambda conn: self._host.join(conn, self._q)))
        self._listener.start()

    def _run(self, what: str, work: Callable[[Conn], _T], *, plugin_id: str | None = None) -> _T:
        """A read (or an operator's write) on a pooled connection, after this instance's queued writes."""
        self._require_open()
        if not self._outbox.available or self._db.pool is None:
            raise self._endpoint.unavailable(f"{what} failed ({self._outbox.pending} writes buffered)", "outage")
        self._outbox.wait(self._outbox.last_seq, self._timeout_s)
        try:
            return self._db.run(what, work, plugin_id=plugin_id)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._outbox.mark_unreachable(exc)
            error = self._endpoint.unavailable(f"{what} failed", exc)
            error.plugin_id = plugin_id
            raise error from exc

    def _require_open(self) -> None:
        if self._closed:
            raise RegistryError("the PostgreSQL registry is already closed; create a new one")
        if not self._opened:
            raise RegistryError("the PostgreSQL registry is not open yet; call open() first")

    def _is_ours(self, plugin_id: str) -> bool:
        """Whose switches subscribers here are told of: plugins this host registered (not being a host:
        plugins this instance read)."""
        return self._own.is_registered(plugin_id) or (not self._joined and self._knows(plugin_id))

    def _knows(self, plugin_id: str) -> bool:
        with self._state_lock:
            return plugin_id in self._known

    def _require_plugin(self, plugin_id: str) -> None:
        """Raise PluginNotFoundError unless the plugin exists; asks the database only the first time."""
        if self._knows(plugin_id) or self._own.is_registered(plugin_id):
            return
        if not self._outbox.available:
            raise self._endpoint.unavailable(
                f"set_status of plugin {plugin_id!r} failed (never read by this instance, so it cannot be "
                f"checked offline)",
                "outage",
            )
        self.get_plugin(plugin_id)

    def _remember(self, record: PluginRecord, *, seen: bool = True) -> None:
        """Keep ``record`` as this instance's view; ``seen``: its switch needs no telling when this instance
        first sees the plugin (a later switch does)."""
        with self._state_lock:
            self._known[record.id] = record
        if seen:
            self._switchboard.seen(record.id, record.enabled_seq)
