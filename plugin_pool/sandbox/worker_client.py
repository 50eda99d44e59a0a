"""The host's view of one worker (host side): its process facts, its gRPC channel, its Calls stream.

``WorkerHandle`` is what the supervisor knows of one worker process (pid, how it ended, its uid and
cgroups) plus the fields the pool's routing sets on it. ``WorkerClient`` is the gRPC side: the lifecycle
RPCs (Initialize, Start, Stop, Shutdown) and one persistent bidirectional stream that carries every call
as a hand-framed ``Frame`` (``_codec``). A call costs a frame each way on a stream that already exists:
no new HTTP/2 stream, no headers, no server-side dispatch per call. The stream has no deadline of its
own; the pool enforces each call's deadline by killing the worker (see ``pool.DeadlineWatch``), so a
broken stream always means a lost worker.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from plugin_pool._proto.v1 import worker_pb2 as pb
from plugin_pool._proto.v1 import worker_pb2_grpc as pb_grpc
from plugin_pool.content import ContentHash, FolderLimits
from plugin_pool.errors import SandboxError
from plugin_pool.model import is_valid_capability_name
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox._worker import BOOT_EXIT_CODES, FRAME_SLACK
from plugin_pool.sandbox.cgroups import WorkerCgroup
from plugin_pool.sandbox.identities import WorkerIdentity

__all__ = [
    "EXIT_WAIT_S",
    "BootError",
    "StreamBroken",
    "WorkerClient",
    "WorkerHandle",
    "WorkerPlan",
    "boot_steps",
    "run_boot_step",
    "stop_all",
    "wait_for_socket",
]

SOCKET_POLL_S = 0.0005
EXIT_WAIT_S = 1.0
"""How long a failed call or boot step waits for the zygote's exit report (it comes within milliseconds)."""
_CALLS_METHOD = "/plugin_pool.v1.PluginWorkerFrames/Calls"


class BootError(SandboxError):
    """A worker could not boot: it exited, did not serve in time, or its plugin failed initialize/start.

    ``boot_failure`` is True when the worker exited with a boot exit code (confinement or plugin import
    failed), which will not get better by retrying. ``zygote_down`` is True when there was no zygote to
    fork it (or it died meanwhile): not the plugin's doing, and worth retrying once the zygote is back.
    """

    def __init__(
        self, message: str, *, plugin_id: str, pid: int | None, boot_failure: bool = False, zygote_down: bool = False
    ) -> None:
        super().__init__(message, plugin_id=plugin_id, pid=pid)
        self.boot_failure = boot_failure
        self.zygote_down = zygote_down


class StreamBroken(Exception):
    """The worker's Calls stream ended or was never opened: the worker is lost (the pool says how)."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a worker of one plugin boots with. Built once per plugin start."""

    plugin_id: str
    plugin_dir: Path
    entry: str
    capabilities: tuple[str, ...]
    config_json: bytes
    services: tuple[str, ...]
    initialize_timeout_s: float
    start_timeout_s: float
    memory_mb: int | None = None
    """This plugin's RLIMIT_DATA when lower than ``[sandbox] memory_mb`` (from its manifest's [resources])."""
    cpu_time_s: int | None = None
    """This plugin's RLIMIT_CPU when lower than ``[sandbox] cpu_time_s`` (from its manifest's [resources])."""
    content_hash: ContentHash | None = None
    """The hash registered at discovery: staging copies ``plugin_dir`` and hashes the same bytes in one pass,
    and refuses a copy that differs (None: nothing is compared, for folders the caller prepared itself)."""
    limits: FolderLimits | None = None
    """The ``[discovery]`` limits the folder is read under while staging (None: the defaults)."""
    python_path: tuple[str, ...] = ()
    """The manifest's ``[python] path``: folders of the plugin's copy put on the worker's import path."""


