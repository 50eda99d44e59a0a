"""The outbox: every write of one registry instance, in order, in one bounded buffer, written by one background
thread; nothing that queues a write waits for the database.

Writes are idempotent (each audit event carries a uid generated here and is inserted ``ON CONFLICT (uid) DO
NOTHING``; a status move is keyed by its event's uid), so a write whose reply was lost after the database
committed it is simply written again on the next connection and stored once. While the database is
unreachable the buffer keeps up to ``limit`` writes; overflow is counted in ``dropped`` and logged (the first
drop of a burst, then every 1,000th). A write the database refuses (a constraint, a privilege) is never
retried: it is counted in ``conflicted`` and logged, or handed to the caller waiting for it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from plugin_pool.registry.postgres._link import Deadlines, Endpoint, one_line

__all__ = ["Outbox", "Unreachable", "Write"]

_log = logging.getLogger("plugin_pool.registry")

Connect = Callable[[], contextlib.AbstractContextManager[psycopg.Connection[Any]]]
BATCH = 256
"""Writes nobody waits for, written in one transaction (one commit)."""


class Unreachable(Exception):
    """Raised by the outbox's ``connect`` while there is no way to reach the database yet."""


@dataclass(slots=True, eq=False)
class Write:
    """One queued write: ``run(conn)`` performs it (idempotently); ``describe`` names it in logs. A caller that
    wants the outcome passes ``done`` and reads ``result`` or ``error`` once it is set."""

    describe: str
    run: Callable[[psycopg.Connection[Any]], Any]
    done: threading.Event | None = None
    seq: int = 0
    result: Any = None
    error: BaseException | None = field(default=None)
    finished: bool = False
    abandoned: bool = False


