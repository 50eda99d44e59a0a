"""The link thread of one registry instance: LISTEN for other hosts' changes, a heartbeat that is also the
round trip proving the link alive, and a full re-sync after every (re)connect and every ``resync_s``; and the
switchboard that decides what of it subscribers are told.

One connection of its own (TCP keepalive and TCP_USER_TIMEOUT on it, every statement under a deadline). A
connection that waits only for notifications cannot tell a quiet database from a vanished one, so every
``heartbeat_s`` the thread runs a statement (the host's heartbeat, or ``SELECT 1``); no reply within
``timeout_s`` breaks the connection. A lost link is logged once (and counted in ``link_losses``) until it is
back; then the thread re-syncs, so an operator's disable made meanwhile still arrives (target: within 30 s
of the database's return, with the default settings about ``heartbeat_s + timeout_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from psycopg import sql

from plugin_pool.lifecycle import PluginState
from plugin_pool.registry.base import RegistryChange, Subscribers
from plugin_pool.registry.postgres._link import Deadlines, Endpoint, LinkSettings, connect_options, one_line
from plugin_pool.registry.validation import from_storable

__all__ = ["Listener", "Switchboard"]

_log = logging.getLogger("plugin_pool.registry")

Step = Callable[[psycopg.Connection[Any]], None]


class Listener:
    """The link thread (named ``name``). ``beat(conn)`` and ``resync(conn)`` are the registry's steps,
    ``dispatch(payload)`` handles one notification; all run in this thread and must not block on anything
    but ``conn``. :meth:`start` and :meth:`stop` are idempotent; ``ready`` is set once it listens."""

    def __init__(
        self,
        *,
        name: str,
        dsn: str,
        channel: str,
        endpoint: Endpoint,
        settings: LinkSettings,
        deadlines: Deadlines,
        heartbeat_s: float,
        resync_s: float,
        retry_max_s: float,
        beat: Step,
        resync: Step,
        dispatch: Callable[[str], None],
    ) -> None:
        self._name = name
        self._dsn = dsn
        self._channel = channel
        self._endpoint = endpoint
        self._settings = settings
        self._deadlines = deadlines
        self._heartbeat_s = heartbeat_s
        self._resync_s = resync_s
        self._retry_max_s = retry_max_s
        self._beat = beat
        self._resync = resync
        self._dispatch = dispatch
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.link_losses = 0
        self.resyncs = 0
        self.heartbeats = 0
        self._lost_since: float | None = None

    @property
    def running(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._stop = threading.Event()
                self.ready = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self._name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (up to about a second plus a query's timeout). Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._settings.timeout_s + 2.0)

    def _run(self, stop: threading.Event) -> None:
        backoff_s = 0.05
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        while not stop.is_set():
            try:
                conn = psycopg.connect(self._dsn, autocommit=True, **connect_options(self._settings))
            except psycopg.Error as exc:
                self._lost(exc)
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_max_s)
                continue
            try:
                with conn:
                    with self._deadlines.guard(conn, self._settings.timeout_s, "LISTEN and re-sync"):
                        conn.execute(listen)
                        self._beat(conn)
                        self._resync(conn)
                    self.resyncs += 1
                    self._back()
                    self.ready.set()
                    backoff_s = 0.05
                    self._serve(conn, stop)
            except (psycopg.Error, OSError) as exc:
                if stop.is_set():
                    return
                self._lost(exc)
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_max_s)

    def _serve(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        """Dispatch notifications; every heartbeat_s a round trip, every resync_s a full re-sync."""
        now = time.monotonic()
        next_beat = now + self._heartbeat_s
        next_resync = now + self._resync_s
        while not stop.is_set():
            wait_s = max(min(next_beat, next_resync) - time.monotonic(), 0.0)
            for notify in conn.notifies(timeout=min(wait_s, 0.5)):
                self._dispatch(notify.payload)
            now = time.monotonic()
            if now >= next_beat:
                with self._deadlines.guard(conn, self._settings.timeout_s, "heartbeat"):
                    self._beat(conn)
                self.heartbeats += 1
                next_beat = now + self._heartbeat_s
            if now >= next_resync:
                with self._deadlines.guard(conn, self._settings.timeout_s, "re-sync"):
                    self._resync(conn)
                self.resyncs += 1
                next_resync = now + self._resync_s

    def _lost(self, cause: BaseException) -> None:
        if self._lost_since is not None:
            _log.debug("registry link still down: %s", cause)
            return
        self._lost_since = time.monotonic()
        self.link_losses += 1
        _log.warning(
            "registry link to %s:%s lost (%s); reconnecting, and re-syncing every operator's change when it is back",
            self._endpoint.host,
            self._endpoint.port,
            one_line(cause),
        )

    def _back(self) -> None:
        if self._lost_since is None:
            return
        down_s = time.monotonic() - self._lost_since
        self._lost_since = None
        _log.info(
            "registry link to %s:%s is back after %.1f s; re-synced", self._endpoint.host, self._endpoint.port, down_s
        )


class Switchboard:
    """What this registry instance tells its subscribers, once each: operators' switches (by number) and other
    hosts' moves. A host acknowledges a switch itself when nobody here applies it (a plugin it never
    registered, or no subscriber); otherwise the subscriber acknowledges once it has applied it (the host's
    hook). Thread-safe; runs in the link thread."""

    def __init__(
        self,
        *,
        subscribers: Subscribers,
        origin: str,
        is_ours: Callable[[str], bool],
        is_host: Callable[[], bool],
        acknowledge: Callable[[RegistryChange], None],
    ) -> None:
        self.subscribers = subscribers
        self._origin = origin
        self._is_ours = is_ours
        self._is_host = is_host
        self._acknowledge = acknowledge
        self._lock = threading.Lock()
        self._delivered: dict[str, int] = {}  # plugin id -> the last switch number told

    def seen(self, plugin_id: str, seq: int) -> None:
        """This instance read the plugin with switch ``seq``: only a later switch needs telling."""
        with self._lock:
            self._delivered.setdefault(plugin_id, seq)

    def resync(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows ``(plugin id, enabled, seq, actor, reason)`` of switches this host has not acknowledged (all
        switches, for an instance that is not a host): told again to a host (it may have missed them), and to
        anyone else when newer than what it told."""
        redeliver = self._is_host()
        for plugin_id, enabled, seq, actor, reason in rows:
            reason = from_storable(reason) if reason is not None else None
            change = RegistryChange(plugin_id, "enabled", enabled=enabled, actor=actor, reason=reason, seq=seq)
            self.consider(change, redeliver=redeliver)

    def dispatch(self, payload: str) -> None:
        """One notification: a switch, another host's move, or an acknowledgement (for waiters, ignored here)."""
        try:
            message = orjson.loads(payload)
            if "ack" in message:
                return
            plugin_id = str(message["id"])
            if "enabled" in message:
                enabled, seq = message["enabled"], message["seq"]
                if not isinstance(enabled, bool) or not isinstance(seq, int):
                    raise ValueError(enabled)
                reason = message.get("reason")
                change = RegistryChange(
                    plugin_id,
                    "enabled",
                    enabled=enabled,
                    actor=message.get("actor"),
                    reason=from_storable(reason) if isinstance(reason, str) else None,
                    seq=seq,
                )
                self.consider(change, redeliver=False)
                return
            if message.get("origin") == self._origin:
                return  # this instance's own move
            change = RegistryChange(
                plugin_id, "status", status=PluginState(message["status"]), host=message.get("host")
            )
        except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError, TypeError):
            _log.warning("registry listener ignored a malformed notification: %.200r", payload)
            return
        self.subscribers.notify(change)

    def consider(self, change: RegistryChange, *, redeliver: bool) -> None:
        """Tell subscribers of a switch of a plugin of ours, unless already told (``redeliver`` tells again)."""
        assert change.seq is not None
        with self._lock:
            seen = self._delivered.get(change.plugin_id)
            if seen is not None and seen >= change.seq and not redeliver:
                return
            self._delivered[change.plugin_id] = max(seen or 0, change.seq)
        told = self.subscribers.notify(change) if self._is_ours(change.plugin_id) else 0
        if self._is_host() and not told:
            self._acknowledge(change)
