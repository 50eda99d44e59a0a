"""The PostgreSQL registry: the seed's ``PostgresPluginRegistry``, shared by every host that uses one database.

The only module of plugin_pool that imports psycopg (setup.cfg checks it). Import it explicitly::

    from plugin_pool.registry.postgres import PostgresPluginRegistry, migrate

    migrate(dsn)                                   # or: plugin-pool registry migrate
    with PostgresPluginRegistry(dsn) as registry:
        host = PluginHost(config, registry=registry)

- Tables live in one schema (``schema``, default ``plugin_pool``), created by :func:`migrate` from the ordered
  SQL files in ``plugin_pool/registry/migrations``, applied in one transaction under an advisory lock.
- Every query is parameterized; the schema name is checked and quoted as an identifier. Input is checked
  with the checks the in-memory backend uses before anything reaches SQL.
- ``register`` is idempotent under races (``INSERT ... ON CONFLICT``); ``set_status`` is a compare-and-set
  ``UPDATE ... WHERE status = expected`` that writes the audit event and NOTIFYs other hosts in the same
  statement. ``set_enabled`` (an operator's disable/enable) does the same for the ``enabled`` flag.
  :meth:`PostgresPluginRegistry.subscribe` delivers other hosts' status changes and every disable/enable
  (LISTEN), and re-reads the flags whenever its connection comes back.
- Outages: an unreachable database at open raises :class:`RegistryUnavailableError` naming host and port,
  unless ``offline_start``: then the registry starts in outage mode. Lost while running (or never reached),
  ``register``, ``set_status`` and ``record_event`` are kept in a bounded buffer, in order, and written by a
  retry thread when the database is back; overflow is counted in ``dropped_writes`` and logged, and a
  write the database refuses on replay in ``conflicted_writes``. Reads and ``set_enabled`` raise
  RegistryUnavailableError until the buffer is written.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import orjson
import psycopg
from packaging.utils import canonicalize_version
from packaging.version import InvalidVersion, Version
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from plugin_pool.errors import (
    IllegalTransitionError,
    PluginNotFoundError,
    RegistryConflictError,
    RegistryError,
    RegistryUnavailableError,
)
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
    check_actor,
    check_json,
    check_plugin_id,
    check_reason,
    pick_version,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "PostgresPluginRegistry",
    "RegistryUnavailableError",
    "list_migrations",
    "migrate",
]

_log = logging.getLogger("plugin_pool.registry")

DEFAULT_SCHEMA = "plugin_pool"
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,47}")  # <= 48 so the channel name fits in 63 bytes
_HASH_MAX_LEN = 200
_VERSION_MAX_LEN = 100
_NAME_MAX_LEN = 200
_EVENT_PLUGIN_ID_MAX_LEN = 200
_MIGRATION_RE = re.compile(r"([0-9]{4})_[a-z0-9_]+\.sql")
_STATUS_RETRIES = 3
_T = TypeVar("_T")

_NOTIFY_REASON_MAX_LEN = 500  # a NOTIFY payload must stay under 8,000 bytes


# -- endpoint, schema and migrations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: str
    dbname: str

    @classmethod
    def parse(cls, dsn: str) -> _Endpoint:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise RegistryError(f"the registry DSN is invalid: {exc}") from None
        host = str(params.get("host") or params.get("hostaddr") or "localhost (Unix socket)")
        return cls(host=host, port=str(params.get("port") or "5432"), dbname=str(params.get("dbname") or ""))

    def unavailable(self, what: str, cause: BaseException | str) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"{what}: the registry database at host {self.host} port {self.port} (database {self.dbname!r}) "
            f"is unreachable ({str(cause).strip() or type(cause).__name__}); check that PostgreSQL runs "
            f"there and that the registry DSN (PLUGIN_POOL_REGISTRY_DSN) points at it",
            host=self.host,
            port=self.port,
        )


def _check_schema(schema: object) -> str:
    if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema):  # fullmatch: no trailing newline
        raise RegistryError(
            f"registry schema name {schema!r} is invalid: use 1-48 characters, a lowercase letter or '_' "
            f"first, then lowercase letters, digits or '_'"
        )
    return schema


def _connect_timeout(timeout_s: float) -> int:
    return max(2, int(timeout_s + 0.999))  # libpq takes whole seconds and treats 1 as 2


def list_migrations() -> list[tuple[int, str, str]]:
    """Return the shipped migrations as ``(version, name, sql)``, in order. Pure; reads package data."""
    folder = importlib.resources.files("plugin_pool.registry") / "migrations"
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RegistryError(f"two registry migrations share a number: {[n for _, n, _ in found]}")
    return found


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"plugin_pool.registry.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migrate(dsn: str, schema: str = DEFAULT_SCHEMA, *, timeout_s: float = 5.0) -> list[str]:
    """Bring ``schema`` up to the newest migration; return the names applied (empty when already current).

    Blocks. Safe to call twice and from several hosts at once: every migration runs in one transaction
    holding a transaction-scoped advisory lock per schema, and each applied file is recorded in
    ``schema_version``. Raises RegistryUnavailableError (naming host and port) if the database is unreachable.
    This is what ``plugin-pool registry migrate`` calls.
    """
    _check_schema(schema)
    endpoint = _Endpoint.parse(dsn)
    migrations = list_migrations()
    name = sql.Identifier(schema)
    try:
        conn = psycopg.connect(dsn, connect_timeout=_connect_timeout(timeout_s))
    except psycopg.OperationalError as exc:
        raise endpoint.unavailable(f"cannot migrate registry schema {schema!r}", exc) from exc
    applied: list[str] = []
    try:
        with conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema)])
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(schema, "schema_version"))
            )
            done = {
                row[0]
                for row in conn.execute(
                    sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, "schema_version"))
                )
            }
            conn.execute(sql.SQL("SET LOCAL search_path TO {}, pg_catalog").format(name))
            for version, migration, text in migrations:
                if version in done:
                    continue
                conn.execute(text.encode("utf-8"), prepare=False)  # several statements, no parameters
                conn.execute(
                    sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                        sql.Identifier(schema, "schema_version")
                    ),
                    [version, migration],
                )
                applied.append(migration)
    except psycopg.OperationalError as exc:
        raise endpoint.unavailable(f"migrating registry schema {schema!r} failed", exc) from exc
    except psycopg.Error as exc:
        raise RegistryError(f"migrating registry schema {schema!r} failed: {exc}") from exc
    if applied:
        _log.info("registry schema %s migrated: %s", schema, ", ".join(applied))
    return applied


# -- queries -------------------------------------------------------------------------------------------------

_PLUGIN_COLUMNS = "id, name, trust_level, status, status_reason, config_json, registered_at, updated_at, enabled"

_TEMPLATES: dict[str, str] = {
    "insert_new_plugin": f"""
        WITH p AS (
            INSERT INTO {{plugins}} ({_PLUGIN_COLUMNS})
            VALUES (%(id)s, %(name)s, %(trust_level)s, 'discovered', NULL, %(config)s, now(), now(), true)
            ON CONFLICT (id) DO NOTHING
            RETURNING {_PLUGIN_COLUMNS}
        ), e AS (
            INSERT INTO {{events}} (plugin_id, event, state, actor, at, details)
            SELECT id, 'registered', 'discovered', %(actor)s, registered_at, %(details)s FROM p
        )
        SELECT {_PLUGIN_COLUMNS} FROM p""",
    "lock_plugin": f"SELECT {_PLUGIN_COLUMNS} FROM {{plugins}} WHERE id = %s FOR UPDATE",
    "find_version": "SELECT id, assembly_hash FROM {versions} WHERE plugin_id = %s AND version_key = %s",
    "update_plugin": f"""
        UPDATE {{plugins}} SET name = %(name)s, trust_level = %(trust_level)s,
            config_json = COALESCE(%(config)s, config_json)
        WHERE id = %(id)s
        RETURNING {_PLUGIN_COLUMNS}""",
    "insert_version": """
        WITH v AS (
            INSERT INTO {versions} (plugin_id, version, version_key, assembly_hash, published_at)
            VALUES (%(id)s, %(version)s, %(version_key)s, %(hash)s, now())
            ON CONFLICT (plugin_id, version_key) DO NOTHING
            RETURNING id
        )
        INSERT INTO {capabilities} (plugin_version_id, capability, parameters)
        SELECT v.id, c.key, c.value FROM v, jsonb_each(%(capabilities)s) AS c""",
    "get_status": "SELECT status FROM {plugins} WHERE id = %s",
    "compare_and_set": f"""
        WITH u AS (
            UPDATE {{plugins}} SET status = %(status)s, status_reason = %(reason)s,
                updated_at = COALESCE(%(at)s::timestamptz, now())
            WHERE id = %(id)s AND status = %(from)s
            RETURNING {_PLUGIN_COLUMNS}
        ), e AS (
            INSERT INTO {{events}} (plugin_id, event, state, actor, at, details)
            SELECT id, %(event)s, status, %(actor)s, updated_at, %(details)s FROM u
        )
        SELECT {_PLUGIN_COLUMNS}, pg_notify(%(channel)s, %(payload)s)::text FROM u""",
    "set_enabled": f"""
        WITH u AS (
            UPDATE {{plugins}} SET enabled = %(enabled)s, updated_at = now()
            WHERE id = %(id)s AND enabled <> %(enabled)s
            RETURNING {_PLUGIN_COLUMNS}
        ), e AS (
            INSERT INTO {{events}} (plugin_id, event, state, actor, at, details)
            SELECT id, %(event)s, status, %(actor)s, updated_at, %(details)s FROM u
        )
        SELECT {_PLUGIN_COLUMNS}, pg_notify(%(channel)s, %(payload)s)::text FROM u""",
    "list_enabled": "SELECT id, enabled FROM {plugins}",
    "insert_event": """
        INSERT INTO {events} (plugin_id, event, state, actor, at, details)
        VALUES (%(plugin_id)s, %(event)s, %(state)s, %(actor)s, COALESCE(%(at)s::timestamptz, now()), %(details)s)
        RETURNING id, at""",
    "get_plugin": f"SELECT {_PLUGIN_COLUMNS} FROM {{plugins}} WHERE id = %s",
    "list_plugins": f"""
        SELECT {_PLUGIN_COLUMNS} FROM {{plugins}}
        WHERE (%(trust_level)s::text IS NULL OR trust_level = %(trust_level)s)
          AND (%(status)s::text IS NULL OR status = %(status)s)
        ORDER BY id""",
    "is_active": "SELECT status = 'active' FROM {plugins} WHERE id = %s",
    "list_versions": """
        SELECT id, plugin_id, version, assembly_hash, published_at FROM {versions} WHERE plugin_id = %s""",
    "list_capabilities": """
        SELECT v.id, v.version, c.capability, c.parameters
        FROM {versions} v LEFT JOIN {capabilities} c ON c.plugin_version_id = v.id
        WHERE v.plugin_id = %s""",
    "plugin_exists": "SELECT 1 FROM {plugins} WHERE id = %s",
    "schema_version": "SELECT max(version) FROM {schema_version}",
}
_EVENT_COLUMNS = "SELECT id, plugin_id, event, state, actor, at, details FROM {events}"


def _build_queries(schema: str) -> dict[str, sql.Composed]:
    tables = {
        "plugins": sql.Identifier(schema, "plugins"),
        "versions": sql.Identifier(schema, "plugin_versions"),
        "capabilities": sql.Identifier(schema, "plugin_capabilities"),
        "events": sql.Identifier(schema, "audit_events"),
        "schema_version": sql.Identifier(schema, "schema_version"),
    }
    return {key: sql.SQL(text).format(**tables) for key, text in _TEMPLATES.items()}


# -- rows ----------------------------------------------------------------------------------------------------


def _plugin_record(row: tuple[Any, ...]) -> PluginRecord:
    return PluginRecord(
        id=row[0],
        name=row[1],
        trust_level=TrustLevel(row[2]),
        status=PluginState(row[3]),
        status_reason=row[4],
        config=MappingProxyType(row[5]),
        registered_at=row[6],
        updated_at=row[7],
        enabled=row[8],
    )


def _audit_event(row: tuple[Any, ...]) -> AuditEvent:
    return AuditEvent(
        id=row[0],
        plugin_id=row[1],
        event=EventKind(row[2]),
        state=PluginState(row[3]) if row[3] is not None else None,
        actor=row[4],
        at=row[5],
        details=MappingProxyType(row[6]),
    )


def _configure_connection(conn: psycopg.Connection[Any]) -> None:
    set_json_dumps(orjson.dumps, conn)
    set_json_loads(orjson.loads, conn)


# -- buffered writes -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PendingWrite:
    """A write made while the database was unreachable, replayed in order when it is back."""

    kind: Literal["register", "status", "event"]
    plugin_id: str | None
    actor: str
    at: datetime
    details: dict[str, Any]
    event: EventKind
    state: PluginState | None  # the target status of a status write
    expected: PluginState | None = None  # the status the write moves from (status writes)
    reason: str | None = None
    values: Mapping[str, Any] | None = None  # the query parameters of a register write

    def describe(self) -> str:
        if self.kind == "register":
            return f"registration of plugin {self.plugin_id!r}"
        if self.kind == "status":
            return f"status of plugin {self.plugin_id!r} {self.expected and self.expected.value} -> {self.state}"
        return f"audit event {self.event.value} of plugin {self.plugin_id!r}"


# -- the registry --------------------------------------------------------------------------------------------


class PostgresPluginRegistry:
    """A :class:`~plugin_pool.registry.PluginRegistry` in PostgreSQL, shared by every host using the database.

    Opens on construction (``open=False`` defers it to :meth:`open`); ``open`` and ``close`` are idempotent and
    it works as a ``with`` block. All methods are thread-safe and block on the database, each query for at
    most ``timeout_s`` to get a pooled connection. ``migrate=True`` runs :func:`migrate` on open; otherwise
    the schema must already be migrated. ``buffer_limit`` bounds the writes kept during an outage;
    ``retry_max_s`` caps the backoff between reconnection attempts. ``offline_start=True``: when the
    database cannot be reached at open, start anyway in outage mode (registrations, status changes and audit
    events are buffered against this instance's own view, and written once the database is reachable)
    instead of raising RegistryUnavailableError.

    Counters (read them any time): ``dropped_writes`` (outage writes that did not fit the buffer),
    ``conflicted_writes`` (buffered status changes refused on replay because another host changed the
    plugin meanwhile), ``flushed_writes``; ``pending_writes`` is the buffer's current length.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 5.0,
        buffer_limit: int = 10_000,
        retry_max_s: float = 5.0,
        migrate: bool = False,
        offline_start: bool = False,
        open: bool = True,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise RegistryError(
                f"registry pool sizes are invalid: need 0 <= min_size ({min_size}) <= max_size "
                f"({max_size}) and max_size >= 1"
            )
        if timeout_s <= 0 or retry_max_s <= 0 or buffer_limit < 0:
            raise RegistryError("registry timeout_s and retry_max_s must be > 0 and buffer_limit >= 0")
        self.schema = _check_schema(schema)
        self.channel = f"{schema}_status"
        self._dsn = dsn
        self._endpoint = _Endpoint.parse(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._buffer_limit = buffer_limit
        self._retry_max_s = retry_max_s
        self._migrate = migrate
        self._offline_start = offline_start
        self._q = _build_queries(schema)
        self._origin = uuid.uuid4().hex  # tells this instance's notifications from other hosts'
        self._lock = threading.Lock()  # open/close and listener start/stop
        self._state_lock = threading.Lock()  # outage flag, buffer, known records, counters
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] | None = None
        self._opened = False
        self._closed = False
        self._outage = False
        self._buffer: deque[_PendingWrite] = deque()
        self._known: dict[str, PluginRecord] = {}
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._subscribers = Subscribers()
        self._listener: threading.Thread | None = None
        self._listener_stop = threading.Event()
        self.dropped_writes = 0
        self.conflicted_writes = 0
        self.flushed_writes = 0
        if open:
            self.open()

    # -- open / close --------------------------------------------------------------------------------------

    def open(self) -> PostgresPluginRegistry:
        """Connect (and migrate if asked). Blocks up to about ``timeout_s``; idempotent.

        Raises RegistryUnavailableError naming host and port if the database cannot be reached (unless
        ``offline_start``: then it logs a warning and starts buffering), and RegistryError if the schema is
        not migrated or the registry is already closed.
        """
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
                self._enter_outage(exc, announce=False)
            self._opened = True
            return self

    def _connect(self) -> ConnectionPool[psycopg.Connection[tuple[Any, ...]]]:
        """Migrate if asked, check the schema version and open the connection pool. Blocks up to ~timeout_s."""
        if self._migrate:
            migrate(self._dsn, self.schema, timeout_s=self._timeout_s)
        self._check_schema_version()
        pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True, "connect_timeout": _connect_timeout(self._timeout_s)},
            configure=_configure_connection,
            check=ConnectionPool.check_connection,
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

    def close(self) -> None:
        """Stop the listener and retry threads, try once more to write buffered writes, close the pool.

        Blocks up to about ``timeout_s``; idempotent. Writes still buffered are logged (with their count) as lost.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._listener_stop.set()
            threads = [t for t in (self._flusher, self._listener) if t is not None]
        for thread in threads:
            thread.join(2 * self._timeout_s + 1.0)
        with self._lock:
            pool = self._pool
        if pool is not None and self._buffer and self._flush_once(pool):
            _log.info("registry: buffered writes written on close")
        with self._state_lock:
            lost = len(self._buffer)
            self._buffer.clear()
        if lost:
            self.dropped_writes += lost
            _log.error(
                "registry closed with %d buffered writes not written: the database at %s:%s %s",
                lost,
                self._endpoint.host,
                self._endpoint.port,
                "was never reachable" if pool is None else "stayed unreachable",
            )
        if pool is not None:
            pool.close(timeout=self._timeout_s)

    def __enter__(self) -> PostgresPluginRegistry:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pending_writes(self) -> int:
        """How many writes wait in the outage buffer. Never blocks on I/O."""
        with self._state_lock:
            return len(self._buffer)

    @property
    def is_available(self) -> bool:
        """False while the database is known unreachable (writes are being buffered). Never blocks on I/O."""
        return not self._outage

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
        """See :meth:`PluginRegistry.register`. One transaction; safe against hosts registering at once.

        During an outage the registration is buffered and the record returned as this instance last saw the
        plugin (a plugin it never saw is returned Discovered); a hash conflict found when it is written
        later is logged and counted in ``conflicted_writes``.
        """
        plugin_id = check_plugin_id(info.id)
        check_actor(actor)
        level = _check_trust_level(info.trust_level, plugin_id)
        name = _check_text(info.name, "name", _NAME_MAX_LEN, plugin_id)
        version = _check_version(info.version, plugin_id)
        if assembly_hash is not None:
            _check_text(assembly_hash, "assembly_hash", _HASH_MAX_LEN, plugin_id)
        config_json = check_json(config, f"configuration of plugin {plugin_id!r}", plugin_id=plugin_id)
        params = {
            c.name: check_json(c.parameters, f"parameters of capability {c.name!r}") for c in capabilities.values()
        }
        values = {
            "id": plugin_id,
            "name": name,
            "trust_level": level.value,
            "config": Jsonb(config_json) if config is not None else None,
            "actor": actor,
            "details": Jsonb({"version": str(version), "trust_level": level.value}),
            "version": str(version),
            "version_key": canonicalize_version(version),
            "hash": assembly_hash,
            "capabilities": Jsonb(params),
            "new_config": Jsonb(config_json),
        }
        try:
            record = self._run(
                "register", lambda conn: self._register_in(conn, values), plugin_id=plugin_id, buffering=True
            )
        except _Offline:
            return self._buffer_register(values, info, level, config_json if config is not None else None)
        self._remember(record)
        return record

    def _register_in(self, conn: psycopg.Connection[tuple[Any, ...]], values: Mapping[str, Any]) -> PluginRecord:
        plugin_id, version, assembly_hash = values["id"], values["version"], values["hash"]
        with conn.transaction():
            row = conn.execute(self._q["insert_new_plugin"], {**values, "config": values["new_config"]}).fetchone()
            if row is None:  # known plugin: lock it, so hosts registering it at once take turns
                locked = conn.execute(self._q["lock_plugin"], [plugin_id]).fetchone()
                assert locked is not None  # plugins are never deleted
                existing = conn.execute(self._q["find_version"], [plugin_id, values["version_key"]]).fetchone()
                if existing is not None and existing[1] != assembly_hash:
                    raise RegistryError(
                        f"plugin {plugin_id!r} version {version} is already registered with content hash "
                        f"{existing[1]!r}, not {assembly_hash!r}: changed code needs a new version",
                        plugin_id=plugin_id,
                    )
                row = conn.execute(self._q["update_plugin"], values).fetchone()
                assert row is not None  # locked above
                if locked[2] != values["trust_level"]:  # a trust change is never silent
                    previous = {"previous_trust_level": locked[2]}
                    audit = _PendingWrite(
                        "event",
                        plugin_id,
                        values["actor"],
                        _utcnow(),
                        {**values["details"].obj, **previous},
                        EventKind.REGISTERED,
                        PluginState(row[3]),
                    )
                    self._insert_event(conn, audit, at=None)
                if existing is not None:
                    return _plugin_record(row)
            conn.execute(self._q["insert_version"], values)
            return _plugin_record(row)

    def set_status(
        self,
        plugin_id: str,
        status: PluginState,
        *,
        expected: PluginState | None,
        actor: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> PluginRecord:
        """See :meth:`PluginRegistry.set_status`. One atomic statement: compare-and-set, audit, NOTIFY.

        During an outage the change is checked against the last record this instance saw, buffered and
        returned as it will be stored; it raises RegistryUnavailableError for a plugin this instance never saw.
        """
        check_actor(actor)
        reason = check_reason(reason)
        extra = check_json(details, "event details", plugin_id=plugin_id)
        status = _check_state(status, "status")
        if expected is not None:
            expected = _check_state(expected, "expected")
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)
        if self._outage:
            return self._buffer_status(plugin_id, status, expected, actor, reason, extra)

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> PluginRecord:
            return self._set_status(conn, plugin_id, status, expected, actor, reason, extra, None)

        try:
            record = self._run("set_status", work, plugin_id=plugin_id, buffering=True)
        except _Offline:
            return self._buffer_status(plugin_id, status, expected, actor, reason, extra)
        self._remember(record)
        return record

    def record_event(
        self,
        event: EventKind,
        *,
        plugin_id: str | None,
        actor: str,
        state: PluginState | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """See :meth:`PluginRegistry.record_event`.

        During an outage the event is buffered and returned with ``id`` 0 (its id is assigned when written).
        """
        check_actor(actor)
        extra = check_json(details, "event details", plugin_id=plugin_id)
        try:
            kind = EventKind(event)
        except ValueError:
            raise RegistryError(f"unknown audit event kind {event!r}", plugin_id=plugin_id) from None
        if state is not None:
            state = _check_state(state, "state")
        if plugin_id is not None and (
            not isinstance(plugin_id, str) or not plugin_id or len(plugin_id) > _EVENT_PLUGIN_ID_MAX_LEN
        ):
            raise RegistryError(
                f"audit event plugin id {plugin_id!r} is invalid: expected a string of 1-{_EVENT_PLUGIN_ID_MAX_LEN} "
                f"characters"
            )
        pending = _PendingWrite("event", plugin_id, actor, _utcnow(), extra, kind, state)
        if self._outage:
            return self._buffer_event(pending)

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> AuditEvent:
            return self._insert_event(conn, pending, at=None)

        try:
            return self._run("record_event", work, plugin_id=plugin_id, buffering=True)
        except _Offline:
            return self._buffer_event(pending)

    def set_enabled(self, plugin_id: str, enabled: bool, *, actor: str, reason: str | None = None) -> PluginRecord:
        """See :meth:`PluginRegistry.set_enabled`. One statement: the flag, its audit event and the NOTIFY.

        An operator's action, so it is not buffered: during an outage it raises RegistryUnavailableError.
        """
        check_actor(actor)
        reason = check_reason(reason)
        if not isinstance(enabled, bool):
            raise RegistryError(f"enabled must be True or False, got {enabled!r}", plugin_id=plugin_id)
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)
        note = reason if reason is None or len(reason) <= _NOTIFY_REASON_MAX_LEN else reason[:_NOTIFY_REASON_MAX_LEN]
        payload = orjson.dumps(
            {"id": plugin_id, "enabled": enabled, "actor": actor, "reason": note, "origin": self._origin}
        ).decode()
        params = {
            "id": plugin_id,
            "enabled": enabled,
            "event": (EventKind.ENABLED if enabled else EventKind.DISABLED).value,
            "actor": actor,
            "details": Jsonb({} if reason is None else {"reason": reason}),
            "channel": self.channel,
            "payload": payload,
        }

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> PluginRecord:
            row = conn.execute(self._q["set_enabled"], params).fetchone()
            if row is None:  # unknown, or already so
                return self._read_plugin(conn, plugin_id)
            return _plugin_record(row)

        record = self._run("set_enabled", work, plugin_id=plugin_id)
        self._remember(record)
        return record

    # -- reads ---------------------------------------------------------------------------------------------

    def get_plugin(self, plugin_id: str) -> PluginRecord:
        """See :meth:`PluginRegistry.get_plugin`. Raises RegistryUnavailableError during an outage."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)

        record = self._run("get_plugin", lambda conn: self._read_plugin(conn, plugin_id), plugin_id=plugin_id)
        self._remember(record)
        return record

    def list_plugins(
        self, *, trust_level: TrustLevel | None = None, status: PluginState | None = None
    ) -> list[PluginRecord]:
        """See :meth:`PluginRegistry.list_plugins`. Raises RegistryUnavailableError during an outage."""
        params = {
            "trust_level": _check_trust_level(trust_level, None).value if trust_level is not None else None,
            "status": _check_state(status, "status").value if status is not None else None,
        }

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[PluginRecord]:
            return [_plugin_record(row) for row in conn.execute(self._q["list_plugins"], params)]

        records = self._run("list_plugins", work)
        with self._state_lock:
            self._known.update((r.id, r) for r in records)
        return records

    def list_versions(self, plugin_id: str) -> list[VersionRecord]:
        """See :meth:`PluginRegistry.list_versions`. Ordered by PEP 440 version (sorted here, not in SQL)."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[VersionRecord]:
            rows = conn.execute(self._q["list_versions"], [plugin_id]).fetchall()
            if not rows:
                self._require_plugin(conn, plugin_id)
            return [VersionRecord(r[0], r[1], Version(r[2]), r[3], r[4]) for r in rows]

        return sorted(self._run("list_versions", work, plugin_id=plugin_id), key=lambda v: v.version)

    def list_capabilities(self, plugin_id: str, version: Version | str | None = None) -> list[CapabilityRecord]:
        """See :meth:`PluginRegistry.list_capabilities`. One query; the version is picked here (PEP 440)."""
        if not _is_plugin_id(plugin_id):
            raise _not_found(plugin_id)

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            rows = conn.execute(self._q["list_capabilities"], [plugin_id]).fetchall()
            if not rows:
                self._require_plugin(conn, plugin_id)
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
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """See :meth:`PluginRegistry.list_events`. Raises RegistryUnavailableError during an outage."""
        if limit is not None and limit <= 0:
            return []
        where = [sql.SQL("id > %(after_id)s")]
        params: dict[str, Any] = {"after_id": int(after_id), "limit": limit}
        if plugin_id is not None:
            where.append(sql.SQL("plugin_id = %(plugin_id)s"))
            params["plugin_id"] = str(plugin_id)
        if event is not None:
            where.append(sql.SQL("event = %(event)s"))
            params["event"] = EventKind(event).value
        query = sql.SQL("{} WHERE {} ORDER BY id LIMIT %(limit)s").format(
            sql.SQL(_EVENT_COLUMNS).format(events=sql.Identifier(self.schema, "audit_events")),
            sql.SQL(" AND ").join(where),
        )

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[AuditEvent]:
            return [_audit_event(row) for row in conn.execute(query, params)]

        return self._run("list_events", work, plugin_id=plugin_id)

    def is_active(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active`. False for unknown ids; RegistryUnavailableError in an outage."""
        if not _is_plugin_id(plugin_id):
            return False

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
            row = conn.execute(self._q["is_active"], [plugin_id]).fetchone()
            return bool(row and row[0])

        return self._run("is_active", work, plugin_id=plugin_id)

    # -- notifications -------------------------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """See :meth:`PluginRegistry.subscribe`: other hosts' status changes and every enable/disable (LISTEN).

        Runs one listener thread (its own connection, LISTEN on :attr:`channel`) per registry; blocks until
        it listens (at most ``timeout_s``, else RegistryUnavailableError; during an outage it returns at once
        and the thread listens when it can). Callbacks run in that thread and must not block; an exception
        from one is logged. Returns ``unsubscribe``, which is safe to call twice; the thread stops with the
        last subscriber or on close. Whenever the listener (re)connects it compares every plugin's enabled
        flag with what this instance last saw and reports the differences, so an operator's disable made
        while a host was cut off still reaches it; status changes made meanwhile are not replayed.
        """
        ready = threading.Event()
        with self._lock:
            if self._closed or not self._opened:
                raise RegistryError("the PostgreSQL registry is not open; open it before subscribing")
            self._subscribers.add(callback)
            if self._listener is None:
                self._listener_stop = threading.Event()
                self._listener = threading.Thread(
                    target=self._listen,
                    args=(self._listener_stop, ready),
                    name=f"plugin-pool-registry-listen-{self.schema}",
                    daemon=True,
                )
                self._listener.start()
            else:
                ready.set()

        def unsubscribe() -> None:
            self._unsubscribe(callback)

        if not self._outage and not ready.wait(self._timeout_s):
            unsubscribe()
            raise self._endpoint.unavailable("cannot listen for registry changes", "LISTEN timed out")
        return unsubscribe

    def _unsubscribe(self, callback: ChangeCallback) -> None:
        thread: threading.Thread | None = None
        with self._lock:
            if not self._subscribers.remove(callback) and self._listener is not None:
                self._listener_stop.set()
                thread, self._listener = self._listener, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout_s + 1.0)

    def _listen(self, stop: threading.Event, ready: threading.Event) -> None:
        backoff_s = 0.05
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=_connect_timeout(self._timeout_s)
                ) as conn:
                    conn.execute(listen)
                    self._resync_enabled(conn)
                    ready.set()
                    backoff_s = 0.05
                    while not stop.is_set():
                        for notify in conn.notifies(timeout=0.2):
                            self._dispatch(notify.payload)
            except psycopg.Error as exc:
                _log.warning("registry listener lost its connection (%s); reconnecting in %.2f s", exc, backoff_s)
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_max_s)

    def _resync_enabled(self, conn: psycopg.Connection[Any]) -> None:
        try:
            rows = conn.execute(self._q["list_enabled"]).fetchall()
        except psycopg.errors.UndefinedTable:  # offline start before the schema exists: nothing to compare
            return
        for plugin_id, enabled in rows:
            with self._state_lock:
                known = self._known.get(plugin_id)
                if known is None or known.enabled is enabled:
                    continue
                self._known[plugin_id] = replace(known, enabled=enabled)
            reason = "changed while this instance was not listening"
            self._subscribers.notify(RegistryChange(plugin_id, "enabled", enabled=enabled, reason=reason))

    def _dispatch(self, payload: str) -> None:
        try:
            message = orjson.loads(payload)
            plugin_id = str(message["id"])
            if "enabled" in message:
                enabled = message["enabled"]
                if not isinstance(enabled, bool):
                    raise ValueError(enabled)
                change = RegistryChange(
                    plugin_id, "enabled", enabled=enabled, actor=message.get("actor"), reason=message.get("reason")
                )
            elif message.get("origin") == self._origin:
                return  # this instance's own status move
            else:
                change = RegistryChange(plugin_id, "status", status=PluginState(message["status"]))
        except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError, TypeError):
            _log.warning("registry listener ignored a malformed notification: %.200r", payload)
            return
        with self._state_lock:
            known = self._known.get(plugin_id)
            if known is not None:
                if change.status is not None:
                    self._known[plugin_id] = replace(known, status=change.status)
                if change.enabled is not None:
                    self._known[plugin_id] = replace(known, enabled=change.enabled)
        self._subscribers.notify(change)

    # -- internals: running queries ------------------------------------------------------------------------

    def _run(
        self,
        what: str,
        work: Callable[[psycopg.Connection[tuple[Any, ...]]], _T],
        *,
        plugin_id: str | None = None,
        buffering: bool = False,
    ) -> _T:
        self._require_open()
        if self._outage:
            if buffering:
                raise _Offline
            raise self._endpoint.unavailable(f"{what} failed ({self.pending_writes} writes buffered)", "outage")
        pool = self._pool
        assert pool is not None  # open and not in an outage
        try:
            with pool.connection() as conn:
                return work(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._enter_outage(exc)
            if buffering:
                raise _Offline from exc
            error = self._endpoint.unavailable(f"{what} failed", exc)
            error.plugin_id = plugin_id
            raise error from exc
        except psycopg.Error as exc:
            raise RegistryError(f"registry {what} failed: {exc}", plugin_id=plugin_id) from exc

    def _require_open(self) -> None:
        if self._closed:
            raise RegistryError("the PostgreSQL registry is already closed; create a new one")
        if not self._opened:
            raise RegistryError("the PostgreSQL registry is not open yet; call open() first")

    def _require_plugin(self, conn: psycopg.Connection[tuple[Any, ...]], plugin_id: str) -> None:
        if conn.execute(self._q["plugin_exists"], [plugin_id]).fetchone() is None:
            raise _not_found(plugin_id)

    def _check_schema_version(self) -> None:
        latest = list_migrations()[-1][0]
        try:
            with psycopg.connect(self._dsn, connect_timeout=_connect_timeout(self._timeout_s)) as conn:
                row = conn.execute(self._q["schema_version"]).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        except psycopg.OperationalError as exc:
            raise self._endpoint.unavailable("cannot open the registry", exc) from exc
        current = row[0] if row else None
        if current is None or current < latest:
            raise RegistryError(
                f"registry schema {self.schema!r} is at version {current or 0}, this plugin_pool needs {latest}: "
                f"run `plugin-pool registry migrate` (or open the registry with migrate=True)"
            )
        if current > latest:
            _log.warning(
                "registry schema %s is at version %d, newer than this plugin_pool (%d)", self.schema, current, latest
            )

    def _remember(self, record: PluginRecord) -> None:
        with self._state_lock:
            self._known[record.id] = record

    def _set_status(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        plugin_id: str,
        status: PluginState,
        expected: PluginState | None,
        actor: str,
        reason: str | None,
        extra: dict[str, Any],
        at: datetime | None,
    ) -> PluginRecord:
        for attempt in range(_STATUS_RETRIES):
            source = expected
            if source is None:
                source = self._read_status(conn, plugin_id)
            try:
                check_transition(source, status, plugin_id=plugin_id)
            except IllegalTransitionError:
                actual = self._read_status(conn, plugin_id)
                if expected is not None and actual is not expected:
                    raise RegistryConflictError(plugin_id, expected, actual) from None
                raise
            details = {**extra, "from": source.value}
            if reason is not None:
                details["reason"] = reason
            payload = orjson.dumps({"id": plugin_id, "status": status.value, "origin": self._origin}).decode()
            row = conn.execute(
                self._q["compare_and_set"],
                {
                    "id": plugin_id,
                    "status": status.value,
                    "from": source.value,
                    "reason": reason,
                    "at": at,
                    "event": EventKind.for_state(status).value,
                    "actor": actor,
                    "details": Jsonb(details),
                    "channel": self.channel,
                    "payload": payload,
                },
            ).fetchone()
            if row is not None:
                return _plugin_record(row)
            actual = self._read_status(conn, plugin_id)
            if expected is not None or attempt == _STATUS_RETRIES - 1:
                raise RegistryConflictError(plugin_id, source, actual)
            # expected=None: another host moved it between our read and our write; read again.
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _read_plugin(self, conn: psycopg.Connection[tuple[Any, ...]], plugin_id: str) -> PluginRecord:
        row = conn.execute(self._q["get_plugin"], [plugin_id]).fetchone()
        if row is None:
            raise _not_found(plugin_id)
        return _plugin_record(row)

    def _read_status(self, conn: psycopg.Connection[tuple[Any, ...]], plugin_id: str) -> PluginState:
        row = conn.execute(self._q["get_status"], [plugin_id]).fetchone()
        if row is None:
            raise _not_found(plugin_id)
        return PluginState(row[0])

    def _insert_event(
        self, conn: psycopg.Connection[tuple[Any, ...]], pending: _PendingWrite, *, at: datetime | None
    ) -> AuditEvent:
        row = conn.execute(
            self._q["insert_event"],
            {
                "plugin_id": pending.plugin_id,
                "event": pending.event.value,
                "state": pending.state.value if pending.state is not None else None,
                "actor": pending.actor,
                "at": at,
                "details": Jsonb(pending.details),
            },
        ).fetchone()
        assert row is not None
        return AuditEvent(
            id=row[0],
            plugin_id=pending.plugin_id,
            event=pending.event,
            state=pending.state,
            actor=pending.actor,
            at=row[1],
            details=MappingProxyType(pending.details),
        )

    # -- internals: outage buffer --------------------------------------------------------------------------

    def _enter_outage(self, cause: BaseException, *, announce: bool = True) -> None:
        with self._state_lock:
            if not self._outage:
                self._outage = True
                if announce:
                    _log.warning(
                        "registry database at %s:%s is unreachable (%s); buffering up to %d writes until it is back",
                        self._endpoint.host,
                        self._endpoint.port,
                        cause,
                        self._buffer_limit,
                    )
            if self._flusher is None and not self._stop.is_set():
                self._flusher = threading.Thread(
                    target=self._flush_loop, name=f"plugin-pool-registry-retry-{self.schema}", daemon=True
                )
                self._flusher.start()

    def _buffer_status(
        self,
        plugin_id: str,
        status: PluginState,
        expected: PluginState | None,
        actor: str,
        reason: str | None,
        extra: dict[str, Any],
    ) -> PluginRecord:
        with self._state_lock:
            known = self._known.get(plugin_id)
            if known is None:
                raise self._endpoint.unavailable(
                    f"set_status of plugin {plugin_id!r} failed (never read by this instance, so it cannot be "
                    f"checked offline)",
                    "outage",
                )
            if expected is not None and known.status is not expected:
                raise RegistryConflictError(plugin_id, expected, known.status)
            check_transition(known.status, status, plugin_id=plugin_id)
            at = _utcnow()
            pending = _PendingWrite(
                "status", plugin_id, actor, at, extra, EventKind.for_state(status), status, known.status, reason
            )
            record = replace(known, status=status, status_reason=reason, updated_at=at)
            if self._enqueue_locked(pending):
                self._known[plugin_id] = record
            return record

    def _buffer_register(
        self, values: Mapping[str, Any], info: PluginInfo, level: TrustLevel, config: dict[str, Any] | None
    ) -> PluginRecord:
        plugin_id = info.id
        with self._state_lock:
            at = _utcnow()
            known = self._known.get(plugin_id)
            if known is None:
                record = PluginRecord(
                    id=plugin_id,
                    name=values["name"],
                    trust_level=level,
                    status=PluginState.DISCOVERED,
                    status_reason=None,
                    config=MappingProxyType(config or {}),
                    registered_at=at,
                    updated_at=at,
                )
            else:
                record = replace(
                    known,
                    name=values["name"],
                    trust_level=level,
                    config=MappingProxyType(config) if config is not None else known.config,
                )
            pending = _PendingWrite(
                "register", plugin_id, values["actor"], at, {}, EventKind.REGISTERED, None, values=values
            )
            if self._enqueue_locked(pending):
                self._known[plugin_id] = record
            return record

    def _buffer_event(self, pending: _PendingWrite) -> AuditEvent:
        with self._state_lock:
            self._enqueue_locked(pending)
        return AuditEvent(
            id=0,
            plugin_id=pending.plugin_id,
            event=pending.event,
            state=pending.state,
            actor=pending.actor,
            at=pending.at,
            details=MappingProxyType(pending.details),
        )

    def _enqueue_locked(self, pending: _PendingWrite) -> bool:
        if len(self._buffer) >= self._buffer_limit:
            self.dropped_writes += 1
            # Log the first drop of a burst and then every 1,000th, so a long outage does not flood the log.
            if self.dropped_writes == 1 or self.dropped_writes % 1000 == 0:
                _log.error(
                    "registry outage buffer is full (%d writes): dropped %s; %d writes dropped so far",
                    self._buffer_limit,
                    pending.describe(),
                    self.dropped_writes,
                )
            return False
        self._buffer.append(pending)
        return True

    def _flush_loop(self) -> None:
        delay_s = 0.05
        while not self._stop.wait(delay_s):
            try:
                pool = self._pool or self._connect_late()
                if pool is not None and self._flush_once(pool):
                    return
            except Exception:  # never let the retry thread die with writes still buffered
                _log.exception("registry retry thread failed; retrying in %.2f s", delay_s)
            delay_s = min(delay_s * 2, self._retry_max_s)

    def _connect_late(self) -> ConnectionPool[psycopg.Connection[tuple[Any, ...]]] | None:
        """Offline start: try to connect (and migrate, if asked) now; None while the database is unreachable."""
        try:
            pool = self._connect()
        except RegistryUnavailableError as exc:
            _log.debug("registry still unreachable: %s", exc)
            return None
        except RegistryError as exc:  # reachable, but the schema is not usable yet: say so, keep trying
            _log.error("registry: cannot write the buffered writes yet: %s", exc)
            return None
        with self._lock:
            if self._closed:  # close() gave up waiting for this thread
                pool.close(timeout=0)
                return None
            self._pool = pool
        _log.warning(
            "registry database at %s:%s is reachable: writing %d buffered writes",
            self._endpoint.host,
            self._endpoint.port,
            self.pending_writes,
        )
        return pool

    def _flush_once(self, pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]]) -> bool:
        """Write the buffer in order; on success leave outage mode and return True. Runs in the retry thread."""
        try:
            pool.check()  # drop connections the outage broke, so the next ones are fresh
            with pool.connection(timeout=min(self._timeout_s, 1.0)) as conn:
                while True:
                    with self._state_lock:
                        if not self._buffer:
                            if self._outage:
                                _log.warning(
                                    "registry database at %s:%s is back; buffered writes written",
                                    self._endpoint.host,
                                    self._endpoint.port,
                                )
                            self._outage = False
                            self._flusher = None
                            return True
                        pending = self._buffer[0]
                    self._replay(conn, pending)
                    with self._state_lock:
                        self._buffer.popleft()
                        self.flushed_writes += 1
        except (psycopg.OperationalError, PoolTimeout) as exc:
            _log.debug("registry still unreachable: %s", exc)
            return False

    def _replay(self, conn: psycopg.Connection[tuple[Any, ...]], pending: _PendingWrite) -> None:
        """Write one buffered write. A write the database refuses now is logged and counted, never retried."""
        try:
            if pending.kind == "event":
                self._insert_event(conn, pending, at=pending.at)
            elif pending.kind == "register":
                assert pending.values is not None
                self._remember(self._register_in(conn, pending.values))
            else:
                assert pending.plugin_id is not None and pending.state is not None
                record = self._set_status(
                    conn,
                    pending.plugin_id,
                    pending.state,
                    pending.expected,
                    pending.actor,
                    pending.reason,
                    pending.details,
                    pending.at,
                )
                self._remember(record)
        except psycopg.OperationalError:
            raise  # the connection broke again: the write stays first in the buffer
        except RegistryConflictError as exc:
            if exc.actual is pending.state:
                return  # the write reached the database just before the connection broke
            self._refused(pending, exc)
            # The move happened on this host all the same: keep the audit trail whole, noting what the
            # registry held instead (as PluginHost does for a move another host overtook).
            details = {**pending.details, "registry_state": exc.actual.value, "written_late": True}
            if pending.expected is not None:
                details["from"] = pending.expected.value
            if pending.reason is not None:
                details["reason"] = pending.reason
            self._insert_event(conn, replace(pending, details=details), at=pending.at)
            row = conn.execute(self._q["get_plugin"], [pending.plugin_id]).fetchone()
            if row is not None:
                self._remember(_plugin_record(row))
        except (RegistryError, PluginNotFoundError, IllegalTransitionError, psycopg.DatabaseError) as exc:
            self._refused(pending, exc)

    def _refused(self, pending: _PendingWrite, exc: Exception) -> None:
        with self._state_lock:
            self.conflicted_writes += 1
        _log.error("registry: buffered %s refused on replay: %s", pending.describe(), exc)


# -- helpers -------------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Offline(Exception):
    """Internal: a write found the database unreachable and should be buffered."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _is_plugin_id(plugin_id: object) -> bool:
    try:
        check_plugin_id(plugin_id)
    except RegistryError:
        return False
    return True