class Outbox:
    """The ordered, bounded buffer of one registry instance and its writer thread (named ``name``).

    :meth:`put` never blocks on I/O. :meth:`wait` blocks until a write (and every one before it) is written.
    Counters (``written``, ``dropped``, ``conflicted``) and :attr:`available` are read without blocking.
    """

    def __init__(
        self,
        *,
        name: str,
        connect: Connect,
        endpoint: Endpoint,
        deadlines: Deadlines,
        limit: int,
        timeout_s: float,
        retry_max_s: float,
    ) -> None:
        self._name = name
        self._connect = connect
        self._endpoint = endpoint
        self._deadlines = deadlines
        self._limit = limit
        self._timeout_s = timeout_s
        self._retry_max_s = retry_max_s
        self._cond = threading.Condition()
        self._queue: deque[Write] = deque()
        self._next_seq = 1
        self._written_seq = 0
        self._outage = False
        self._stopping = False
        self._give_up_at: float | None = None
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.conflicted = 0

    # -- the callers' side ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread. Idempotent."""
        with self._cond:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._write_loop, name=self._name, daemon=True)
                self._thread.start()

    def put(self, write: Write) -> bool:
        """Queue ``write``; False (counted in ``dropped``, logged) when the buffer is full. Never blocks on I/O."""
        with self._cond:
            if len(self._queue) >= self._limit:
                self.dropped += 1
                dropped = self.dropped
            else:
                write.seq = self._next_seq
                self._next_seq += 1
                self._queue.append(write)
                self._cond.notify_all()
                return True
        # Log the first drop of a burst and then every 1,000th, so a long outage does not flood the log.
        if dropped == 1 or dropped % 1000 == 0:
            _log.error(
                "registry outage buffer is full (%d writes): dropped %s; %d writes dropped so far",
                self._limit,
                write.describe,
                dropped,
            )
        return False

    @property
    def last_seq(self) -> int:
        """The number of the last write queued (0: none yet)."""
        with self._cond:
            return self._next_seq - 1

    def wait(self, seq: int, timeout_s: float) -> bool:
        """Block until write ``seq`` and every write before it are written (or refused); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._written_seq >= seq, timeout=timeout_s)

    def abandon(self, write: Write) -> bool:
        """The caller stops waiting for ``write``: True if it is still queued (it is written later, and a
        refusal is then counted and logged), False if it already finished (read its outcome)."""
        with self._cond:
            if write.finished:
                return False
            write.abandoned = True
            return True

    @property
    def pending(self) -> int:
        """Writes waiting in the buffer."""
        with self._cond:
            return len(self._queue)

    @property
    def available(self) -> bool:
        """False while the database is known unreachable (writes are being buffered)."""
        return not self._outage

    def mark_unreachable(self, cause: BaseException | str) -> None:
        """A reader found the database gone: enter outage mode (logged once) and let the writer probe."""
        self._enter_outage(cause)
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout_s: float) -> int:
        """Let the writer try for up to ``timeout_s`` more to write what is queued, then stop it; return how
        many writes were left unwritten (they are dropped from the buffer). Idempotent."""
        with self._cond:
            self._stopping = True
            self._give_up_at = time.monotonic() + timeout_s
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s + 2 * self._timeout_s + 1.0)
        with self._cond:
            lost = len(self._queue)
            for write in self._queue:
                if write.done is not None:
                    write.done.set()
            self._queue.clear()
            self._written_seq = self._next_seq - 1
            self._cond.notify_all()
        return lost

    # -- the writer thread ---------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        delay_s = 0.05
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._outage or self._stopping)
                if self._stopping and (not self._queue or self._past_give_up()):
                    return
            try:
                with self._connect() as conn:
                    self._drain(conn)
                self._leave_outage()
                delay_s = 0.05
            except (psycopg.OperationalError, PoolTimeout, Unreachable) as exc:
                self._enter_outage(exc)
                with self._cond:
                    if self._stopping and self._past_give_up():
                        return
                    self._cond.wait(delay_s if not self._stopping else min(delay_s, 0.1))
                delay_s = min(delay_s * 2, self._retry_max_s)
            except Exception:  # never let the writer die with writes still buffered
                _log.exception("registry writer thread failed; retrying in %.2f s", delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)

    def _past_give_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        """Write the buffer, in order: runs of writes nobody waits for go in one transaction (one commit for up
        to BATCH writes, pipelined); a run the database refuses is written again one write at a time (each
        write is idempotent), so a refusal is the refused write's alone."""
        while True:
            with self._cond:
                if not self._queue:
                    return
                batch = list(itertools.islice(self._queue, BATCH))
            if batch[0].done is not None:
                batch = batch[:1]  # someone waits for this one's outcome: alone
            else:
                batch = list(itertools.takewhile(lambda w: w.done is None, batch))
            if len(batch) > 1 and self._write_together(conn, batch):
                self._finish(batch)
                continue
            write = batch[0]
            try:
                with self._deadlines.guard(conn, self._timeout_s, write.describe):
                    write.result = write.run(conn)
            except psycopg.OperationalError:
                raise  # the link broke: the write stays first in the buffer and is written again
            except Exception as exc:
                write.error = exc
            self._finish([write])

    def _write_together(self, conn: psycopg.Connection[Any], batch: list[Write]) -> bool:
        """Write ``batch`` in one transaction; False (nothing written) when the database refused one of them."""
        try:
            with (
                self._deadlines.guard(conn, self._timeout_s, f"{len(batch)} writes"),
                conn.transaction(),
                conn.pipeline(),
            ):
                for write in batch:
                    write.run(conn)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            _log.debug("registry: a batch of %d writes was refused (%s); writing them one by one", len(batch), exc)
            return False
        return True

    def _finish(self, writes: list[Write]) -> None:
        refusals = []
        with self._cond:
            for write in writes:
                self._queue.popleft()
                self._written_seq = write.seq
                if write.error is None:
                    self.written += 1
                elif write.done is None or write.abandoned:
                    self.conflicted += 1
                    refusals.append(write)
                write.finished = True
            self._cond.notify_all()
        for write in refusals:
            _log.error("registry: %s refused by the database, not retried: %s", write.describe, write.error)
        for write in writes:
            if write.done is not None:
                write.done.set()

    def _enter_outage(self, cause: BaseException | str) -> None:
        with self._cond:
            if self._outage:
                return
            self._outage = True
        _log.warning(
            "registry database at %s:%s is unreachable (%s); buffering up to %d writes until it is back",
            self._endpoint.host,
            self._endpoint.port,
            one_line(cause),
            self._limit,
        )

    def _leave_outage(self) -> None:
        with self._cond:
            if not self._outage:
                return
            self._outage = False
            written = self.written
        _log.warning(
            "registry database at %s:%s is back; buffered writes written (%d writes so far)",
            self._endpoint.host,
            self._endpoint.port,
            written,
        )