class WorkerClient:
    """The host's gRPC connection to one worker: lifecycle RPCs and the Calls stream.

    Not thread-safe for calls: the pool gives a worker to one caller at a time, which sends frames and
    reads the replies in order (several frames may be in flight: the worker answers them in order).
    ``cancel`` and ``close`` may be called from any thread and make a blocked ``receive`` raise at once;
    both are idempotent.
    """

    def __init__(self, socket_path: Path, max_message_bytes: int) -> None:
        self.channel = grpc.insecure_channel(
            f"unix:{socket_path}",
            options=[
                ("grpc.max_receive_message_length", max_message_bytes + FRAME_SLACK),
                ("grpc.max_send_message_length", max_message_bytes + FRAME_SLACK),
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 5),
                ("grpc.min_reconnect_backoff_ms", 5),
                ("grpc.max_reconnect_backoff_ms", 20),
            ],
        )
        self.stub = pb_grpc.PluginWorkerStub(self.channel)
        self._calls = self.channel.stream_stream(
            _CALLS_METHOD, request_serializer=codec.frame, response_deserializer=codec.unframe
        )
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._replies: Any = None

    # -- the Calls stream ----------------------------------------------------------------------------

    def open_stream(self) -> None:
        """Open the Calls stream (once the worker serves). Does not block; a second call is a no-op."""
        if self._replies is None:
            # grpc reads requests from this iterator on a thread of its own; None ends the stream.
            self._replies = self._calls(iter(self._requests.get, None))

    def send(self, data: bytes) -> None:
        """Queue one request frame on the stream. Never blocks."""
        self._requests.put(data)

    def receive(self) -> memoryview:
        """The next reply frame, in request order. Blocks until it arrives; raises grpc.RpcError or
        StreamBroken when the stream breaks (the worker died, was killed, or its channel was closed)."""
        replies = self._replies
        if replies is None:
            raise StreamBroken("the worker's call stream is not open")
        try:
            reply: memoryview = next(replies)
        except StopIteration:
            raise StreamBroken("the worker ended its call stream") from None
        return reply

    def cancel(self) -> None:
        """Break the stream now (a deadline passed): a blocked ``receive`` raises. Idempotent."""
        replies = self._replies
        if replies is not None:
            replies.cancel()

    def close(self) -> None:
        """End the stream and close the channel (every RPC in flight fails at once). Idempotent; never raises."""
        self._requests.put(None)
        try:
            self.channel.close()
        except Exception:  # closing an already broken channel must never raise into the pool
            pass

    # -- lifecycle RPCs --------------------------------------------------------------------------------

    def stop(self, timeout_s: float) -> pb.StepReply:
        """The plugin's stop() in this worker. Blocks up to ``timeout_s``; raises grpc.RpcError/ValueError."""
        reply: pb.StepReply = self.stub.Stop(pb.StepRequest(), timeout=timeout_s)
        return reply

    def stop_future(self, timeout_s: float) -> grpc.Future[pb.StepReply]:
        """Start stop() without waiting. Raises ValueError when the channel is closed."""
        return self.stub.Stop.future(pb.StepRequest(), timeout=timeout_s)

    def shutdown_future(self, timeout_s: float) -> grpc.Future[pb.ShutdownReply]:
        """Ask the worker to stop serving and exit, without waiting. Raises ValueError when closed."""
        return self.stub.Shutdown.future(pb.ShutdownRequest(), timeout=timeout_s)

    def code_capabilities(self, timeout_s: float) -> tuple[str, ...]:
        """The capabilities the plugin's code declares, from the worker's Health reply: data from an untrusted
        process, so only valid names, at most 256; empty when it cannot answer. Blocks up to ``timeout_s``."""
        try:
            reply = self.stub.Health(pb.HealthRequest(), timeout=timeout_s)
        except (grpc.RpcError, ValueError):  # ValueError: the channel was closed (the worker died)
            return ()
        return tuple(name for name in list(reply.capabilities)[:256] if is_valid_capability_name(name))


