"""The connections of one registry instance: the psycopg pool (opened after the schema check, or late after an
offline start), every pooled connection configured and checked under a deadline, and database refusals
turned into the registry's errors."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from plugin_pool.errors import PluginNotFoundError, RegistryError, RegistryUnavailableError
from plugin_pool.registry.postgres._link import Deadlines, Endpoint, LinkSettings, connect_options
from plugin_pool.registry.postgres._outbox import Unreachable
from plugin_pool.registry.postgres._schema import check_schema_version, migrate, permission_error

__all__ = ["Conn", "Database"]

_log = logging.getLogger("plugin_pool.registry")
_T = TypeVar("_T")
Conn = psycopg.Connection[tuple[Any, ...]]


class Database:
    """The pool of one registry instance and how queries run on it. Thread-safe; :meth:`close` is idempotent."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        endpoint: Endpoint,
        settings: LinkSettings,
        deadlines: Deadlines,
        min_size: int,
        max_size: int,
        migrate: bool,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self.endpoint = endpoint
        self._settings = settings
        self._deadlines = deadlines
        self._min_size = min_size
        self._max_size = max_size
        self._migrate = migrate
        self._lock = threading.Lock()
        self._closed = False
        self.pool: ConnectionPool[Conn] | None = None

    @property
    def timeout_s(self) -> float:
        """How long any one query (or getting a connection) may take."""
        return self._settings.timeout_s

    def connect(self) -> None:
        """Migrate if asked, check the schema version and open the pool. Blocks up to about ``timeout_s``;
        raises RegistryUnavailableError, RegistryPermissionError or RegistryError (schema not migrated)."""
        if self._migrate:
            migrate(self._dsn, self._schema, settings=self._settings)
        check_schema_version(self._dsn, self._schema, self.endpoint, self._settings)
        pool: ConnectionPool[Conn] = ConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True, **connect_options(self._settings)},
            configure=self._configure,
            check=self._check,
            timeout=self.timeout_s,
            name=f"plugin_pool.registry.{self._schema}",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=self.timeout_s)
        except PoolTimeout as exc:
            pool.close(timeout=0)
            raise self.endpoint.unavailable("cannot open the registry", exc) from exc
        with self._lock:
            if self._closed:
                pool.close(timeout=0)
                raise RegistryError("the PostgreSQL registry is already closed; create a new one")
            self.pool = pool

    def _configure(self, conn: Conn) -> None:
        set_json_dumps(orjson.dumps, conn)
        set_json_loads(orjson.loads, conn)
        with self._deadlines.guard(conn, self.timeout_s, "configure a connection"):
            conn.execute("SET jit = off")  # compiling the fleet view costs more than running it

    def _check(self, conn: Conn) -> None:
        with self._deadlines.guard(conn, self.timeout_s, "check a pooled connection"):
            conn.execute("")

    @contextlib.contextmanager
    def writer_connection(self, pending: Callable[[], int]) -> Iterator[Conn]:
        """A pooled connection for the writer thread (waiting at most a second for one); after an offline
        start it first connects, raising Unreachable while that fails."""
        pool = self.pool
        if pool is None:
            try:
                self.connect()
            except RegistryUnavailableError as exc:
                raise Unreachable(str(exc)) from exc
            except RegistryError as exc:  # reachable, but the schema is not usable yet: say so, keep trying
                _log.error("registry: cannot write the buffered writes yet: %s", exc)
                raise Unreachable(str(exc)) from exc
            _log.warning(
                "registry database at %s:%s is reachable: writing %d buffered writes",
                self.endpoint.host,
                self.endpoint.port,
                pending(),
            )
            pool = self.pool
            assert pool is not None
        with pool.connection(timeout=min(self.timeout_s, 1.0)) as conn:
            yield conn

    def run(self, what: str, work: Callable[[Conn], _T], *, plugin_id: str | None = None) -> _T:
        """``work(conn)`` on a pooled connection under a deadline; database refusals become registry errors,
        a lost link RegistryUnavailableError (re-raised as is for the caller to note the outage)."""
        pool = self.pool
        if pool is None:
            raise self.endpoint.unavailable(f"{what} failed", "not connected")
        with (
            pool.connection() as conn,
            self._deadlines.guard(conn, self.timeout_s, what),
            self.sql_errors(what, plugin_id),
        ):
            return work(conn)

    def try_once(self, what: str, work: Callable[[Conn], None], *, timeout_s: float) -> None:
        """``work(conn)`` once, within ``timeout_s`` all told; a failure is logged at INFO, never raised."""
        pool = self.pool
        if pool is None:
            return
        try:
            with pool.connection(timeout=timeout_s) as conn, self._deadlines.guard(conn, timeout_s, what):
                work(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            _log.info("registry: could not %s (%s)", what, exc)

    @contextlib.contextmanager
    def sql_errors(self, what: str, plugin_id: str | None) -> Iterator[None]:
        """Turn database refusals into the registry's errors; OperationalError (the link) passes through."""
        try:
            yield
        except psycopg.errors.InsufficientPrivilege as exc:
            raise permission_error(exc, role=self.endpoint.user or "?", schema=self._schema, doing=what) from exc
        except psycopg.errors.ForeignKeyViolation as exc:
            if plugin_id is not None and "plugin" in str(exc.diag.constraint_name or ""):
                raise PluginNotFoundError(
                    f"plugin {plugin_id!r} is not registered; register it first", plugin_id=plugin_id
                ) from exc
            raise RegistryError(f"registry {what} failed: {exc}", plugin_id=plugin_id) from exc
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise RegistryError(f"registry {what} failed: {exc}", plugin_id=plugin_id) from exc

    def close(self) -> None:
        """Close the pool (waiting up to ``timeout_s`` for connections in use). Idempotent."""
        with self._lock:
            self._closed = True
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close(timeout=self.timeout_s)
