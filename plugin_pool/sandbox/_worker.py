"""The sandbox worker: confine, serve gRPC on the host's chosen Unix socket, import the plugin, answer calls.

Runs in a process forked from the zygote; it never returns into the zygote's loop. It imports nothing of
the host (no registry, no configuration loader, no metrics, no database driver): only the confinement
modules, the generated protocol, and the plugin model the plugin itself uses. The order follows
docs/SANDBOX.md: confine (Landlock, seccomp filter 1) -> grpc.server + bind + start -> seccomp filter 2
(no socket, socketpair, connect) -> import the plugin. So the plugin's import-time code, and any thread
it starts, is already fully confined.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import mmap
import os
import queue
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import orjson

from plugin_pool._loader import load_entry
from plugin_pool._proto.v1 import worker_pb2 as pb
from plugin_pool._proto.v1 import worker_pb2_grpc as pb_grpc
from plugin_pool.context import PluginContext
from plugin_pool.model import Capabilities, TrustLevel
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox._access import WorkerView, explain_access_error
from plugin_pool.sandbox._codec import decode_value, encode_value
from plugin_pool.sandbox._confine import (
    LAYER_LANDLOCK,
    LAYER_MOUNTNS,
    ConfinementError,
    ConfinementReport,
    ConfinementSpec,
    check_cgroups,
    confine_self,
    lock_sockets,
)

__all__ = ["EXIT_BOOT_FAILED", "EXIT_CONFINEMENT_FAILED", "EXIT_PLUGIN_LOAD_FAILED", "FRAME_SLACK", "run_worker"]

# Distinct exit codes, so the host tells a worker that cannot boot from one that crashed while serving,
# and stops respawning it (gunicorn's WORKER_BOOT_ERROR).
EXIT_BOOT_FAILED = 70
EXIT_CONFINEMENT_FAILED = 71
EXIT_PLUGIN_LOAD_FAILED = 72
BOOT_EXIT_CODES = frozenset({EXIT_BOOT_FAILED, EXIT_CONFINEMENT_FAILED, EXIT_PLUGIN_LOAD_FAILED})

TYPE_MAX_CHARS = 200
MESSAGE_MAX_CHARS = 2000
LOG_MAX_CHARS = 4000
OUTBOX_MAX_MESSAGES = 1000
SERVICE_CALL_TIMEOUT_S = 10.0
READY_WAIT_S = 30.0
_CALL_KINDS = (b"J", b"R")
_MULTI_KIND = b"M"
_RESOURCE_LIMIT_REPLY = b'E{"kind":"resource_limit"'
FRAME_SLACK = 64
"""gRPC's message limit is this much above sandbox.max_message_mb on both sides, so a Frame's own tag and
length never push a payload or reply that fits the limit over it (that would break the stream)."""


_view: WorkerView | None = None
"""This worker's paths, ids and layers, once confined: what :func:`_error` names when a file was refused."""


