"""The link to the database: where it is, how connections are made, and how a silent link is noticed.

A database can vanish without a reset (a crash, a failover, lost NAT state): a connection then waits for a
reply forever, because libpq has no client-side query timeout. Three things bound that wait:

- TCP keepalive and ``TCP_USER_TIMEOUT`` on every connection (:func:`connect_options`): the kernel gives a
  connection up when probes or sent data go unacknowledged (for a peer that is really gone);
- :class:`Deadlines`: every query this package runs has a deadline; one watchdog thread per registry shuts
  down the socket of a query that overran it, so psycopg raises OperationalError and the caller reconnects
  (this also covers a peer whose kernel still acknowledges, such as a proxy that black-holes traffic);
- the listener's periodic round trip (see _listener.py), so even a connection that only waits for
  notifications finds out.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from plugin_pool.errors import RegistryError, RegistryUnavailableError

__all__ = ["Deadlines", "Endpoint", "LinkSettings", "connect_options", "one_line"]

_log = logging.getLogger("plugin_pool.registry")


def one_line(cause: BaseException | str) -> str:
    """An error as one log line (libpq's messages span several)."""
    return " ".join(str(cause).split()) or type(cause).__name__


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the database is, for error messages: host, port and database name of a DSN."""

    host: str
    port: str
    dbname: str
    user: str

    @classmethod
    def parse(cls, dsn: str) -> Endpoint:
        """Read a DSN (URL or key=value); raise RegistryError for one libpq cannot parse."""
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise RegistryError(f"the registry DSN is invalid: {exc}") from None
        host = str(params.get("host") or params.get("hostaddr") or "localhost (Unix socket)")
        return cls(
            host=host,
            port=str(params.get("port") or "5432"),
            dbname=str(params.get("dbname") or ""),
            user=str(params.get("user") or ""),
        )

    def unavailable(self, what: str, cause: BaseException | str) -> RegistryUnavailableError:
        """The error for ``what`` failing because the database cannot be reached."""
        return RegistryUnavailableError(
            f"{what}: the registry database at host {self.host} port {self.port} (database {self.dbname!r}) "
            f"is unreachable ({one_line(cause)}); check that PostgreSQL runs "
            f"there and that the registry DSN (PLUGIN_POOL_REGISTRY_DSN) points at it",
            host=self.host,
            port=self.port,
        )


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How long to wait for the database: ``timeout_s`` per query (and to connect), TCP keepalive every
    ``keepalive_s``, ``tcp_user_timeout_s`` for unacknowledged data."""

    timeout_s: float = 5.0
    keepalive_s: int = 5
    tcp_user_timeout_s: float = 10.0

    @property
    def connect_timeout(self) -> int:
        """libpq's connect_timeout: whole seconds, and it treats 1 as 2."""
        return max(2, int(self.timeout_s + 0.999))


def connect_options(settings: LinkSettings) -> dict[str, Any]:
    """Connection keywords for psycopg.connect and the pool: connect timeout, keepalive, TCP_USER_TIMEOUT."""
    return {
        "connect_timeout": settings.connect_timeout,
        "keepalives": 1,
        "keepalives_idle": settings.keepalive_s,
        "keepalives_interval": settings.keepalive_s,
        "keepalives_count": 3,
        "tcp_user_timeout": int(settings.tcp_user_timeout_s * 1000),
    }


class Deadlines:
    """A watchdog that shuts down the socket of a connection whose query overran its deadline.

    ``with deadlines.guard(conn, timeout_s, what): conn.execute(...)``: if the block is still running after
    ``timeout_s``, the connection's socket is shut down (not closed: psycopg still owns the descriptor), the
    blocked call raises OperationalError and the connection is broken, so the pool drops it. One thread per
    registry, started on first use; :meth:`close` stops it. ``fired`` counts the sockets shut down.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._active: dict[int, tuple[float, int, str]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.fired = 0

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection[Any], timeout_s: float, what: str) -> Iterator[None]:
        """Run the block under a deadline of ``timeout_s`` for ``conn``. Safe to nest and to use from any thread."""
        try:
            fd = conn.pgconn.socket
        except psycopg.OperationalError:  # already closed: the block fails by itself
            yield
            return
        key = next(self._ids)
        with self._cond:
            self._active[key] = (time.monotonic() + timeout_s, fd, what)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._active.pop(key, None)

    def close(self) -> None:
        """Stop the watchdog thread. Idempotent; guards after close no longer fire."""
        with self._cond:
            self._closed = True
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for key, (deadline, fd, what) in list(self._active.items()):
                    if deadline <= now:
                        del self._active[key]  # under the lock: the block is still running, fd still open
                        self._shut_down(fd, what)
                due = min((d for d, _, _ in self._active.values()), default=None)
                self._cond.wait(None if due is None else max(due - now, 0.001))

    def _shut_down(self, fd: int, what: str) -> None:
        self.fired += 1
        _log.debug("registry: no reply in time (%s); shutting the connection down", what)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()