@dataclass(eq=False)
class WorkerHandle:
    """The host's view of one worker process. ``exited`` is an Event; other fields change under the pool's
    locks, or once from the zygote reader thread before ``exited`` is set."""

    plugin_id: str
    directory: Path
    socket_path: Path
    pid: int | None = None
    client: WorkerClient | None = None
    """The gRPC connection; None until connected and again once the worker is gone."""
    booted_at: float = 0.0
    calls: int = 0
    rss_baseline: int = 0
    retiring: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    exit_signal: int | None = None
    exit_tail: list[str] = field(default_factory=list)
    killed_for: str | None = None
    """Why the host killed it (``timeout``, ``memory``, ``recycle``, ``cpu``, ``stop``), ``zygote`` when it died
    with the zygote, or None for a crash."""
    recycle_for: str | None = None
    """Set (to ``memory``) when the worker should be replaced the next time it is idle."""
    callbacks: queue.Queue[pb.HostMessage | None] = field(default_factory=queue.Queue)
    service_calls: int = 0
    identity: WorkerIdentity | None = None
    """The uid of its own, held until it is reaped."""
    cgroup: WorkerCgroup | None = None
    oom_killed: bool = False
    """The kernel's OOM killer ended it (its memory cgroup was full): a ``memory`` restart."""
    busy: bool = False
    """A call is in flight (set by the pool)."""
    idle_since: float = 0.0
    """When its last call ended, or when it was booted (monotonic), for the idle CPU watch."""
    cpu_sample: tuple[float, float] | None = None
    """(monotonic time, CPU seconds used) at the last check."""
    exit_waiters: list[threading.Event] = field(default_factory=list)
    """Set, with ``exited``, when the worker is gone (lets a boot step wait for either its reply or the death)."""
    progress_fd: int | None = None
    """The host's descriptor of the worker's progress cell (see _codec); closed when the worker is gone."""
    progress_at_exit: int = 0
    """The progress cell as the worker left it: the 1-based call of a batch it died in, or 0."""
    deadline: float = 0.0
    """The monotonic deadline of the frames in flight on its stream (0: none); read by the deadline watch."""
    timed_out: bool = False
    """The deadline watch killed it: the frames in flight end as CallTimeoutError."""
    deadline_lock: threading.Lock = field(default_factory=threading.Lock)
    """Makes 'the reply came' and 'the deadline passed' exclusive: whichever takes it first decides."""

    def describe_exit(self) -> str:
        """How the process ended, for error messages. No side effects."""
        tail = " | ".join(line for line in self.exit_tail[-3:] if line.strip())
        if self.oom_killed:
            how = "killed by the kernel's OOM killer: its memory cgroup (sandbox.memory_mb) was full"
        elif self.exit_signal is not None:
            try:
                how = f"killed by {signal.Signals(self.exit_signal).name}"
            except ValueError:
                how = f"killed by signal {self.exit_signal}"
        elif self.exit_code is not None:
            how = f"exited with code {self.exit_code}"
        else:
            how = "is gone"
        return f"worker pid {self.pid} {how}" + (f": {tail}" if tail else "")


def _step_failed(handle: WorkerHandle, step: str, detail: str) -> BootError:
    """The error of a boot step that did not answer: ``detail`` says how (a boot failure when the worker
    exited with one of BOOT_EXIT_CODES)."""
    return BootError(
        f"plugin {handle.plugin_id!r}: {step} failed: {detail}",
        plugin_id=handle.plugin_id,
        pid=handle.pid,
        boot_failure=handle.exit_code in BOOT_EXIT_CODES,
    )


def run_boot_step(
    handle: WorkerHandle,
    step: str,
    timeout_s: float,
    call: Callable[[pb_grpc.PluginWorkerStub, float], Any],
) -> None:
    """Run one lifecycle RPC in a booting worker; a worker that dies meanwhile ends the wait at once. Blocks.

    ``call`` starts the RPC as a future (``stub.X.future(...)``). Without the race against the death, an
    RPC sent with wait_for_ready to a worker that already exited (its plugin failed to import) would
    wait for its whole deadline. Raises BootError naming the step and how it failed.
    """
    client = handle.client
    if client is None:
        raise _step_failed(handle, step, handle.describe_exit())
    done = threading.Event()
    handle.exit_waiters.append(done)
    try:
        future = call(client.stub, timeout_s)
        future.add_done_callback(lambda _: done.set())
        if handle.exited.is_set():
            done.set()
        done.wait(timeout_s + 1.0)
        if not future.done():
            future.cancel()
            detail = handle.describe_exit() if handle.exited.is_set() else f"{step} timed out after {timeout_s:g} s"
            raise _step_failed(handle, step, detail)
        reply = future.result()
    except (grpc.RpcError, ValueError) as exc:
        # ValueError: the worker died and its channel was closed before the call could start.
        code = exc.code() if isinstance(exc, grpc.RpcError) else None
        handle.exited.wait(EXIT_WAIT_S if code != grpc.StatusCode.DEADLINE_EXCEEDED else 0)
        if handle.exited.is_set():
            detail = handle.describe_exit()
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"{step} timed out after {timeout_s:g} s"
        elif isinstance(exc, grpc.RpcError):
            detail = f"{exc.code().name}: {exc.details()}"
        else:
            detail = str(exc)
        raise _step_failed(handle, step, detail) from None
    finally:
        handle.exit_waiters.remove(done)
    if reply.HasField("error"):
        err = reply.error
        raise BootError(
            f"plugin {handle.plugin_id!r}: {step} raised {err.type or err.kind}: {err.message}",
            plugin_id=handle.plugin_id,
            pid=handle.pid,
            boot_failure=True,
        )