def _error(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of an exception; plugin exceptions are hostile input too, so a ``__str__``
    or a type name that raises must not break the reply. A file the confinement refused gets the layer and
    the fix appended (``plugin_pool.sandbox._access``)."""
    try:
        message = str(exc)
    except BaseException:
        message = "<the exception's message could not be rendered>"
    hint = explain_access_error(exc, _view) if _view is not None and isinstance(exc, OSError | ImportError) else None
    if hint is not None:
        message = f"{message[: max(0, MESSAGE_MAX_CHARS - len(hint) - 1)]} {hint}"
    try:
        type_name = str(type(exc).__qualname__)
    except BaseException:
        type_name = "Exception"
    return type_name[:TYPE_MAX_CHARS], message[:MESSAGE_MAX_CHARS]


def _raised(exc: BaseException) -> tuple[str, str, str]:
    """What the plugin raised, as (kind, type, message). A real MemoryError is the resource limit it is."""
    if type(exc) is MemoryError:
        return "resource_limit", "memory", "RLIMIT_DATA was reached"
    return ("plugin_raised", *_error(exc))


_TEXT_OR_BYTES = (str, bytes, bytearray, memoryview)


def _unsendable(exc: BaseException) -> str:
    """Why a result cannot cross the boundary (orjson's TypeError, or whatever a hostile object raised)."""
    try:
        text = str(exc) if isinstance(exc, TypeError) else repr(exc)
    except BaseException:
        text = type(exc).__name__
    return f"the result cannot be sent: {text}; return JSON-compatible values or bytes"[:500]


def _step_error(kind: str, type_name: str = "", message: str = "") -> pb.RemoteError:
    return pb.RemoteError(kind=kind, type=type_name, message=message[:MESSAGE_MAX_CHARS])


class _OutboxLogHandler(logging.Handler):
    """Sends the plugin's log records to the host over the Callbacks stream; drops (and counts) on overflow."""

    def __init__(self, outbox: queue.Queue[pb.WorkerMessage | None]) -> None:
        super().__init__()
        self.outbox = outbox
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)[:LOG_MAX_CHARS]
        except Exception:
            message = str(record.msg)[:LOG_MAX_CHARS]
        item = pb.WorkerMessage(log=pb.LogRecord(level=record.levelname, logger=record.name, message=message))
        try:
            self.outbox.put_nowait(item)
        except queue.Full:
            self.dropped += 1


class _ServiceProxy:
    """A host service as the sandboxed plugin sees it: ``proxy.method(*args)`` is a call to the host."""

    def __init__(self, servicer: WorkerServicer, name: str) -> None:
        self._servicer = servicer
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args: self._servicer.call_service(self._name, method, list(args))


class WorkerServicer(pb_grpc.PluginWorkerServicer):
    """Answers the host's RPCs for one plugin instance. Thread-safe: gRPC calls it from its executor."""

    def __init__(self, plugin_id: str, max_message_bytes: int) -> None:
        self.plugin_id = plugin_id
        self.max_message_bytes = max_message_bytes
        self.ready = threading.Event()
        """Set once the plugin is imported."""
        self.go = threading.Event()
        """Set by the host's first Initialize: only then is the plugin imported."""
        self.plugin: Any = None
        self.methods: dict[str, Callable[[Any], Any]] = {}
        self.code_capabilities: list[str] = []
        """Every capability the plugin's code declares, served or not (Health reports it)."""
        self.async_methods: set[Callable[[Any], Any]] = set()
        self.report: ConfinementReport | None = None
        self.progress: mmap.mmap | None = None
        """The progress cell shared with the host (see _codec), mapped before confinement."""
        self.calls = 0
        self.server: grpc.Server | None = None
        self.outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue(maxsize=OUTBOX_MAX_MESSAGES)
        self.closing = threading.Event()
        self.log_handler = _OutboxLogHandler(self.outbox)
        self.logger = logging.getLogger(f"plugin_pool.plugins.{plugin_id}")
        self.logger.addHandler(self.log_handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self._pending: dict[int, Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------

    def Initialize(self, request: pb.InitializeRequest, context: grpc.ServicerContext) -> pb.StepReply:
        self.go.set()  # the host has done its part (the worker's cgroups): the plugin may be imported now
        if not self.ready.wait(min(READY_WAIT_S, context.time_remaining() or READY_WAIT_S)):
            return pb.StepReply(error=_step_error("not_ready", message="the plugin is still loading"))
        try:
            config = orjson.loads(request.config_json) if request.config_json else {}
        except orjson.JSONDecodeError as exc:
            return pb.StepReply(error=_step_error("bad_payload", *_error(exc)))
        allowed = tuple(request.services)
        plugin_context = PluginContext(
            self.plugin_id,
            TrustLevel.UNTRUSTED,
            config,
            {name: _ServiceProxy(self, name) for name in allowed},
            allowed,
            logger=self.logger,
        )
        return self._step(self.plugin.initialize, plugin_context)

    def Start(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.StepReply:
        return self._step(self.plugin.start)

    def Stop(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.StepReply:
        return self._step(self.plugin.stop)

    def _step(self, func: Callable[..., Any], *args: Any) -> pb.StepReply:
        if not self.ready.is_set():
            return pb.StepReply(error=_step_error("not_ready", message="the plugin is not loaded"))
        try:
            result = func(*args)
            if inspect.isawaitable(result):
                self.run_coroutine(result)
        except BaseException as exc:  # SystemExit too: it must not unwind a gRPC thread
            return pb.StepReply(error=_step_error(*_raised(exc)))
        return pb.StepReply()

    # -- work ----------------------------------------------------------------------------------------
    # Calls arrive as hand-framed Frames (see _codec) on the host's one stream: raw bytes in, raw bytes
    # out, no message objects, answered in order.

    def serve_calls(self, requests: Iterator[memoryview], context: grpc.ServicerContext) -> Iterator[bytes]:
        """The Calls stream: one reply per request, in order (a multi reply may come in several parts)."""
        for data in requests:
            kind = bytes(data[:1])
            if kind in _CALL_KINDS:
                yield self.call(data)
            elif kind == _MULTI_KIND:
                yield from self.call_multi(data)
            else:
                yield self.call_batch(data)

    def call(self, data: memoryview) -> bytes:
        """One call: decode, run the capability, encode the result or the error as data."""
        request = self._resolve(data, codec.decode_call)
        if isinstance(request, bytes):
            return request
        method, payload = request
        ok, value = self._run(method, payload)
        if ok:
            if isinstance(value, _TEXT_OR_BYTES) and len(value) > self.max_message_bytes:
                # Refused before encoding: orjson reserves several times a string's size and dies (SIGSEGV)
                # instead of raising when that reservation fails under the memory limit.
                return codec.encode_error(
                    "reply_too_large",
                    "",
                    f"the result is {len(value)} {'characters' if isinstance(value, str) else 'bytes'}; the "
                    f"limit is {self.max_message_bytes} bytes",
                )
            try:
                reply = codec.encode_result(value)
            except MemoryError as exc:
                return codec.encode_error(*_raised(exc))
            except Exception as exc:  # orjson raises TypeError, but a hostile object may raise anything
                return codec.encode_error("bad_reply", "", _unsendable(exc))
        else:
            reply = codec.encode_error(*value)
        return self._bounded(reply, "result")

    def call_multi(self, data: memoryview) -> Iterator[bytes]:
        """Calls of several callers batched together: each runs as a call of its own, and the replies go back
        in order, in as many frames as the message limit needs (every item's result is sent, none is lost)."""
        try:
            items = codec.decode_multi(data)
        except ValueError as exc:
            yield codec.encode_error("bad_payload", type(exc).__name__, str(exc)[:MESSAGE_MAX_CHARS])
            return
        budget = self.max_message_bytes
        part: list[bytes] = []
        size = 1
        progress = self.progress
        exhausted = False
        for index, item in enumerate(items):
            if exhausted:  # the memory limit was hit: the host runs the rest on another worker
                reply = codec.encode_error("not_run", "", "an earlier call of the batch hit the memory limit")
            else:
                if progress is not None:
                    codec.PROGRESS.pack_into(progress, 0, index + 1)
                reply = self.call(memoryview(item))
                exhausted = reply.startswith(_RESOURCE_LIMIT_REPLY)
            if len(reply) + codec.ITEM_OVERHEAD + 1 > budget:
                reply = codec.encode_error(
                    "reply_too_large", "", f"the result is {len(reply)} bytes; the limit is {budget}"
                )
            if part and size + len(reply) + codec.ITEM_OVERHEAD > budget:
                yield codec.encode_reply_items(part, final=False)
                part, size = [], 1
            part.append(reply)
            size += len(reply) + codec.ITEM_OVERHEAD
        if progress is not None:
            codec.PROGRESS.pack_into(progress, 0, 0)
        yield codec.encode_reply_items(part, final=True)

    def call_batch(self, data: memoryview) -> bytes:
        """Many inputs of one capability: results (or errors) in order, in one reply."""
        request = self._resolve(data, codec.decode_batch)
        if isinstance(request, bytes):
            return request
        method, payloads = request
        if method in self.async_methods:
            outcomes = [self._run(method, payload) for payload in payloads]
        else:  # the common case, as tight as it gets: no await check, one counter update
            outcomes = []
            append = outcomes.append
            for payload in payloads:
                try:
                    append((True, method(payload)))
                except BaseException as exc:  # SystemExit too: it must not unwind a gRPC thread
                    append((False, _raised(exc)))
            self.calls += len(payloads)
        try:
            reply = codec.encode_batch_results(outcomes)
        except Exception:  # one result JSON cannot hold: report that item, keep the others
            reply = codec.encode_batch_results([self._checked(outcome) for outcome in outcomes])
        return self._bounded(reply, "batch reply")

    def _resolve(self, data: memoryview, decode: Callable[[memoryview], tuple[str, Any]]) -> tuple[Any, Any] | bytes:
        """(method, decoded payload), or the error reply to send when the request cannot be served."""
        try:
            capability, payload = decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return codec.encode_error("bad_payload", type(exc).__name__, str(exc)[:MESSAGE_MAX_CHARS])
        method = self.methods.get(capability)
        if method is None:
            return codec.encode_error("unknown_capability", "", f"capability {capability[:100]!r} is not served")
        return method, payload

    def _bounded(self, reply: bytes, what: str) -> bytes:
        if len(reply) > self.max_message_bytes:
            return codec.encode_error(
                "reply_too_large", "", f"the {what} is {len(reply)} bytes; the limit is {self.max_message_bytes}"
            )
        return reply

    def _run(self, method: Callable[[Any], Any], payload: Any) -> codec.Outcome:
        try:
            result = method(payload)
            if inspect.isawaitable(result):
                result = self.run_coroutine(result)
        except BaseException as exc:  # SystemExit too: it must not unwind a gRPC thread
            return False, _raised(exc)
        finally:
            self.calls += 1
        return True, result

    @staticmethod
    def _checked(outcome: codec.Outcome) -> codec.Outcome:
        ok, value = outcome
        if not ok:
            return outcome
        try:
            codec.encode_result(value)
        except Exception as exc:
            return False, ("bad_reply", "", _unsendable(exc))
        return outcome

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthReply:
        report = orjson.dumps(self.report.to_dict()) if self.report is not None else b""
        return pb.HealthReply(
            state="ready" if self.ready.is_set() else "loading",
            calls=self.calls,
            max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            capabilities=self.code_capabilities,  # all its code offers: the host reports undeclared ones
            confinement_json=report,
        )

    def Shutdown(self, request: pb.ShutdownRequest, context: grpc.ServicerContext) -> pb.ShutdownReply:
        server = self.server
        self.closing.set()
        try:
            self.outbox.put_nowait(None)  # ends the Callbacks stream now, so stop() need not wait its grace
        except queue.Full:
            pass
        if server is not None:
            threading.Thread(target=server.stop, args=(0.5,), daemon=True).start()
        return pb.ShutdownReply()

    # -- plugin-to-host ------------------------------------------------------------------------------

    def Callbacks(
        self, request_iterator: Iterator[pb.HostMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.WorkerMessage]:
        threading.Thread(target=self._read_host_messages, args=(request_iterator,), daemon=True).start()
        while context.is_active() and not self.closing.is_set():
            try:
                message = self.outbox.get(timeout=0.25)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message

    def _read_host_messages(self, request_iterator: Iterator[pb.HostMessage]) -> None:
        try:
            for message in request_iterator:
                reply = message.service_reply
                with self._pending_lock:
                    future = self._pending.pop(reply.id, None)
                if future is None:
                    continue
                if reply.WhichOneof("outcome") == "error":
                    future.set_exception(RuntimeError(f"{reply.error.type or reply.error.kind}: {reply.error.message}"))
                else:
                    future.set_result(decode_value(reply.result))
        except grpc.RpcError:
            pass

    def call_service(self, service: str, method: str, args: list[Any]) -> Any:
        """Call ``service.method(*args)`` in the host and wait for the result (blocks up to 10 s)."""
        request_id = next(self._ids)
        future: Future[Any] = Future()
        with self._pending_lock:
            self._pending[request_id] = future
        try:
            self.outbox.put(
                pb.WorkerMessage(
                    service_request=pb.ServiceRequest(
                        id=request_id, service=service, method=method, args=encode_value(args)
                    )
                ),
                timeout=1.0,
            )
            return future.result(SERVICE_CALL_TIMEOUT_S)
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)

    # -- helpers -------------------------------------------------------------------------------------

    def run_coroutine(self, awaitable: Any) -> Any:
        """Run an awaitable on the worker's private loop thread and wait for it."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="plugin-loop", daemon=True).start()
                self._loop = loop

        async def wrap() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result()

    def load_plugin(self, plugin_dir: str, entry: str, declared: list[str], python_path: Sequence[str] = ()) -> None:
        """Import the plugin from ``plugin_dir`` and map each declared capability to its method.

        The plugin's own modules import each other by name (the folder first on ``sys.path``); its
        ``[python] path`` folders (its vendored dependencies, inside the same verified copy) come next, before
        the runtime's own site-packages.
        """
        sys.path[0:0] = [plugin_dir, *(os.path.join(plugin_dir, *rel.split("/")) for rel in python_path)]
        plugin = load_entry(entry, files=False)
        info = plugin.info
        if info.id != self.plugin_id:
            raise ValueError(
                f"entry {entry!r} declares plugin id {info.id!r}, but the manifest says {self.plugin_id!r}"
            )
        capabilities = plugin.capabilities
        if not isinstance(capabilities, Capabilities):
            raise TypeError(f"plugin {self.plugin_id!r} capabilities must be a Capabilities object")
        self.code_capabilities = sorted(capabilities)
        for name in declared:
            if name not in capabilities:
                raise ValueError(f"the manifest declares capability {name!r} but the plugin does not")
            method = getattr(plugin, capabilities[name].method, None)
            if not callable(method):
                raise ValueError(f"capability {name!r} maps to missing method {capabilities[name].method!r}")
            self.methods[name] = method
            if inspect.iscoroutinefunction(method):
                self.async_methods.add(method)
        self.plugin = plugin


def frames_handler(servicer: WorkerServicer) -> grpc.GenericRpcHandler:
    """The PluginWorkerFrames service (the Calls stream), with the one-field Frame (de)serialized by hand."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.serve_calls, request_deserializer=codec.unframe, response_serializer=codec.frame
    )
    return grpc.method_handlers_generic_handler("plugin_pool.v1.PluginWorkerFrames", {"Calls": handler})


def _map_progress(path: object) -> mmap.mmap | None:
    """Map the host's progress cell (shared, read-write); None without one."""
    if not isinstance(path, str) or not path:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return mmap.mmap(fd, codec.PROGRESS_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def run_worker(spec: dict[str, Any], *, parent_pid: int, output_fd: int) -> int:
    """Boot and serve one worker; return the process exit code. Called in the child right after fork."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    plugin_id = str(spec["plugin_id"])
    # Opened before Landlock, read later: the groups the host puts this process in (see check_cgroups).
    cgroup_view = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    # Mapped before confinement (the mapping outlives the descriptor): where batches report their progress.
    progress = _map_progress(spec.get("progress_path"))
    confinement = ConfinementSpec.from_dict(
        {
            **spec["confinement"],
            "stdout_fd": output_fd,
            "log_fd": output_fd,
            "keep_fds": [*spec["confinement"].get("keep_fds", ()), cgroup_view],
        }
    )
    try:
        report = confine_self(confinement, parent_pid=parent_pid)
    except ConfinementError as exc:
        # fd 2 is the output pipe by now (confine_self moved it there and closed the original number).
        os.write(2, f"confinement failed: {exc}\n".encode(errors="replace"))
        return EXIT_CONFINEMENT_FAILED
    global _view
    _view = WorkerView(
        read_only_paths=confinement.read_only_paths,
        temp_dir=confinement.temp_dir,
        uid=report.uid,
        gid=report.gid,
        private_root=report.is_in_force(LAYER_MOUNTNS),
        landlock=report.is_in_force(LAYER_LANDLOCK),
    )
    max_bytes = int(spec["max_message_bytes"])
    servicer = WorkerServicer(plugin_id, max_bytes)
    servicer.progress = progress
    server = grpc.server(
        ThreadPoolExecutor(max_workers=int(spec.get("threads", 4)), thread_name_prefix="worker"),
        options=[
            ("grpc.max_receive_message_length", max_bytes + FRAME_SLACK),
            ("grpc.max_send_message_length", max_bytes + FRAME_SLACK),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer.server = server
    pb_grpc.add_PluginWorkerServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((frames_handler(servicer),))
    if server.add_insecure_port("unix:" + str(spec["socket_path"])) == 0:
        sys.stderr.write(f"cannot bind unix:{spec['socket_path']}\n")
        return EXIT_BOOT_FAILED
    server.start()
    try:
        servicer.report = lock_sockets(confinement, report)
    except ConfinementError as exc:
        sys.stderr.write(f"confinement failed: {exc}\n")
        return EXIT_CONFINEMENT_FAILED
    # The plugin is imported when the host's Initialize arrives: by then the host has moved this process into
    # its cgroups (a cgroup v1 move waits for an RCU grace period, ~7 ms, so the host does it while the worker
    # confines itself and starts its server), and the worker checks that before any plugin code runs.
    if not servicer.go.wait(READY_WAIT_S):
        sys.stderr.write(f"the host did not initialize the plugin within {READY_WAIT_S:g} s\n")
        return EXIT_BOOT_FAILED
    try:
        servicer.report = check_cgroups(confinement, servicer.report, cgroup_view)
    except ConfinementError as exc:
        sys.stderr.write(f"confinement failed: {exc}\n")
        return EXIT_CONFINEMENT_FAILED
    try:
        servicer.load_plugin(
            str(spec["plugin_dir"]),
            str(spec["entry"]),
            list(spec["capabilities"]),
            [str(rel) for rel in spec.get("python_path", ())],
        )
    except BaseException as exc:
        type_name, message = _error(exc)
        one_line = message.replace("\n", " ")  # the host shows the worker's last lines: keep the hint on this one
        sys.stderr.write(f"plugin load failed: {type_name}: {one_line}\n")
        sys.stderr.flush()
        return EXIT_PLUGIN_LOAD_FAILED
    servicer.ready.set()
    server.wait_for_termination()
    return 0
