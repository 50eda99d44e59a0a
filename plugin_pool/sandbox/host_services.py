"""The plugin-to-host direction (host side): the Callbacks stream of each worker.

A worker may not create sockets once it serves, so the host opens one Callbacks stream per worker and
the worker talks back on it: plugin log records (logged here under ``plugin_pool.sandbox`` as
``plugin_log``, rate-limited per worker) and calls to the host services its configuration allows
(answered on a small thread pool, bounded per worker). What is dropped is counted and reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from plugin_pool._proto.v1 import worker_pb2 as pb
from plugin_pool.sandbox._codec import decode_value, encode_value
from plugin_pool.sandbox.worker_client import WorkerHandle

__all__ = ["LOG_RECORDS_PER_S", "MAX_SERVICE_CALLS_IN_FLIGHT", "HostServices"]

_log = logging.getLogger("plugin_pool.sandbox")

LOG_RECORDS_PER_S = 200
"""Plugin log records the host accepts per worker per second; the rest are dropped and counted."""
MAX_SERVICE_CALLS_IN_FLIGHT = 16
"""Host service calls one worker may have waiting; more are refused at once."""
SERVICE_THREADS = 4


class HostServices:
    """Serves the Callbacks streams of every worker of one pool. Thread-safe.

    ``services`` is the host's own dict (even while empty: services it registers later are seen too).
    ``open`` and ``close`` are idempotent; after ``close`` service requests are no longer answered.
    """

    def __init__(self, services: Mapping[str, Any] | None = None) -> None:
        self._services = services if services is not None else {}
        self._allowed: dict[str, tuple[str, ...]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def open(self) -> None:
        """Start the thread pool that answers service calls. Does not block."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=SERVICE_THREADS, thread_name_prefix="plugin-pool-service")

    def close(self) -> None:
        """Stop answering service calls (queued ones are dropped). Does not block."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def allow_services(self, plugin_id: str, services: tuple[str, ...]) -> None:
        """Record which host services ``plugin_id``'s workers may call. Safe to call again (replaces)."""
        self._allowed = {**self._allowed, plugin_id: services}

    def serve(self, handle: WorkerHandle) -> None:
        """Open the worker's Callbacks stream and serve it on a thread of its own until it ends. Does not block."""
        threading.Thread(
            target=self._serve_callbacks, args=(handle,), name=f"plugin-pool-cb-{handle.pid}", daemon=True
        ).start()

    def _serve_callbacks(self, handle: WorkerHandle) -> None:
        client = handle.client
        if client is None:
            return

        def outgoing() -> Iterator[pb.HostMessage]:
            while True:
                message = handle.callbacks.get()
                if message is None:
                    return
                yield message

        # A plugin must not be able to flood the host: log records are rate-limited per worker and the
        # service calls it may have in flight are bounded. What is dropped is counted and reported.
        budget, window_start, dropped = LOG_RECORDS_PER_S, time.monotonic(), 0
        try:
            # wait_for_ready: the stream opens right after the socket file appears, maybe before the worker
            # listens; a refused connect would otherwise end it at once (no logs, no services for this worker).
            for message in client.stub.Callbacks(outgoing(), wait_for_ready=True):
                kind = message.WhichOneof("kind")
                if kind == "log":
                    now = time.monotonic()
                    if now - window_start >= 1.0:
                        if dropped:
                            _log.warning(
                                "dropped %d log records of worker %s over the rate limit",
                                dropped,
                                handle.pid,
                                extra={"event": "plugin_log_dropped", "pluginId": handle.plugin_id, "pid": handle.pid},
                            )
                        budget, window_start, dropped = LOG_RECORDS_PER_S, now, 0
                    if budget <= 0:
                        dropped += 1
                        continue
                    budget -= 1
                    self._log_record(handle, message.log)
                elif kind == "service_request":
                    self._submit(handle, message.service_request)
        except (grpc.RpcError, ValueError):  # ValueError: the worker died and its channel closed first
            pass
        except Exception:
            _log.exception("callbacks stream of worker %s failed", handle.pid, extra={"event": "callbacks_failed"})

    @staticmethod
    def _log_record(handle: WorkerHandle, record: pb.LogRecord) -> None:
        level = logging.getLevelName(record.level)
        _log.log(
            level if isinstance(level, int) else logging.INFO,
            "%s",
            record.message[:4000],
            extra={
                "event": "plugin_log",
                "pluginId": handle.plugin_id,
                "trustLevel": "untrusted",
                "pid": handle.pid,
                "pluginLogger": record.logger[:200],
            },
        )

    def _submit(self, handle: WorkerHandle, request: pb.ServiceRequest) -> None:
        pool = self._pool
        if pool is None:
            return
        if handle.service_calls >= MAX_SERVICE_CALLS_IN_FLIGHT:
            reply = pb.ServiceReply(id=request.id)
            reply.error.CopyFrom(
                pb.RemoteError(
                    kind="service_error",
                    type="RuntimeError",
                    message=f"more than {MAX_SERVICE_CALLS_IN_FLIGHT} host service calls in flight",
                )
            )
            handle.callbacks.put(pb.HostMessage(service_reply=reply))
            return
        handle.service_calls += 1
        try:
            pool.submit(self._answer, handle, request)
        except RuntimeError:  # shut down meanwhile: the pool is closing
            handle.service_calls -= 1

    def _answer(self, handle: WorkerHandle, request: pb.ServiceRequest) -> None:
        allowed = self._allowed.get(handle.plugin_id, ())
        reply = pb.ServiceReply(id=request.id)
        try:
            if request.service not in allowed:
                raise PermissionError(f"plugin {handle.plugin_id!r} may not use host service {request.service!r}")
            if request.method.startswith("_"):
                raise PermissionError(f"method {request.method!r} of a host service is private")
            service = self._services[request.service]
            args = decode_value(request.args) or []
            result = getattr(service, request.method)(*args)
            reply.result.CopyFrom(encode_value(result))
        except Exception as exc:
            reply.error.CopyFrom(
                pb.RemoteError(kind="service_error", type=type(exc).__qualname__, message=str(exc)[:2000])
            )
        finally:
            handle.service_calls -= 1
        handle.callbacks.put(pb.HostMessage(service_reply=reply))
