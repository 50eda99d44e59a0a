"""PostgreSQL helpers for the integration tests: the test server's DSN, a TCP proxy that can cut and restore
the connection, and small waits. The fixtures using them are in conftest.py."""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

DSN = os.environ.get("PLUGIN_POOL_TEST_DSN") or "postgresql://postgres@127.0.0.1:5432/test"


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def count(server: str, schema: str, table: str) -> int:
    with psycopg.connect(server) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
    assert row is not None
    return int(row[0])


class _Conn:
    """One proxied connection: its two sockets and what the proxy does with their traffic."""

    def __init__(self, client: socket.socket, server: socket.socket, *, blackholed: bool) -> None:
        self.client = client
        self.server = server
        self.blackholed = blackholed
        self.lose_reply = False  # set once the client sent the marked statement

    def close(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Proxy:
    """A TCP proxy thread on 127.0.0.1 in front of the server, for outages a test controls:

    - ``cut()`` closes every connection and refuses new ones (the port stays reserved); ``restore()`` accepts
      again on the same port: an outage every client notices at once.
    - ``blackhole()`` silently drops all traffic, of current connections and of new ones (accepted, never
      answered): a database gone without a reset. After ``restore()`` new connections work, but connections
      black-holed before stay silent forever, as after a failover or lost NAT state: only a client that
      times out its own queries gets out.
    - ``lose_reply_after(marker)``: the next statement whose bytes contain ``marker`` reaches the server (and
      commits), but its reply never reaches the client: the connection closes instead.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._blackholed = False
        self._marker: bytes | None = None
        self.lost_replies = 0
        self.restore()

    def restore(self) -> None:
        self._blackholed = False
        if self._listener is not None:
            return  # after a black hole: the listener still runs, new connections are forwarded again
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._stop = threading.Event()
        self._listener = listener
        self._spawn(self._accept, listener, self._stop)

    def blackhole(self) -> None:
        self._blackholed = True
        with self._lock:
            for conn in self._conns:
                conn.blackholed = True

    def lose_reply_after(self, marker: bytes) -> None:
        self._marker = marker

    def cut(self) -> None:
        self._stop.set()
        self._blackholed = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        for thread in self._threads:
            thread.join(5)
        assert not any(t.is_alive() for t in self._threads)
        self._threads = []

    def dsn(self, base: str) -> str:
        return make_conninfo(base, host="127.0.0.1", port=str(self.port))

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="test-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            conn = _Conn(client, server, blackholed=self._blackholed)
            with self._lock:
                if stop.is_set():  # cut while connecting
                    conn.close()
                    return
                self._conns.append(conn)
            self._spawn(self._pump, conn, stop)

    def _pump(self, conn: _Conn, stop: threading.Event) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(conn.client, selectors.EVENT_READ, conn.server)
                selector.register(conn.server, selectors.EVENT_READ, conn.client)
                while not stop.is_set():
                    for key, _ in selector.select(0.05):
                        try:
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        except OSError:
                            return
                        if not data:
                            return
                        if conn.blackholed:
                            continue  # dropped: no reply, no reset
                        from_client = key.fileobj is conn.client
                        if not from_client and conn.lose_reply:
                            self.lost_replies += 1
                            return  # the statement committed; its reply is lost with the connection
                        try:
                            key.data.sendall(data)
                        except OSError:
                            return
                        if from_client and self._marker is not None and self._marker in data:
                            self._marker = None
                            conn.lose_reply = True
        finally:
            conn.close()
