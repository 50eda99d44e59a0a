"""Frames on a worker's call stream (host side): send, read the replies, and say what a broken stream means.

A broken stream is a lost worker: the error says how it ended (killed at a deadline, OOM, CPU limit,
crashed), so the exit report is awaited (it comes within milliseconds of the death); a worker still alive
with a broken stream is killed.
"""

from __future__ import annotations

import grpc

from plugin_pool.sandbox._calls import WorkerLoss
from plugin_pool.sandbox._deadlines import DeadlineWatch
from plugin_pool.sandbox.worker_client import EXIT_WAIT_S, StreamBroken
from plugin_pool.sandbox.workers import Worker, WorkerRunner

__all__ = ["Exchange"]


class Exchange:
    """Sends frames on the streams of workers the caller holds. Thread-safe (one caller per worker)."""

    def __init__(self, runner: WorkerRunner, watch: DeadlineWatch) -> None:
        self.runner = runner
        self.watch = watch

    def send(
        self, worker: Worker, frames: list[bytes], deadline: float, *, reply_parts: bool = False
    ) -> list[list[memoryview]]:
        """Send ``frames`` (all at once: the worker answers them in order) and read every reply (with
        ``reply_parts``, a reply may come in several P frames). Blocks until ``deadline`` at most, when the
        worker is killed. Raises WorkerLoss."""
        handle = worker.handle
        client = handle.client
        replies: list[list[memoryview]] = []
        try:
            if client is None:
                raise StreamBroken("the worker's channel is closed")
            self.watch.arm(handle, deadline)
            for data in frames:
                client.send(data)
            for _ in frames:
                parts = [client.receive()]
                while reply_parts and bytes(parts[-1][:1]) == b"P":
                    parts.append(client.receive())
                replies.append(parts)
        except (grpc.RpcError, StreamBroken, ValueError) as exc:  # ValueError: its channel was just closed
            self.watch.disarm(handle)
            raise self.loss(worker, exc) from None
        if not self.watch.disarm(handle):  # the deadline won the race with the reply: the kill is under way
            raise self.loss(worker, StreamBroken("the deadline passed"))
        return replies

    def send_one(self, worker: Worker, data: bytes, deadline: float) -> memoryview:
        """One frame and its one reply (a single call). Blocks until ``deadline`` at most. Raises WorkerLoss."""
        handle = worker.handle
        client = handle.client
        watch = self.watch
        try:
            if client is None:
                raise StreamBroken("the worker's channel is closed")
            watch.arm(handle, deadline)
            client.send(data)
            reply = client.receive()
        except (grpc.RpcError, StreamBroken, ValueError) as exc:  # ValueError: its channel was just closed
            watch.disarm(handle)
            raise self.loss(worker, exc) from None
        if not watch.disarm(handle):  # the deadline won the race with the reply: the kill is under way
            raise self.loss(worker, StreamBroken("the deadline passed"))
        return reply

    def loss(self, worker: Worker, exc: BaseException) -> WorkerLoss:
        """What a broken stream means for the calls on it: how the worker ended (killed if it lives). Blocks up
        to 2 s for the exit report."""
        handle = worker.handle
        code = exc.code() if isinstance(exc, grpc.RpcError) else None
        if handle.timed_out:  # killed at a deadline (the pool replaces it)
            return WorkerLoss(handle, "timeout")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not handle.exited.is_set():
            # Only a worker that ignores the message limit gets here: its stream is gone with the reply.
            self.runner.kill_worker(handle, "crash")
            return WorkerLoss(handle, "too_large", (exc.details() if isinstance(exc, grpc.RpcError) else "") or "")
        if not handle.exited.wait(EXIT_WAIT_S):
            self.runner.kill_worker(handle, "crash")
            handle.exited.wait(EXIT_WAIT_S)
        return WorkerLoss(handle, "died")
