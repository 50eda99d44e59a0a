"""``invoke_many`` (host side): cutting many inputs into chunks and running them on several workers.

Chunks are cut by count (two per worker, 256 to 4096 items) and by bytes (``sandbox.chunk_mb``), so a
batch of large items is spread over the workers instead of filling one message after another. One
caller thread drives every worker it has: each worker's stream holds up to ``PIPELINE_DEPTH`` chunks,
so a worker starts its next chunk the moment it answers one (no thread per chunk, no idle gap).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
import orjson

from plugin_pool.errors import MalformedReplyError
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox._calls import encode, outcome_value
from plugin_pool.sandbox._deadlines import DeadlineWatch
from plugin_pool.sandbox._exchange import Exchange
from plugin_pool.sandbox.manager import WorkerManager
from plugin_pool.sandbox.worker_client import StreamBroken
from plugin_pool.sandbox.workers import Worker, WorkerGroup

__all__ = ["CHUNK_MAX_ITEMS", "CHUNK_MIN_ITEMS", "PIPELINE_DEPTH", "ChunkRun", "chunk_items", "encode_chunk"]

CHUNK_MIN_ITEMS = 256
CHUNK_MAX_ITEMS = 4096
PIPELINE_DEPTH = 2
"""Chunks of one ``invoke_many`` in flight per worker."""
SAMPLE_ITEMS = 16
"""Items whose size is measured to estimate the bytes of one item."""


def chunk_items(items: list[Any], chunk_size: int | None, workers: int, chunk_mb: float) -> list[tuple[int, list[Any]]]:
    """``items`` cut into chunks: (offset, items). ``chunk_size`` wins; else two chunks per worker of 256 to
    4096 items, fewer items when they would pass ``chunk_mb`` MiB. No side effects."""
    if chunk_size:
        size = max(1, chunk_size)
    else:
        size = min(CHUNK_MAX_ITEMS, max(CHUNK_MIN_ITEMS, -(-len(items) // (2 * max(1, workers)))))
        per_item = _estimate_bytes(items)
        size = max(1, min(size, int(chunk_mb * 1024 * 1024) // max(1, per_item)))
    return [(start, items[start : start + size]) for start in range(0, len(items), size)]


def encode_chunk(
    plugin_id: str, capability: str, chunk: list[Any], offset: int, max_bytes: int
) -> list[tuple[list[Any], int, bytes]]:
    """The chunk encoded, halved until every part fits ``max_bytes``: (items, offset, data). Raises
    PayloadError for an item that cannot cross, or one item alone over the limit."""
    data = encode(plugin_id, codec.encode_batch, capability, chunk, "batch", max_bytes, check_size=len(chunk) == 1)
    if len(data) <= max_bytes:
        return [(chunk, offset, data)]
    half = len(chunk) // 2
    first = encode_chunk(plugin_id, capability, chunk[:half], offset, max_bytes)
    return first + encode_chunk(plugin_id, capability, chunk[half:], offset + half, max_bytes)


def _estimate_bytes(items: Sequence[Any]) -> int:
    """The mean encoded size of a few items spread over the batch (bytes and str by length)."""
    step = max(1, len(items) // SAMPLE_ITEMS)
    sample = items[::step][:SAMPLE_ITEMS]
    total = 0
    for item in sample:
        if isinstance(item, bytes | bytearray | memoryview | str):
            total += len(item) + 2
        else:
            try:
                total += len(orjson.dumps(item))
            except TypeError:  # refused later, by the encoder, with the place named
                total += 16
    return max(1, total // max(1, len(sample)))


class Router(Protocol):
    """What a chunk run needs from the pool (``SandboxPool``)."""

    _manager: WorkerManager
    _watch: DeadlineWatch
    _exchanger: Exchange

    def _take_worker(self, group: WorkerGroup, capability: str, deadline: float, timeout_s: float) -> Worker: ...


class ChunkRun:
    """One ``invoke_many`` in progress: ``parts`` are (items, offset, encoded data), sent in order."""

    def __init__(
        self,
        pool: Router,
        group: WorkerGroup,
        capability: str,
        parts: list[tuple[list[Any], int, bytes]],
        timeout_s: float,
    ) -> None:
        self.pool = pool
        self.group = group
        self.capability = capability
        self.parts = parts
        self.timeout_s = timeout_s
        self.results: list[list[Any] | None] = [None] * len(parts)
        self.errors: dict[int, BaseException] = {}
        self.next_part = 0
        self.in_flight: collections.deque[tuple[Worker, int]] = collections.deque()
        """(worker, part) in the order sent: each worker answers its own in order."""
        self.loads: dict[Worker, int] = {}
        """Parts in flight per worker we hold."""
        self.items_sent: dict[Worker, int] = {}

    def run(self) -> list[Any]:
        """Send every part, collect every reply; the results in order, or the lowest-index error. Blocks."""
        group, manager = self.group, self.pool._manager
        deadline = time.monotonic() + self.timeout_s
        self._hold(self.pool._take_worker(group, self.capability, deadline, self.timeout_s))
        wanted = min(len(self.parts), group.max_workers) - 1
        with group.lock:
            while wanted > 0 and not group.waiters and (worker := manager.take_idle(group)) is not None:
                self._hold(worker)
                wanted -= 1
            group.demand += wanted  # the pool grows for the rest (up to max_workers) while we run
            manager.reconcile(group)
        try:
            self._fill()
            while self.in_flight:
                self._receive_one()
                if wanted and group.idle and not self.errors:
                    wanted -= self._pick_up(wanted)
                self._fill()
        finally:
            with group.lock:
                group.demand -= wanted
                for worker in list(self.loads):
                    if self.loads[worker] == 0:
                        self._release(worker)
            for worker in list(self.loads):  # only after an unexpected error: replies are left unread
                self.pool._manager.runner.kill_worker(worker.handle, "recycle")
        if self.errors:
            raise self.errors[min(self.errors)]
        return [value for part in self.results for value in (part or ())]

    def _hold(self, worker: Worker) -> None:
        self.loads[worker] = 0
        self.items_sent[worker] = 0

    def _pick_up(self, wanted: int) -> int:
        """Idle workers that came while we run (the pool grew), when nobody waits for them."""
        group, taken = self.group, 0
        with group.lock:
            while taken < wanted and not group.waiters and (worker := self.pool._manager.take_idle(group)) is not None:
                self._hold(worker)
                taken += 1
        return taken

    def _fill(self) -> None:
        """Queue parts on the workers with room, in part order (none once an error is known)."""
        while self.next_part < len(self.parts) and not self.errors:
            worker = min(self.loads, key=self.loads.__getitem__, default=None)
            if worker is None or self.loads[worker] >= PIPELINE_DEPTH:
                return
            client = worker.handle.client
            index = self.next_part
            if self.loads[worker] == 0:
                self.pool._watch.arm(worker.handle, time.monotonic() + self.timeout_s)
            if client is None:
                self._lose(worker, StreamBroken("the worker's channel is closed"))
                continue
            client.send(self.parts[index][2])
            self.next_part += 1
            self.loads[worker] += 1
            self.items_sent[worker] += len(self.parts[index][0])
            self.in_flight.append((worker, index))

    def _receive_one(self) -> None:
        worker, index = self.in_flight[0]
        handle = worker.handle
        client = handle.client
        try:
            if client is None:
                raise StreamBroken("the worker's channel is closed")
            reply = client.receive()
        except (grpc.RpcError, StreamBroken, ValueError) as exc:
            self._lose(worker, exc)
            return
        if self.loads[worker] == 1 and not self.pool._watch.disarm(handle):
            self._lose(worker, StreamBroken("the deadline passed"))  # it won the race with this reply
            return
        self.in_flight.popleft()
        self.loads[worker] -= 1
        if self.loads[worker]:
            self.pool._watch.arm(handle, time.monotonic() + self.timeout_s)  # the next chunk starts now
        with self.group.lock:
            self.group.calls += 1
        self._decode(index, reply, handle.pid)
        if self.loads[worker] == 0 and (self.next_part >= len(self.parts) or self.errors):
            with self.group.lock:
                self._release(worker)

    def _decode(self, index: int, reply: memoryview, pid: int | None) -> None:
        chunk, offset, _ = self.parts[index]
        plugin_id = self.group.plugin_id
        try:
            blobs = codec.decode_blob_results(reply)  # every result bytes: no outcome to look at
            if blobs is not None and len(blobs) == len(chunk):
                self.results[index] = blobs
                return
            outcomes = codec.decode_batch_results(reply)
            if len(outcomes) != len(chunk):
                if len(outcomes) == 1 and not outcomes[0][0]:  # the whole batch failed (e.g. reply too large)
                    outcome_value(plugin_id, self.capability, outcomes[0], offset, pid)
                raise MalformedReplyError(
                    f"plugin {plugin_id!r}: the worker answered {len(outcomes)} of {len(chunk)} batch items",
                    plugin_id=plugin_id,
                )
            if all(ok for ok, _ in outcomes):
                self.results[index] = [value for _, value in outcomes]
            else:
                self.results[index] = [
                    outcome_value(plugin_id, self.capability, o, offset + n, pid) for n, o in enumerate(outcomes)
                ]
        except (ValueError, UnicodeDecodeError) as exc:
            self.errors[index] = MalformedReplyError(
                f"plugin {plugin_id!r}: worker pid {pid} sent a malformed reply: {exc}", plugin_id=plugin_id, pid=pid
            )
        except Exception as exc:
            self.errors[index] = exc

    def _lose(self, worker: Worker, exc: BaseException) -> None:
        """The worker is lost: every part in flight on it fails with its error; nothing more is sent."""
        self.pool._watch.disarm(worker.handle)
        loss = self.pool._exchanger.loss(worker, exc)
        error = loss.error(self.group.plugin_id, self.capability, self.timeout_s)
        lost = [index for held, index in self.in_flight if held is worker]
        self.in_flight = collections.deque((held, index) for held, index in self.in_flight if held is not worker)
        for index in lost or [self.next_part]:
            self.errors[index] = error
        with self.group.lock:
            self.group.errors += 1
            self.group.last_error = str(error)[:500]
        del self.loads[worker]  # not given back: its exit report takes it out of the pool

    def _release(self, worker: Worker) -> None:
        """Give a worker back (caller holds the group's lock)."""
        self.pool._manager.release(self.group, worker, self.items_sent.pop(worker, 0))
        del self.loads[worker]
