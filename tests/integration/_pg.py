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


class Proxy:
    """A TCP proxy thread on 127.0.0.1 in front of the server. ``cut()`` closes every connection and refuses
    new ones (the port stays reserved); ``restore()`` accepts again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._stop = threading.Event()
        self._listener = listener
        self._spawn(self._accept, listener, self._stop)

    def cut(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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
            with self._lock:
                if stop.is_set():  # cut while connecting
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            self._spawn(self._pump, client, server, stop)

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, stop: threading.Event) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(a, selectors.EVENT_READ, b)
                selector.register(b, selectors.EVENT_READ, a)
                while not stop.is_set():
                    for key, _ in selector.select(0.05):
                        try:
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            key.data.sendall(data)
                        except OSError:
                            return
        finally:
            a.close()
            b.close()