def _not_found(plugin_id: object) -> PluginNotFoundError:
    return PluginNotFoundError(
        f"plugin {plugin_id!r} is not registered; register it first",
        plugin_id=plugin_id if isinstance(plugin_id, str) else None,
    )


def _check_state(value: object, what: str) -> PluginState:
    try:
        return PluginState.parse(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RegistryError(f"{what}: {exc}") from None


def _check_trust_level(value: object, plugin_id: str | None) -> TrustLevel:
    try:
        return TrustLevel.parse(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RegistryError(str(exc), plugin_id=plugin_id) from None


def _check_text(value: object, field: str, max_len: int, plugin_id: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise RegistryError(
            f"plugin {field} {value!r:.80} is invalid: expected a non-empty string of at most {max_len} characters",
            plugin_id=plugin_id,
        )
    return value


def _check_version(value: object, plugin_id: str) -> Version:
    try:
        version = value if isinstance(value, Version) else Version(str(value))
    except InvalidVersion:
        raise RegistryError(
            f"plugin version {value!r} is invalid: use a PEP 440 version", plugin_id=plugin_id
        ) from None
    if len(str(version)) > _VERSION_MAX_LEN:
        raise RegistryError(
            f"plugin version {str(version)[:40]!r}... is longer than {_VERSION_MAX_LEN} characters", plugin_id=plugin_id
        )
    return version
