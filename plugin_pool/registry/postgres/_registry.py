"""PostgresPluginRegistry: open/close, and each method of the registry protocol as a few lines over the parts
that own the work: _outbox (every write, in order, in the background), _listener (notifications, heartbeat,
re-sync), _hosts (this host's row), _schema (migrations, privileges), _sql and _rows."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import orjson
import psycopg
from packaging.utils import canonicalize_version
from packaging.version import Version
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from plugin_pool.errors import PluginNotFoundError, RegistryError, RegistryUnavailableError
from plugin_pool.lifecycle import PluginState, check_transition
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
    pick_version,
)
from plugin_pool.registry.fleet import (
    Acknowledgements,
    HostRecord,
    InstanceRecord,
    RegistryStats,
    default_host_id,
    source_state,
)
from plugin_pool.registry.postgres import _rows, _sql
from plugin_pool.registry.postgres._hosts import HostIdentity
from plugin_pool.registry.postgres._link import Deadlines, Endpoint, LinkSettings, connect_options
from plugin_pool.registry.postgres._listener import Listener
from plugin_pool.registry.postgres._outbox import Outbox, Unreachable, Write
from plugin_pool.registry.postgres._schema import (
    DEFAULT_SCHEMA,
    check_schema,
    check_schema_version,
    migrate,
    permission_error,
)
from plugin_pool.registry.validation import (
    check_actor,
    check_capabilities,
    check_config,
    check_details,
    check_enabled,
    check_event_plugin_id,
    check_hash,
    check_host_id,
    check_limit,
    check_name,
    check_operator_reason,
    check_plugin_id,
    check_reason,
    check_state,
    check_trust_level,
    check_version,
    details_to_storable,
    to_storable,
)

__all__ = ["PostgresPluginRegistry"]

_log = logging.getLogger("plugin_pool.registry")
_T = TypeVar("_T")
_NOTIFY_REASON_MAX_LEN = 500  # a NOTIFY payload must stay under 8,000 bytes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Conn = psycopg.Connection[tuple[Any, ...]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _not_found(plugin_id: object) -> PluginNotFoundError:
    return PluginNotFoundError(
        f"plugin {plugin_id!r:.80} is not registered; register it first",
        plugin_id=plugin_id if isinstance(plugin_id, str) else None,
    )


def _is_plugin_id(plugin_id: object) -> bool:
    try:
        check_plugin_id(plugin_id)
    except RegistryError:
        return False
    return True


class PostgresPluginRegistry:
    """A :class:`~plugin_pool.registry.PluginRegistry` in PostgreSQL, shared by every host using the database.

    Opens on construction (``open=False`` defers it to :meth:`open`); ``open`` and ``close`` are idempotent and
    it works as a ``with`` block. All methods are thread-safe.

    - **Identity.** ``host_id`` (default: :func:`~plugin_pool.registry.fleet.default_host_id`) is the host it
      records for. ``join=True`` (what ``open_registry`` passes for a host) enters the fleet at open: a row in
      ``hosts``, a heartbeat every ``heartbeat_s`` on the link thread; otherwise it joins on its first host
      write (register, set_status, record_event, acknowledge). An operator's tool that only reads and switches
      plugins never joins. ``close`` leaves the fleet (shown gone).
    - **Writes never wait for the database on a call path.** ``set_status``, ``record_event`` and
      ``acknowledge`` are checked here (set_status against this host's own instance), queued in the outbox and
      written by its thread in order, idempotently (client-generated event uids); ``register`` waits up to
      ``timeout_s`` for its write and otherwise returns the record as this instance saw it. During an outage
      up to ``buffer_limit`` writes are kept (overflow counted and logged). Reads wait for this instance's
      earlier writes, then query (each for at most ``timeout_s``) and raise RegistryUnavailableError during
      an outage; ``set_enabled`` (an operator's action) is never buffered.
    - **Liveness.** Every connection has TCP keepalive and TCP_USER_TIMEOUT, every statement a deadline; the
      link thread runs a round trip every ``heartbeat_s`` and re-syncs after every reconnect and every
      ``resync_s``. A host silent for ``heartbeat_s * missed_heartbeats`` is shown lost by everyone.

    Counters: ``dropped_writes``, ``conflicted_writes``, ``flushed_writes``, ``pending_writes`` and
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
        self._endpoint = Endpoint.parse(dsn)
        self._settings = LinkSettings(timeout_s, keepalive_s, tcp_user_timeout_s)
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._migrate = migrate
        self._offline_start = offline_start
        self._buffer_limit = buffer_limit
        self._join_at_open = join
        self._host = HostIdentity(
            id=check_host_id(host_id) if host_id is not None else default_host_id(),
            heartbeat_s=heartbeat_s,
            missed_heartbeats=missed_heartbeats,
            retention_s=host_retention_s,
        )
        self._q = _sql.build_queries(schema)
        self._origin = uuid.uuid4().hex  # tells this instance's notifications from other hosts'
        self._lock = threading.Lock()  # open/close, joining, listener start/stop
        self._state_lock = threading.Lock()  # the views below
        self._pool: ConnectionPool[Conn] | None = None
        self._opened = False
        self._closed = False
        self._joined = False
        self._known: dict[str, PluginRecord] = {}  # plugins this instance registered or read
        self._registered: dict[str, str] = {}  # plugin id -> the version this host registered
        self._instances: dict[str, InstanceRecord] = {}  # this host's own instances
        self._delivered: dict[str, int] = {}  # plugin id -> the last switch number told to subscribers
        self._subscribers = Subscribers()
        self._deadlines = Deadlines(f"plugin-pool-registry-deadlines-{schema}")
        self._outbox = Outbox(
            name=f"plugin-pool-registry-writer-{schema}",
            connect=self._connection,
            endpoint=self._endpoint,
            deadlines=self._deadlines,
            limit=buffer_limit,
            timeout_s=timeout_s,
            retry_max_s=retry_max_s,
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
            dispatch=self._dispatch,
        )
        self._beat_error: str | None = None
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
                self._pool = self._connect()
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
                self._ensure_joined(now=self._pool is not None)
            except BaseException:
                self.close()
                raise
        return self

    def _connect(self) -> ConnectionPool[Conn]:
        """Migrate if asked, check the schema version and open the connection pool. Blocks up to ~timeout_s."""
        if self._migrate:
            migrate(self._dsn, self.schema, settings=self._settings)
        check_schema_version(self._dsn, self.schema, self._endpoint, self._settings)
        pool: ConnectionPool[Conn] = ConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True, **connect_options(self._settings)},
            configure=self._configure,
            check=self._check_connection,
            timeout=self._timeout_s,
            name=f"plugin_pool.registry.{self.schema}",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=self._timeout_s)
        except PoolTimeout as exc:
            pool.close(timeout=0)
            raise self._endpoint.unavailable("cannot open the registry", exc) from exc
        return pool

    def _configure(self, conn: Conn) -> None:
        set_json_dumps(orjson.dumps, conn)
        set_json_loads(orjson.loads, conn)
        with self._deadlines.guard(conn, self._timeout_s, "configure a connection"):
            conn.execute("SET jit = off")  # compiling the fleet view costs more than running it

    def _check_connection(self, conn: Conn) -> None:
        with self._deadlines.guard(conn, self._timeout_s, "check a pooled connection"):
            conn.execute("")

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Conn]:
        """A pooled connection for the writer thread; connects late after an offline start."""
        pool = self._pool or self._connect_late()
        with pool.connection(timeout=min(self._timeout_s, 1.0)) as conn:
            yield conn

    def _connect_late(self) -> ConnectionPool[Conn]:
        try:
            pool = self._connect()
        except RegistryUnavailableError as exc:
            raise Unreachable(str(exc)) from exc
        except RegistryError as exc:  # reachable, but the schema is not usable yet: say so, keep trying
            _log.error("registry: cannot write the buffered writes yet: %s", exc)
            raise Unreachable(str(exc)) from exc
        with self._lock:
            if self._closed:
                pool.close(timeout=0)
                raise Unreachable("closed")
            self._pool = pool
        _log.warning(
            "registry database at %s:%s is reachable: writing %d buffered writes",
            self._endpoint.host,
            self._endpoint.port,
            self._outbox.pending,
        )
        return pool

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
        pool = self._pool
        if pool is not None and self._joined and self._outbox.available:
            try:
                # Bounded tighter than other queries: a host that cannot say goodbye is shown lost soon anyway.
                goodbye_s = min(self._timeout_s, 2.0)
                with (
                    pool.connection(timeout=goodbye_s) as conn,
                    self._deadlines.guard(conn, goodbye_s, "leave the fleet"),
                ):
                    self._host.leave(conn, self._q)
            except (psycopg.Error, PoolTimeout) as exc:
                _log.info("registry: could not mark host %s gone (%s); it will be shown lost", self.host_id, exc)
        if lost:
            _log.error(
                "registry closed with %d buffered writes not written: the database at %s:%s %s",
                lost,
                self._endpoint.host,
                self._endpoint.port,
                "was never reachable" if pool is None else "stayed unreachable",
            )
        self._deadlines.close()
        if pool is not None:
            pool.close(timeout=self._timeout_s)

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
        plugin_id = check_plugin_id(info.id)
        check_actor(actor)
        level = check_trust_level(info.trust_level, plugin_id)
        name = check_name(info.name, plugin_id)
        version = check_version(info.version, plugin_id)
        check_hash(assembly_hash, plugin_id)
        config_json = check_config(config, f"configuration of plugin {plugin_id!r}", plugin_id=plugin_id)
        params = check_capabilities(capabilities, plugin_id)
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
        write = Write(
            f"registration of plugin {plugin_id!r}",
            functools.partial(self._register_in, values=values),
            done=threading.Event(),
        )
        with self._state_lock:
            self._registered[plugin_id] = str(version)
        if self._outbox.put(write):
            if self._outbox.available:
                write.done.wait(self._timeout_s)  # type: ignore[union-attr]
            if not self._outbox.abandon(write):  # written (or refused): its outcome
                if write.error is not None:
                    raise write.error
                record: PluginRecord = write.result
                self._remember(record)
                return record
        # Buffered (the database is unreachable or slow) or dropped: this instance's view of the plugin.
        return self._predicted_registration(plugin_id, name, level, config_json if config is not None else None)

    def _register_in(self, conn: Conn, *, values: Mapping[str, Any]) -> PluginRecord:
        plugin_id, version, assembly_hash = values["id"], values["version"], values["hash"]
        with self._sql_errors("register", plugin_id), conn.transaction():
            params = {**values, "details": Jsonb(details_to_storable(values["details"]))}
            created = conn.execute(self._q["insert_new_plugin"], params).fetchone()
            if created is None:  # known plugin: lock it, so hosts registering it at once take turns
                locked = conn.execute(self._q["lock_plugin"], [plugin_id]).fetchone()
                assert locked is not None  # plugins are never deleted
                existing = conn.execute(self._q["find_version"], [plugin_id, values["version_key"]]).fetchone()
                if existing is not None and existing[1] != assembly_hash:
                    raise RegistryError(
                        f"plugin {plugin_id!r} version {version} is already registered with content hash "
                        f"{existing[1]!r}, not {assembly_hash!r}: changed code needs a new version",
                        plugin_id=plugin_id,
                    )
                conn.execute(self._q["update_plugin"], params)
                if locked[2] != values["trust_level"]:  # a trust change is never silent
                    details = {**values["details"], "previous_trust_level": locked[2]}
                    status = conn.execute(self._q["get_status"], [plugin_id]).fetchone()
                    conn.execute(
                        self._q["insert_event"],
                        self._event_params(
                            uuid.uuid4(),
                            plugin_id,
                            EventKind.REGISTERED,
                            status[0] if status else None,
                            values["actor"],
                            None,
                            details,
                        ),
                    )
                if existing is None:
                    conn.execute(self._q["insert_version"], params)
            else:
                conn.execute(self._q["insert_version"], params)
            return self._read_plugin(conn, plugin_id)

    def _predicted_registration(
        self, plugin_id: str, name: str, level: TrustLevel, config: dict[str, Any] | None
    ) -> PluginRecord:
        with self._state_lock:
            known = self._known.get(plugin_id)
        if known is None:
            at = _utcnow()
            return PluginRecord(
                plugin_id, name, level, PluginState.DISCOVERED, None, MappingProxyType(config or {}), at, at
            )
        return PluginRecord(
            id=plugin_id,
            name=name,
            trust_level=level,
            status=known.status,
            status_reason=known.status_reason,
            config=MappingProxyType(config) if config is not None else known.config,
            registered_at=known.registered_at,
            updated_at=known.updated_at,
            enabled=known.enabled,
            enabled_seq=known.enabled_seq,
            enabled_by=known.enabled_by,
            enabled_reason=known.enabled_reason,
            fleet=known.fleet,
        )

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
        check_actor(actor)
        reason = check_reason(reason)
        extra = check_details(details, plugin_id=plugin_id if isinstance(plugin_id, str) else None)
        status = check_state(status, "status")
        if expected is not None:
            expected = check_state(expected, "expected")
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)
        self._require_open()
        self._require_plugin(plugin_id)
        self._ensure_joined()
        with self._state_lock:
            current = self._instances.get(plugin_id)
            source = source_state(plugin_id, current.state if current else None, expected)
            check_transition(source, status, plugin_id=plugin_id)
            at = _utcnow()
            version = self._registered.get(plugin_id)
            instance = InstanceRecord(
                plugin_id=plugin_id,
                host_id=self.host_id,
                version=version or "0",
                state=status,
                reason=reason,
                started_at=at if status is PluginState.ACTIVE else (current.started_at if current else None),
                updated_at=at,
            )
            details_out = {**extra, "from": source.value}
            if reason is not None:
                details_out["reason"] = reason
            params = {
                **self._event_params(
                    uuid.uuid4(), plugin_id, EventKind.for_state(status), status.value, actor, at, details_out
                ),
                "id": plugin_id,
                "status": status.value,
                "reason": to_storable(reason) if reason is not None else None,
                "version": version,
                "channel": self.channel,
                "payload": orjson.dumps(
                    {"id": plugin_id, "status": status.value, "host": self.host_id, "origin": self._origin}
                ).decode(),
            }
            self._outbox.put(
                Write(
                    f"status of plugin {plugin_id!r} {source.value} -> {status.value}",
                    functools.partial(self._write, "write_status", params),
                )
            )
            self._instances[plugin_id] = instance
        return instance

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
        check_actor(actor)
        plugin_id = check_event_plugin_id(plugin_id)
        extra = check_details(details, plugin_id=plugin_id)
        try:
            kind = EventKind(event)
        except ValueError:
            raise RegistryError(f"unknown audit event kind {event!r:.60}", plugin_id=plugin_id) from None
        if state is not None:
            state = check_state(state, "state")
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
        check_actor(actor)
        reason = check_operator_reason(reason, plugin_id if isinstance(plugin_id, str) else None)
        check_enabled(enabled, str(plugin_id))
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)
        note = reason if reason is None else reason[:_NOTIFY_REASON_MAX_LEN]
        params = {
            **self._event_params(
                uuid.uuid4(),
                plugin_id,
                EventKind.ENABLED if enabled else EventKind.DISABLED,
                None,
                actor,
                None,
                {} if reason is None else {"reason": reason},
            ),
            "id": plugin_id,
            "enabled": enabled,
            "reason": to_storable(reason) if reason is not None else None,
            "channel": self.channel,
            "payload": orjson.dumps(
                {"id": plugin_id, "enabled": enabled, "actor": actor, "reason": note, "origin": self._origin}
            ).decode(),
        }
        params["host"] = self.host_id if self._joined else None

        def work(conn: Conn) -> PluginRecord:
            conn.execute(self._q["set_enabled"], params)
            return self._read_plugin(conn, plugin_id)

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
        self._outbox.put(
            Write(
                f"acknowledgement of switch {change.seq} of plugin {change.plugin_id!r}",
                functools.partial(self._write, "acknowledge", params),
            )
        )

    def _write(self, query: str, params: Mapping[str, Any], conn: Conn) -> None:
        with self._sql_errors(query, params.get("id") or params.get("plugin_id")):
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

    # -- acknowledgements ----------------------------------------------------------------------------------

    def get_acknowledgements(self, plugin_id: str) -> Acknowledgements:
        """See :meth:`PluginRegistry.get_acknowledgements`."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)
        return self._run("get_acknowledgements", lambda conn: self._acks(conn, plugin_id), plugin_id=plugin_id)

    def _acks(self, conn: Conn, plugin_id: str) -> Acknowledgements:
        rows = conn.execute(self._q["acknowledgements"], [plugin_id]).fetchall()
        if not rows:
            raise _not_found(plugin_id)
        done = tuple(r[2] for r in rows if r[2] is not None and r[3])
        pending = tuple(r[2] for r in rows if r[2] is not None and not r[3])
        return Acknowledgements(plugin_id, rows[0][0], rows[0][1], done, pending)

    def wait_for_acknowledgements(self, plugin_id: str, *, timeout_s: float) -> Acknowledgements:
        """See :meth:`PluginRegistry.wait_for_acknowledgements`. Listens on its own connection and looks
        again at every acknowledgement (and at least every 0.25 s, as hosts may be lost meanwhile)."""
        deadline = time.monotonic() + timeout_s
        state = self.get_acknowledgements(plugin_id)
        if state.complete:
            return state
        try:
            with psycopg.connect(self._dsn, autocommit=True, **connect_options(self._settings)) as conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                while True:
                    state = self._acks(conn, plugin_id)
                    remaining = deadline - time.monotonic()
                    if state.complete or remaining <= 0:
                        return state
                    for _ in conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
                        pass
        except psycopg.OperationalError as exc:
            raise self._endpoint.unavailable("waiting for acknowledgements failed", exc) from exc

    # -- reads ---------------------------------------------------------------------------------------------

    def get_plugin(self, plugin_id: str) -> PluginRecord:
        """See :meth:`PluginRegistry.get_plugin`. Raises RegistryUnavailableError during an outage."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)
        record = self._run("get_plugin", lambda conn: self._read_plugin(conn, plugin_id), plugin_id=plugin_id)
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

        def work(conn: Conn) -> list[PluginRecord]:
            return [_rows.plugin_record(row) for row in conn.execute(self._q["list_plugins"], params)]

        records = self._run("list_plugins", work)
        with self._state_lock:
            for record in records:
                self._known[record.id] = record
        return records

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

        def work(conn: Conn) -> list[InstanceRecord]:
            return [_rows.instance_record(row) for row in conn.execute(self._q["list_instances"], params)]

        return self._run("list_instances", work)

    def list_hosts(self) -> list[HostRecord]:
        """See :meth:`PluginRegistry.list_hosts`."""
        return self._run("list_hosts", lambda conn: [_rows.host_record(r) for r in conn.execute(self._q["list_hosts"])])

    def list_versions(self, plugin_id: str) -> list[VersionRecord]:
        """See :meth:`PluginRegistry.list_versions`. Ordered by PEP 440 version (sorted here, not in SQL)."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)

        def work(conn: Conn) -> list[VersionRecord]:
            rows = conn.execute(self._q["list_versions"], [plugin_id]).fetchall()
            if not rows and conn.execute(self._q["plugin_exists"], [plugin_id]).fetchone() is None:
                raise _not_found(plugin_id)
            return [VersionRecord(r[0], r[1], Version(r[2]), r[3], r[4]) for r in rows]

        return sorted(self._run("list_versions", work, plugin_id=plugin_id), key=lambda v: v.version)

    def list_capabilities(self, plugin_id: str, version: Version | str | None = None) -> list[CapabilityRecord]:
        """See :meth:`PluginRegistry.list_capabilities`. One query; the version is picked here (PEP 440)."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)

        def work(conn: Conn) -> list[tuple[Any, ...]]:
            rows = conn.execute(self._q["list_capabilities"], [plugin_id]).fetchall()
            if not rows and conn.execute(self._q["plugin_exists"], [plugin_id]).fetchone() is None:
                raise _not_found(plugin_id)
            return rows

        rows = self._run("list_capabilities", work, plugin_id=plugin_id)
        versions = {r[0]: VersionRecord(r[0], plugin_id, Version(r[1]), None, _EPOCH) for r in rows}
        chosen = pick_version(list(versions.values()), version)
        if chosen is None:
            if version is None:
                return []
            raise PluginNotFoundError(f"plugin {plugin_id!r} has no version {version}", plugin_id=plugin_id)
        return sorted(
            (CapabilityRecord(r[0], r[2], MappingProxyType(r[3])) for r in rows if r[0] == chosen.id and r[2]),
            key=lambda c: c.capability,
        )

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
        where: list[sql.Composable] = [sql.SQL("id > %(after_id)s")]
        params: dict[str, Any] = {"after_id": int(after_id), "limit": limit}
        for column, value in (("plugin_id", plugin_id), ("event", event), ("host_id", host_id)):
            if value is not None:
                where.append(sql.SQL("{} = %({})s").format(sql.Identifier(column), sql.SQL(column)))
                params[column] = EventKind(value).value if column == "event" else str(value)
        query = _sql.events_query(self.schema, where)

        def work(conn: Conn) -> list[AuditEvent]:
            return [_rows.audit_event(row) for row in conn.execute(query, params)]

        return self._run("list_events", work, plugin_id=plugin_id)

    def is_active(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active`. False for unknown ids; RegistryUnavailableError in an outage."""
        if not _is_plugin_id(plugin_id):
            return False

        def work(conn: Conn) -> bool:
            row = conn.execute(self._q["is_active"], [plugin_id]).fetchone()
            return bool(row and row[0])

        return self._run("is_active", work, plugin_id=plugin_id)

    def is_active_here(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active_here`: from this instance's own moves, no query."""
        with self._state_lock:
            instance = self._instances.get(plugin_id)
        return instance is not None and instance.state is PluginState.ACTIVE and not self._closed

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
            self._subscribers.add(callback)
        self._listener.start()

        def unsubscribe() -> None:
            self._subscribers.remove(callback)
            if not len(self._subscribers) and not self._joined:
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
            with self._sql_errors("heartbeat", None):
                self._host.beat(conn, self._q)
        except RegistryError as exc:  # another live host holds the id, or a privilege is missing
            if str(exc) != self._beat_error:
                _log.error("registry: host %s cannot write its heartbeat: %s", self.host_id, exc)
                self._beat_error = str(exc)
            return
        self._beat_error = None

    def _resync(self, conn: Conn) -> None:
        """Link thread: deliver every operator's switch this host has not acknowledged (or, for an instance that
        is not a host, every one newer than what it told its subscribers); prune hosts long gone."""
        rows = conn.execute(self._q["pending_switches"], {"host": self.host_id if self._joined else None}).fetchall()
        for plugin_id, enabled, seq, actor, reason in rows:
            change = RegistryChange(plugin_id, "enabled", enabled=enabled, actor=actor, reason=reason, seq=seq)
            self._consider_switch(change, redeliver=self._joined)
        if self._joined:
            self._host.prune(conn, self._q)

    def _dispatch(self, payload: str) -> None:
        """Link thread: one notification."""
        try:
            message = orjson.loads(payload)
            if "ack" in message:
                return  # for wait_for_acknowledgements
            plugin_id = str(message["id"])
            if "enabled" in message:
                enabled, seq = message["enabled"], message["seq"]
                if not isinstance(enabled, bool) or not isinstance(seq, int):
                    raise ValueError(enabled)
                change = RegistryChange(
                    plugin_id,
                    "enabled",
                    enabled=enabled,
                    actor=message.get("actor"),
                    reason=message.get("reason"),
                    seq=seq,
                )
                self._consider_switch(change, redeliver=False)
                return
            if message.get("origin") == self._origin:
                return  # this instance's own status move
            status = PluginState(message["status"])
            host = message.get("host")
        except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError, TypeError):
            _log.warning("registry listener ignored a malformed notification: %.200r", payload)
            return
        self._subscribers.notify(RegistryChange(plugin_id, "status", status=status, host=host))

    def _consider_switch(self, change: RegistryChange, *, redeliver: bool) -> None:
        """Tell subscribers of a switch of a plugin this host registered (or, not being a host, knows); a host
        acknowledges at once what nobody here applies."""
        assert change.seq is not None
        with self._state_lock:
            seen = self._delivered.get(change.plugin_id)
            if seen is not None and seen >= change.seq and not redeliver:
                return
            self._delivered[change.plugin_id] = max(seen or 0, change.seq)
            ours = change.plugin_id in self._registered or (not self._joined and change.plugin_id in self._known)
        told = self._subscribers.notify(change) if ours else 0
        if self._joined and not told:
            self.acknowledge(change)

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
        """Run a read (or an operator's write) on a pooled connection, after this instance's queued writes."""
        self._require_open()
        if not self._outbox.available or self._pool is None:
            raise self._endpoint.unavailable(f"{what} failed ({self._outbox.pending} writes buffered)", "outage")
        self._outbox.wait(self._outbox.last_seq, self._timeout_s)
        try:
            with (
                self._pool.connection() as conn,
                self._deadlines.guard(conn, self._timeout_s, what),
                self._sql_errors(what, plugin_id),
            ):
                return work(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._outbox.mark_unreachable(exc)
            error = self._endpoint.unavailable(f"{what} failed", exc)
            error.plugin_id = plugin_id
            raise error from exc

    @contextlib.contextmanager
    def _sql_errors(self, what: str, plugin_id: str | None) -> Iterator[None]:
        """Turn database refusals into the registry's errors; OperationalError (the link) passes through."""
        try:
            yield
        except psycopg.errors.InsufficientPrivilege as exc:
            raise permission_error(exc, role=self._endpoint.user or "?", schema=self.schema, doing=what) from exc
        except psycopg.errors.ForeignKeyViolation as exc:
            if plugin_id is not None and "plugin" in str(exc.diag.constraint_name or ""):
                raise _not_found(plugin_id) from exc
            raise RegistryError(f"registry {what} failed: {exc}", plugin_id=plugin_id) from exc
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise RegistryError(f"registry {what} failed: {exc}", plugin_id=plugin_id) from exc

    def _require_open(self) -> None:
        if self._closed:
            raise RegistryError("the PostgreSQL registry is already closed; create a new one")
        if not self._opened:
            raise RegistryError("the PostgreSQL registry is not open yet; call open() first")

    def _require_plugin(self, plugin_id: str) -> None:
        """Raise PluginNotFoundError unless the plugin exists; asks the database only the first time."""
        with self._state_lock:
            if plugin_id in self._known or plugin_id in self._registered:
                return
        if not self._outbox.available:
            raise self._endpoint.unavailable(
                f"set_status of plugin {plugin_id!r} failed (never read by this instance, so it cannot be "
                f"checked offline)",
                "outage",
            )
        self.get_plugin(plugin_id)

    def _read_plugin(self, conn: Conn, plugin_id: str) -> PluginRecord:
        row = conn.execute(self._q["get_plugin"], [plugin_id]).fetchone()
        if row is None:
            raise _not_found(plugin_id)
        return _rows.plugin_record(row)

    def _remember(self, record: PluginRecord, *, seen: bool = True) -> None:
        """Keep ``record`` as this instance's view; ``seen``: its switch needs no telling when this instance
        first sees the plugin (a later switch does)."""
        with self._state_lock:
            self._known[record.id] = record
            if seen:
                self._delivered.setdefault(record.id, record.enabled_seq)