def wait_for_socket(handle: WorkerHandle, deadline: float, boot_timeout_s: float) -> None:
    """Wait until a booting worker's socket file appears (it binds it while confined). Blocks; raises
    BootError when the worker exits first or ``deadline`` passes."""
    delay = SOCKET_POLL_S
    while not handle.socket_path.exists():
        if handle.exited.wait(delay):
            raise BootError(
                f"plugin {handle.plugin_id!r}: {handle.describe_exit()} before serving",
                plugin_id=handle.plugin_id,
                pid=handle.pid,
                boot_failure=handle.exit_code in BOOT_EXIT_CODES,
            )
        if time.monotonic() > deadline:
            raise BootError(
                f"plugin {handle.plugin_id!r}: worker pid {handle.pid} did not serve within "
                f"{boot_timeout_s:g} s (sandbox.boot_timeout_s)",
                plugin_id=handle.plugin_id,
                pid=handle.pid,
            )
        delay = min(delay * 1.5, 0.005)


def boot_steps(handle: WorkerHandle, plan: WorkerPlan) -> None:
    """Initialize and start the plugin in a connected worker, then open its call stream. Blocks up to the
    plan's timeouts; raises BootError."""
    run_boot_step(
        handle,
        "initialize",
        plan.initialize_timeout_s,
        lambda stub, t: stub.Initialize.future(
            pb.InitializeRequest(plugin_id=plan.plugin_id, config_json=plan.config_json, services=list(plan.services)),
            timeout=t,
            # The socket file appears at bind, a moment before the worker listens; without this a
            # connect in that moment is refused and the boot fails with UNAVAILABLE.
            wait_for_ready=True,
        ),
    )
    run_boot_step(handle, "start", plan.start_timeout_s, lambda stub, t: stub.Start.future(pb.StepRequest(), timeout=t))
    client = handle.client
    if client is None:  # it died right after start: the boot fails like any death
        raise BootError(
            f"plugin {plan.plugin_id!r}: {handle.describe_exit()} after start",
            plugin_id=plan.plugin_id,
            pid=handle.pid,
            boot_failure=handle.exit_code in BOOT_EXIT_CODES,
        )
    client.open_stream()


def stop_all(handles: list[WorkerHandle], timeout_s: float) -> list[str | None]:
    """Call the plugin's stop() in every worker at once (each has the full ``timeout_s``); return each one's
    error text, or None on success (or when it is gone). Blocks up to about ``timeout_s``."""
    futures: list[grpc.Future[pb.StepReply] | None] = []
    for handle in handles:
        client = handle.client
        try:
            futures.append(None if client is None or handle.exited.is_set() else client.stop_future(timeout_s))
        except ValueError:  # the channel was closed: the worker died or was killed
            futures.append(None)
    return [_stop_error(future, timeout_s) for future in futures]


def _stop_error(future: grpc.Future[pb.StepReply] | None, timeout_s: float) -> str | None:
    if future is None:
        return None
    try:
        reply = future.result(timeout_s + 1.0)
    except grpc.FutureCancelledError:
        return None
    except grpc.FutureTimeoutError:
        future.cancel()
        return f"stop timed out after {timeout_s:g} s"
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"stop timed out after {timeout_s:g} s"
        return f"stop failed: {exc.code().name}"
    if reply.HasField("error"):
        return f"stop raised {reply.error.type or reply.error.kind}: {reply.error.message}"
    return None
