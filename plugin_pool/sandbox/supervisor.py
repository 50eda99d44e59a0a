"""Keeping worker processes alive (host side): the zygote, booting workers, noticing deaths, killing.

The supervisor owns processes and nothing else; which worker takes a call is decided in ``pool.py``.
Its thread is a loop of named steps, like gunicorn's arbiter: ``start_zygote`` when there is none, run
the scheduled tasks (replacements after their backoff), and ``check_workers`` once a second. The zygote
is started from this long-lived thread on purpose: PR_SET_PDEATHSIG fires when the *thread* that forked
the child exits, so a zygote started from a short-lived thread would die with it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

import plugin_pool
from plugin_pool._proto.v1 import worker_pb2 as pb
from plugin_pool._proto.v1 import worker_pb2_grpc as pb_grpc
from plugin_pool.config import SandboxConfig
from plugin_pool.content import ContentHash, FolderLimits
from plugin_pool.errors import ConfinementUnavailableError, SandboxError
from plugin_pool.model import is_valid_capability_name
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox._codec import decode_value, encode_value
from plugin_pool.sandbox._confine import (
    ALL_LAYERS,
    LAYER_CGROUP,
    LAYER_MOUNTNS,
    LAYER_PIDNS,
    LAYER_UID,
    LAYER_USERNS,
    ConfinementSpec,
    LayerStatus,
    default_read_only_paths,
    probe_layers,
)
from plugin_pool.sandbox._frames import FrameReader, encode_frame, write_all
from plugin_pool.sandbox._worker import BOOT_EXIT_CODES
from plugin_pool.sandbox.cgroups import CgroupLimits, CgroupTree, WorkerCgroup
from plugin_pool.sandbox.identities import WorkerIdentities, WorkerIdentity
from plugin_pool.staging import BytecodeCache, remove_staged
from plugin_pool.staging import stage_plugin as stage_verified_copy

__all__ = ["BootError", "Supervisor", "WorkerHandle", "WorkerPlan"]

_log = logging.getLogger("plugin_pool.sandbox")

ZYGOTE_READY_TIMEOUT_S = 15.0
WORKER_TMP_DIR = "/tmp"
"""Where a worker with a private root finds its own tmpfs (TMPDIR)."""
DATA_CEILING_FACTOR = 8
"""RLIMIT_DATA as a multiple of sandbox.memory_mb when the memory cgroup enforces memory_mb itself."""
MAX_SOCKET_PATH = 107
"""sun_path holds 108 bytes with the terminating NUL."""
RUN_DIR = "/run/plugin-pool"
"""The runtime directory of a root host (sandbox.runtime_dir = 'auto'); shared by every host of the machine."""
SOCKET_POLL_S = 0.0005
EXIT_WAIT_S = 1.0
CHECK_INTERVAL_S = 1.0
LOG_RECORDS_PER_S = 200
"""Plugin log records the host accepts per worker per second; the rest are dropped and counted."""
MAX_SERVICE_CALLS_IN_FLIGHT = 16
"""Host service calls one worker may have waiting; more are refused at once."""

_ZYGOTE_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from plugin_pool.sandbox._zygote import main; raise SystemExit(main(sys.argv[1:]))"
)


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


@dataclass(eq=False)
class WorkerHandle:
    """The host's view of one worker process. Fields change under the pool's lock; ``exited`` is an Event."""

    plugin_id: str
    directory: Path
    socket_path: Path
    pid: int | None = None
    channel: grpc.Channel | None = None
    stub: pb_grpc.PluginWorkerStub | None = None
    call: Any = None
    """The Call method (bytes in, a view of the reply data out); None until connected."""
    call_batch: Any = None
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
    """When its last call ended (monotonic), for the idle CPU watch."""
    cpu_sample: tuple[float, float] | None = None
    """(monotonic time, CPU seconds used) at the last check."""
    exit_waiters: list[threading.Event] = field(default_factory=list)
    """Set, with ``exited``, when the worker is gone (lets a boot step wait for either its reply or the death)."""

    def describe_exit(self) -> str:
        """How the process ended, for error messages."""
        if self.oom_killed:
            how = "killed by the kernel's OOM killer: its memory cgroup (sandbox.memory_mb) was full"
            tail = " | ".join(line for line in self.exit_tail[-3:] if line.strip())
            return f"worker pid {self.pid} {how}" + (f": {tail}" if tail else "")
        if self.exit_signal is not None:
            try:
                how = f"killed by {signal.Signals(self.exit_signal).name}"
            except ValueError:
                how = f"killed by signal {self.exit_signal}"
        elif self.exit_code is not None:
            how = f"exited with code {self.exit_code}"
        else:
            how = "is gone"
        tail = " | ".join(line for line in self.exit_tail[-3:] if line.strip())
        return f"worker pid {self.pid} {how}" + (f": {tail}" if tail else "")


class _ZygoteProcess:
    """The host side of one zygote: start it, send requests, read its frames on a reader thread."""

    def __init__(
        self,
        directory: Path,
        on_frame: Callable[[dict[str, Any]], None],
        on_exit: Callable[[], None],
        *,
        pid_namespace: bool = False,
    ) -> None:
        self._directory = directory
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._pid_namespace = pid_namespace
        self._write_lock = threading.Lock()
        self.ready = threading.Event()
        """Set when the zygote said it is ready, or when it died first (then ``gone`` is set too)."""
        self.gone = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.in_pid_namespace = False

    def start(self) -> None:
        root = str(Path(plugin_pool.__file__).resolve().parent.parent)
        log_path = self._directory / "zygote.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        args = [sys.executable, "-I", "-c", _ZYGOTE_BOOT, root, str(os.getpid())]
        if self._pid_namespace:
            args.append("pidns")
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                close_fds=True,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "2", "LC_ALL": "C.UTF-8"},
            )
        finally:
            log.close()
        self.pid = self.proc.pid
        threading.Thread(target=self._read, name="plugin-pool-zygote-reader", daemon=True).start()
        # A zygote that dies while it starts wakes us at once (the reader sets ready when its pipe closes).
        if not self.ready.wait(ZYGOTE_READY_TIMEOUT_S) or self.gone.is_set():
            died = self.gone.is_set()
            self.stop()
            code = self.proc.returncode
            raise SandboxError(
                (
                    f"the sandbox zygote exited with code {code} while starting"
                    if died
                    else f"the sandbox zygote did not start within {ZYGOTE_READY_TIMEOUT_S:g} s"
                )
                + f": {_tail(log_path)}"
            )

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        reader = FrameReader(self.proc.stdout.fileno())
        try:
            while True:
                frames = reader.read_available()
                if frames is None:
                    break
                for frame in frames:
                    if frame.get("op") == "ready":
                        self.in_pid_namespace = bool(frame.get("pid_namespace"))
                        # In a PID namespace the zygote is the child of the process we started (which only
                        # waits for it): its own pid is the one that is the parent of every worker.
                        self.pid = int(frame.get("pid") or self.proc.pid)
                        self.ready.set()
                    else:
                        self._on_frame(frame)
        except (OSError, ValueError) as exc:
            _log.error("zygote protocol broken: %s", exc, extra={"event": "zygote_protocol_error"})
        finally:
            self.gone.set()
            self.ready.set()
            self.proc.wait()
            # The pipes would otherwise be left to the garbage collector (a ResourceWarning each).
            for pipe in (self.proc.stdout, self.proc.stdin):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            self._on_exit()

    def send(self, frame: dict[str, Any]) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise SandboxError("the sandbox zygote is not running")
        with self._write_lock:
            try:
                write_all(proc.stdin.fileno(), encode_frame(frame))
            except (BrokenPipeError, ValueError, OSError) as exc:
                raise SandboxError(f"the sandbox zygote is gone: {exc}") from exc

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            self.send({"op": "exit"})
        except SandboxError:
            pass
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(3.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3.0)


class Supervisor:
    """Boots, watches and kills sandbox workers through one zygote; restarts the zygote if it dies.

    Thread-safe. ``open`` and ``close`` are idempotent; ``close`` kills every worker and removes every
    directory it created. Callbacks run on internal threads and must not block for long.
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        on_worker_exit: Callable[[WorkerHandle], None],
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._on_worker_exit = on_worker_exit
        # The host's own dict, even while empty: services it registers later must be seen here too.
        self._services = services if services is not None else {}
        self._allowed_services: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._workers: dict[int, WorkerHandle] = {}
        self._pending: dict[int, tuple[Future[int], WorkerHandle]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[tuple[float, int, Callable[[], None]]] = []
        self._wake = threading.Condition(self._lock)
        self._zygote: _ZygoteProcess | None = None
        self._zygote_ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._service_pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._opened = False
        self.base_dir: Path | None = None
        self.runtime_dir: Path = runtime_dir_for(config)
        self.layers: dict[str, LayerStatus] = {}
        self.required_layers: frozenset[str] = frozenset()
        self.applied_layers: frozenset[str] = frozenset()
        self.identities: WorkerIdentities | None = None
        """Per-worker uids (a root host); None when workers keep the host's uid inside a user namespace."""
        self.cgroups: CgroupTree | None = None
        self.bytecode_cache: BytecodeCache | None = None
        """Where bytecode compiled for staged copies is kept by content hash (``[sandbox] bytecode_cache``)."""
        self.user_namespace = False
        self.zygote_restarts = 0
        self.on_idle_cpu: Callable[[WorkerHandle, float], None] | None = None
        """Called (on the supervisor thread) with a worker that burned more than ``idle_cpu_limit`` CPUs while
        no call was in flight, and the share it burned; the pool decides what to do with it."""

    # -- open / close ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Probe the confinement layers, create the private directory and start the zygote. Blocks."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox supervisor is already closed")
            if self._opened:
                return
            self._opened = True
        self.runtime_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        missing = [p for p in self.config.extra_read_paths if not os.path.exists(p)]
        if missing:
            raise SandboxError(
                f"sandbox.extra_read_paths names {missing[0]!r}, which does not exist; create it or remove it "
                f"from the list"
            )
        self._decide_confinement()
        self.bytecode_cache = _bytecode_cache_for(self.config, self.runtime_dir)
        remove_orphaned_dirs(self.runtime_dir)
        # The host's pid is in the name, so a later host can tell a dead host's leftovers from a live one's.
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"{BASE_DIR_PREFIX}{os.getpid()}-", dir=self.runtime_dir))
        # 0711: workers may traverse to their own directory but cannot list the others.
        os.chmod(self.base_dir, 0o711)
        longest = self.base_dir / f"w{10**9}" / "sock" / SOCKET_NAME
        if len(str(longest)) > MAX_SOCKET_PATH:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise SandboxError(
                f"worker socket paths under {self.runtime_dir} would exceed {MAX_SOCKET_PATH} bytes; set "
                "sandbox.runtime_dir to a shorter directory"
            )
        self._service_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plugin-pool-service")
        self._thread = threading.Thread(target=self._run, name="plugin-pool-supervisor", daemon=True)
        self._thread.start()
        if not self._zygote_ready.wait(ZYGOTE_READY_TIMEOUT_S + 1):
            raise SandboxError("the sandbox zygote did not start; see the log for the reason")

    def close(self) -> None:
        """Kill every worker and the zygote, remove the private directory. Idempotent; blocks up to ~3 s."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
            self._wake.notify_all()
        for handle in workers:
            handle.killed_for = handle.killed_for or "stop"
            self._close_channel(handle)
        zygote = self._zygote
        if zygote is not None:
            zygote.stop()  # the zygote kills and reaps its workers before it exits
        if self._thread is not None:
            self._thread.join(3.0)
        if self._service_pool is not None:
            self._service_pool.shutdown(wait=False, cancel_futures=True)
        for handle in workers:  # a worker whose exit report was lost with the zygote: its claims go now
            self._release_resources(handle)
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if self.cgroups is not None:
            self.cgroups.close()
        if self.identities is not None:
            self.identities.close()

    def _decide_confinement(self) -> None:
        """Probe the layers and choose how workers are confined; raise when the minimum cannot be met."""
        config = self.config
        root = os.geteuid() == 0
        # A root host gives every worker a uid of its own, also in user-namespace mode (dropped before the
        # namespace is made), so no worker ever keeps real root outside; an unprivileged host cannot.
        identities = WorkerIdentities(config.uid_range, self.runtime_dir / "uids") if root else None
        self.user_namespace = config.worker_user == "userns" or not root
        sample_uid = identities.first if identities is not None else None
        spec = ConfinementSpec(
            temp_dir=WORKER_TMP_DIR,
            read_only_paths=self._read_only_paths(None),
            uid=sample_uid,
            user_namespace=self.user_namespace,
            mount_namespace=True,
            root_dir=str(self.runtime_dir),
        )
        self.layers = probe_layers(spec)
        if sample_uid is not None and not self.layers[LAYER_MOUNTNS].available:
            # Without a private root the uid must reach the runtime through the host's own directories.
            self.layers[LAYER_UID] = probe_layers(dataclasses.replace(spec, mount_namespace=False))[LAYER_UID]
        available = {name for name, status in self.layers.items() if status.available}
        if identities is None:
            available.discard(LAYER_UID)
        if not self.user_namespace:
            available.discard(LAYER_USERNS)
        wanted = config.required_layers.strip().lower()
        if wanted == "available":
            required = set(available)
        elif wanted == "none":
            required = set()
        else:
            required = {name.strip() for name in wanted.split(",") if name.strip()}
            unknown = required - set(ALL_LAYERS)
            if unknown:
                raise ConfinementUnavailableError(
                    f"sandbox.required_layers names unknown layers {sorted(unknown)}; known: {', '.join(ALL_LAYERS)}"
                )
        if identities is not None and LAYER_UID not in available and wanted == "available":
            raise ConfinementUnavailableError(
                f"workers cannot run as uids of their own: {self.layers[LAYER_UID].reason}. Make the Python "
                "runtime readable by other users, or name sandbox.required_layers without 'uid' to accept "
                "workers that keep the host's uid"
            )
        missing = sorted(required - available)
        if missing:
            why = "; ".join(f"{m}: {self.layers[m].reason}" for m in missing)
            raise ConfinementUnavailableError(
                f"the sandbox cannot confine workers as required: {why}. Lower sandbox.required_layers "
                f"only if you accept weaker isolation"
            )
        if LAYER_UID in available and identities is not None:
            identities.open()
            self.identities = identities
        if LAYER_CGROUP in available:
            tree = CgroupTree()
            try:
                tree.open()
                self.cgroups = tree
            except OSError as exc:
                if LAYER_CGROUP in required:
                    raise ConfinementUnavailableError(f"the sandbox cannot create worker cgroups: {exc}") from exc
                available.discard(LAYER_CGROUP)
        self.applied_layers = frozenset(available)
        self.required_layers = frozenset(required)

    @property
    def pid_namespace(self) -> bool:
        """Whether the zygote and its workers run in a PID namespace of their own. No side effects."""
        return LAYER_PIDNS in self.applied_layers

    @property
    def mount_namespace(self) -> bool:
        """Whether each worker gets a private root (mount namespace, tmpfs /tmp, own /proc). No side effects."""
        return LAYER_MOUNTNS in self.applied_layers

    def _read_only_paths(self, plugin_dir: Path | None) -> tuple[str, ...]:
        package_dir = str(Path(plugin_pool.__file__).resolve().parent)
        extra = [package_dir] + ([str(plugin_dir)] if plugin_dir is not None else [])
        return default_read_only_paths(*extra, *self.config.extra_read_paths)

    # -- the supervisor loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_check = time.monotonic() + CHECK_INTERVAL_S
        while True:
            with self._lock:
                if self._closed:
                    return
                needs_zygote = self._zygote is None
            if needs_zygote:
                self.start_zygote()
            self.run_due_tasks()
            if time.monotonic() >= next_check:
                self.check_workers()
                next_check = time.monotonic() + CHECK_INTERVAL_S
            with self._lock:
                if self.is_closed:
                    return
                wait = next_check - time.monotonic()
                if self._tasks:
                    wait = min(wait, self._tasks[0][0] - time.monotonic())
                if wait > 0 and self._zygote is not None:
                    self._wake.wait(wait)

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the running zygote (the parent of every worker), or None while there is none."""
        zygote = self._zygote
        return zygote.pid if zygote is not None else None

    @property
    def is_closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def start_zygote(self) -> None:
        """Start a zygote (on the supervisor thread). On failure, retry after a second."""
        assert self.base_dir is not None
        zygote = _ZygoteProcess(self.base_dir, self._on_frame, self._on_zygote_exit, pid_namespace=self.pid_namespace)
        try:
            zygote.start()
        except (OSError, SandboxError) as exc:
            _log.error("cannot start the sandbox zygote: %s", exc, extra={"event": "zygote_failed"})
            time.sleep(1.0)
            return
        with self._lock:
            self._zygote = zygote
        self._zygote_ready.set()
        _log.info("zygote started", extra={"event": "zygote_started", "pid": zygote.pid})

    def run_due_tasks(self) -> None:
        """Run every scheduled task whose time has come, while there is a zygote (without one, the loop
        starts it first: only this thread does, so a task waiting for it here would wait in vain)."""
        while True:
            with self._lock:
                if self._zygote is None or not self._tasks or self._tasks[0][0] > time.monotonic():
                    return
                _, _, task = heapq.heappop(self._tasks)
            try:
                task()
            except Exception:
                _log.exception("sandbox task failed", extra={"event": "sandbox_task_failed"})

    def check_workers(self) -> None:
        """Once a second: mark workers whose resident memory grew past the limit for recycling, and report
        workers that burned CPU while no call was in flight (``on_idle_cpu``).

        The pool retires a marked worker when it is next idle, so no call in flight is lost.
        """
        with self._lock:
            workers = [h for h in self._workers.values() if not h.exited.is_set()]
        limit_bytes = self.config.recycle_memory_growth_mb * 1024 * 1024
        for handle in workers:
            rss = _rss_of(handle.pid)
            if rss and handle.rss_baseline and rss - handle.rss_baseline > limit_bytes:
                handle.recycle_for = handle.recycle_for or "memory"
            self._check_idle_cpu(handle)

    def _check_idle_cpu(self, handle: WorkerHandle) -> None:
        limit = self.config.idle_cpu_limit
        if limit <= 0 or not handle.booted_at:
            return
        now = time.monotonic()
        used = handle.cgroup.get_cpu_seconds() if handle.cgroup is not None else None
        if used is None:
            used = _cpu_seconds_of(handle.pid)
        previous, handle.cpu_sample = handle.cpu_sample, (now, used)
        # Judge only a window in which the worker was idle from start to end (no call began or ended in it).
        if previous is None or handle.busy or handle.idle_since > previous[0] or now - previous[0] < 0.5:
            return
        share = (used - previous[1]) / (now - previous[0])
        if share > limit and self.on_idle_cpu is not None:
            self.on_idle_cpu(handle, share)

    def schedule(self, delay_s: float, task: Callable[[], None]) -> None:
        """Run ``task`` on the supervisor thread after ``delay_s`` seconds."""
        with self._lock:
            heapq.heappush(self._tasks, (time.monotonic() + delay_s, next(self._ids), task))
            self._wake.notify_all()

    # -- zygote frames -----------------------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "spawned" or op == "spawn_failed":
            with self._lock:
                pending = self._pending.pop(int(frame["id"]), None)
                if pending is not None and op == "spawned":
                    pending[1].pid = int(frame["pid"])
                    self._workers[int(frame["pid"])] = pending[1]
            if pending is not None:
                if op == "spawned":
                    pending[0].set_result(int(frame["pid"]))
                else:
                    pending[0].set_exception(SandboxError(f"fork failed in the zygote: {frame.get('error')}"))
        elif op == "exited":
            with self._lock:
                handle = self._workers.pop(int(frame["pid"]), None)
            if handle is not None:
                handle.exit_code = frame.get("code")
                handle.exit_signal = frame.get("signal")
                handle.exit_tail = [str(line) for line in frame.get("tail", [])]
                self._worker_gone(handle)
        elif op == "output":
            with self._lock:
                handle = self._workers.get(int(frame["pid"]))
            plugin_id = handle.plugin_id if handle else "?"
            for line in frame.get("lines", []):
                _log.info(
                    "%s",
                    line,
                    extra={
                        "event": "worker_output",
                        "pluginId": plugin_id,
                        "trustLevel": "untrusted",
                        "pid": frame["pid"],
                    },
                )

    def _on_zygote_exit(self) -> None:
        with self._lock:
            self._zygote = None
            self._zygote_ready.clear()
            orphans = list(self._workers.values())
            self._workers.clear()
            pending = list(self._pending.values())
            self._pending.clear()
            closed = self._closed
            if not closed:
                self.zygote_restarts += 1
            self._wake.notify_all()
        for future, _ in pending:
            future.set_exception(SandboxError("the sandbox zygote died while forking"))
        for handle in orphans:
            # PDEATHSIG killed them with the zygote; make sure, then report them.
            if handle.pid is not None:
                try:
                    os.kill(handle.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            handle.exit_signal = handle.exit_signal or int(signal.SIGKILL)
            handle.exit_tail = handle.exit_tail or ["the zygote died"]
            # Not the plugin's doing: the pool replaces these without counting them toward its crash limit.
            handle.killed_for = handle.killed_for or "zygote"
            self._worker_gone(handle)
        if not closed:
            _log.error("the sandbox zygote died; restarting it", extra={"event": "zygote_died"})

    def _worker_gone(self, handle: WorkerHandle) -> None:
        # Read before anything else moves: whoever wakes on ``exited`` must find how the worker died.
        if handle.cgroup is not None and handle.killed_for is None and handle.cgroup.get_oom_kills() > 0:
            handle.oom_killed = True
        handle.exited.set()
        for waiter in handle.exit_waiters:
            waiter.set()
        handle.callbacks.put(None)
        self._close_channel(handle)
        if self.base_dir is not None:
            shutil.rmtree(handle.directory, ignore_errors=True)
        self._release_resources(handle)
        self._on_worker_exit(handle)

    # -- workers -----------------------------------------------------------------------------------

    def spawn_worker(self, plan: WorkerPlan) -> WorkerHandle:
        """Fork a worker for ``plan`` and boot it: serve, initialize, start. Blocks (about 20 ms).

        Raises BootError if the worker exits, does not serve within ``boot_timeout_s``, or its plugin's
        initialize or start fails; the process is killed in that case. Without a zygote it waits for one
        (up to ``boot_timeout_s``), except on the supervisor thread, which is the one that starts it: there
        it raises BootError with ``zygote_down`` at once.
        """
        on_supervisor = threading.current_thread() is self._thread
        if (on_supervisor and not self._zygote_ready.is_set()) or not self._zygote_ready.wait(
            self.config.boot_timeout_s
        ):
            raise BootError("the sandbox zygote is not running", plugin_id=plan.plugin_id, pid=None, zygote_down=True)
        assert self.base_dir is not None
        number = next(self._ids)
        # Named by number only: the socket path must not grow with the plugin id (sun_path is 108 bytes).
        directory = self.base_dir / f"w{number}"
        handle = WorkerHandle(
            plugin_id=plan.plugin_id, directory=directory, socket_path=directory / "sock" / SOCKET_NAME
        )
        self._claim_resources(plan, handle)
        try:
            self._make_worker_dirs(handle)
        except OSError:
            self._release_resources(handle)
            raise
        spec = self._worker_spec(plan, handle)
        future: Future[int] = Future()
        with self._lock:
            if self._closed:
                raise BootError("the sandbox is closed", plugin_id=plan.plugin_id, pid=None)
            zygote = self._zygote
            self._pending[number] = (future, handle)
        if zygote is None:
            raise BootError("the sandbox zygote is not running", plugin_id=plan.plugin_id, pid=None, zygote_down=True)
        deadline = time.monotonic() + self.config.boot_timeout_s
        try:
            zygote.send({"op": "spawn", "id": number, "spec": spec})
            pid = future.result(self.config.boot_timeout_s)
            if handle.cgroup is not None:
                # Here, while the worker confines itself: a cgroup v1 move waits several ms for an RCU grace
                # period. The worker imports the plugin only after Initialize, and checks it was moved.
                try:
                    handle.cgroup.add(pid)
                except OSError as exc:
                    raise BootError(
                        f"plugin {plan.plugin_id!r}: cannot move worker pid {pid} into its cgroups: {exc}",
                        plugin_id=plan.plugin_id,
                        pid=pid,
                    ) from exc
            self._wait_for_socket(handle, deadline)
            self._connect(handle)
            self._boot_step(
                handle,
                "initialize",
                plan.initialize_timeout_s,
                lambda stub, t: stub.Initialize.future(
                    pb.InitializeRequest(
                        plugin_id=plan.plugin_id, config_json=plan.config_json, services=list(plan.services)
                    ),
                    timeout=t,
                    # The socket file appears at bind, a moment before the worker listens; without this a
                    # connect in that moment is refused and the boot fails with UNAVAILABLE.
                    wait_for_ready=True,
                ),
            )
            self._boot_step(
                handle, "start", plan.start_timeout_s, lambda stub, t: stub.Start.future(pb.StepRequest(), timeout=t)
            )
        except BaseException as exc:
            with self._lock:
                self._pending.pop(number, None)
                zygote_died = self._zygote is not zygote
            self.kill_worker(handle, "boot")
            if handle.pid is None:  # never forked: no exit report will come to release its uid and cgroups
                self._release_resources(handle)
                shutil.rmtree(handle.directory, ignore_errors=True)
            if zygote_died and isinstance(exc, Exception) and not getattr(exc, "boot_failure", False):
                raise BootError(
                    f"plugin {plan.plugin_id!r}: the sandbox zygote died while this worker booted",
                    plugin_id=plan.plugin_id,
                    pid=handle.pid,
                    zygote_down=True,
                ) from exc
            if isinstance(exc, BootError):
                raise
            if isinstance(exc, FutureTimeout):
                raise BootError(
                    f"plugin {plan.plugin_id!r}: the zygote did not fork a worker in time",
                    plugin_id=plan.plugin_id,
                    pid=None,
                ) from None
            if isinstance(exc, SandboxError):
                raise BootError(str(exc), plugin_id=plan.plugin_id, pid=handle.pid) from exc
            raise
        handle.booted_at = time.monotonic()
        handle.rss_baseline = _rss_of(handle.pid)
        return handle

    def stage_plugin(self, plan: WorkerPlan) -> Path:
        """Make the verified private copy of ``plan.plugin_dir`` its workers load; return the copy. Blocks.

        :func:`plugin_pool.staging.stage_plugin`: the folder is copied and hashed in one pass (every file
        opened ``O_NOFOLLOW|O_NONBLOCK``; symlinks, fifos, sockets, devices and bytecode refused; the
        ``plan.limits`` enforced), compared with ``plan.content_hash``, then its bytecode is compiled by the
        host in an isolated child (or restored from the bytecode cache when it holds the copy's digest).
        Directories 0755 and files 0644, owned by the host: the worker uid reads them and cannot change them.
        Raises ContentHashMismatchError, IntegrityRejectedError (both naming the plugin's folder, never the
        copy) or StagingError; nothing is left behind then.
        """
        assert self.base_dir is not None
        staged = self.base_dir / "plugins"
        staged.mkdir(mode=0o711, exist_ok=True)
        copy = stage_verified_copy(
            plan.plugin_dir,
            staged / f"p{next(self._ids)}",
            plugin_id=plan.plugin_id,
            expected=plan.content_hash,
            limits=plan.limits,
            precompile=True,
            bytecode_cache=self.bytecode_cache,
        )
        return copy.path

    def is_staged(self, path: Path) -> bool:
        """Whether ``path`` is a copy made by stage_plugin. No side effects."""
        return self.base_dir is not None and path.parent == self.base_dir / "plugins"

    def unstage_plugin(self, staged: Path) -> None:
        """Remove a copy made by stage_plugin (a no-op for any other path). Idempotent."""
        if self.is_staged(staged):
            remove_staged(staged)

    def read_code_capabilities(self, handle: WorkerHandle, timeout_s: float = 2.0) -> tuple[str, ...]:
        """The capabilities the plugin's code declares, as the worker reports them (its Health reply): data
        from an untrusted process, so only valid names, at most 256; empty when it cannot answer. Blocks up
        to ``timeout_s``."""
        stub = handle.stub
        if stub is None or handle.exited.is_set():
            return ()
        try:
            reply = stub.Health(pb.HealthRequest(), timeout=timeout_s)
        except (grpc.RpcError, ValueError):  # ValueError: the channel was closed (the worker died)
            return ()
        return tuple(name for name in list(reply.capabilities)[:256] if is_valid_capability_name(name))

    def _make_worker_dirs(self, handle: WorkerHandle) -> None:
        directory = handle.directory
        directory.mkdir(mode=0o711)
        # root: the empty mount point of the worker's private root (the mount exists only in its namespace);
        # tmp: its temp dir when there is no private root (then it has no size limit).
        subdirs = ("sock", "root") if self.mount_namespace else ("sock", "tmp")
        uid = handle.identity.uid if handle.identity is not None else None
        for sub in subdirs:
            path = directory / sub
            path.mkdir(mode=0o700)
            if uid is not None and sub != "root":
                os.chown(path, uid, uid)

    def _claim_resources(self, plan: WorkerPlan, handle: WorkerHandle) -> None:
        """A uid and cgroups of its own for a worker about to be spawned (released by _release_resources)."""
        config = self.config
        if self.identities is not None:
            handle.identity = self.identities.claim()
        if self.cgroups is not None:
            limits = CgroupLimits(
                memory_mb=min(plan.memory_mb or config.memory_mb, config.memory_mb),
                max_threads=config.max_threads,
                cpu_quota=config.cpu_quota,
            )
            try:
                handle.cgroup = self.cgroups.create_worker(handle.directory.name, limits)
            except OSError as exc:
                self._release_resources(handle)
                raise BootError(
                    f"plugin {plan.plugin_id!r}: cannot create the worker's cgroup: {exc}",
                    plugin_id=plan.plugin_id,
                    pid=None,
                ) from exc

    def _release_resources(self, handle: WorkerHandle) -> None:
        """Give back a gone worker's uid and remove its cgroups. Idempotent."""
        identity, handle.identity = handle.identity, None
        cgroup, handle.cgroup = handle.cgroup, None
        if cgroup is not None:
            cgroup.remove()
        if identity is not None and self.identities is not None:
            self.identities.release(identity)

    def _worker_spec(self, plan: WorkerPlan, handle: WorkerHandle) -> dict[str, Any]:
        config = self.config
        layers = self.applied_layers
        identity = handle.identity
        memory_mb = min(plan.memory_mb or config.memory_mb, config.memory_mb)
        confinement = ConfinementSpec(
            temp_dir=WORKER_TMP_DIR if self.mount_namespace else str(handle.directory / "tmp"),
            read_only_paths=self._read_only_paths(plan.plugin_dir),
            socket_dir=str(handle.socket_path.parent),
            cpu_time_s=min(plan.cpu_time_s or config.cpu_time_s, config.cpu_time_s),
            # The memory cgroup holds the worker to memory_mb, counting what it touches; RLIMIT_DATA then only
            # stops absurd reservations (orjson reserves several times a big string's size before writing it).
            memory_mb=memory_mb * DATA_CEILING_FACTOR if handle.cgroup is not None else memory_mb,
            open_files=config.open_files,
            # With a uid of its own, RLIMIT_NPROC counts this worker's threads alone.
            processes=config.max_threads if identity is not None else None,
            file_size_mb=config.file_size_mb,
            uid=identity.uid if identity is not None else None,
            unshare_net=True,
            user_namespace=self.user_namespace,
            layers=frozenset(layers),
            required_layers=frozenset(self.required_layers),
            cgroup_dirs=handle.cgroup.group_dirs if handle.cgroup is not None else (),
            pid_namespace=self.pid_namespace,
            mount_namespace=self.mount_namespace,
            root_dir=str(handle.directory / "root") if self.mount_namespace else None,
            tmp_size_mb=config.tmp_size_mb,
            tmp_max_files=config.tmp_max_files,
        )
        return {
            "plugin_id": plan.plugin_id,
            "plugin_dir": str(plan.plugin_dir),
            "python_path": list(plan.python_path),
            "entry": plan.entry,
            "capabilities": list(plan.capabilities),
            "socket_path": str(handle.socket_path),
            "confinement": confinement.to_dict(),
            "threads": config.worker_threads,
            "max_message_bytes": int(config.max_message_mb * 1024 * 1024),
        }

    def _wait_for_socket(self, handle: WorkerHandle, deadline: float) -> None:
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
                    f"{self.config.boot_timeout_s:g} s (sandbox.boot_timeout_s)",
                    plugin_id=handle.plugin_id,
                    pid=handle.pid,
                )
            delay = min(delay * 1.5, 0.005)

    def _connect(self, handle: WorkerHandle) -> None:
        limit = int(self.config.max_message_mb * 1024 * 1024)
        # Built on a local name and published last: the worker may die meanwhile, and its exit report closes
        # (and clears) handle.channel from the zygote reader thread.
        channel = grpc.insecure_channel(
            f"unix:{handle.socket_path}",
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 5),
                ("grpc.min_reconnect_backoff_ms", 5),
                ("grpc.max_reconnect_backoff_ms", 20),
            ],
        )
        handle.stub = pb_grpc.PluginWorkerStub(channel)
        # Calls: the PluginWorkerFrames methods with their one-field Frame written by hand (see _codec).
        handle.call = channel.unary_unary(
            "/plugin_pool.v1.PluginWorkerFrames/Call",
            request_serializer=codec.frame,
            response_deserializer=codec.unframe,
        )
        handle.call_batch = channel.unary_unary(
            "/plugin_pool.v1.PluginWorkerFrames/CallBatch",
            request_serializer=codec.frame,
            response_deserializer=codec.unframe,
        )
        handle.channel = channel
        if handle.exited.is_set():  # it died while we connected: nobody else will close this channel
            self._close_channel(handle)
        threading.Thread(
            target=self._serve_callbacks, args=(handle,), name=f"plugin-pool-cb-{handle.pid}", daemon=True
        ).start()

    def _boot_step(
        self,
        handle: WorkerHandle,
        step: str,
        timeout_s: float,
        call: Callable[[pb_grpc.PluginWorkerStub, float], Any],
    ) -> None:
        """Run one lifecycle RPC in a booting worker; a worker that dies meanwhile ends the wait at once.

        ``call`` starts the RPC as a future (``stub.X.future(...)``). Without the race against the death, an
        RPC sent with wait_for_ready to a worker that already exited (its plugin failed to import) would
        wait for its whole deadline.
        """
        assert handle.stub is not None
        done = threading.Event()
        handle.exit_waiters.append(done)
        try:
            future = call(handle.stub, timeout_s)
            future.add_done_callback(lambda _: done.set())
            if handle.exited.is_set():
                done.set()
            done.wait(timeout_s + 1.0)
            if not future.done():
                future.cancel()
                detail = handle.describe_exit() if handle.exited.is_set() else f"{step} timed out after {timeout_s:g} s"
                raise BootError(
                    f"plugin {handle.plugin_id!r}: {step} failed: {detail}",
                    plugin_id=handle.plugin_id,
                    pid=handle.pid,
                    boot_failure=handle.exit_code in BOOT_EXIT_CODES,
                )
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
            raise BootError(
                f"plugin {handle.plugin_id!r}: {step} failed: {detail}",
                plugin_id=handle.plugin_id,
                pid=handle.pid,
                boot_failure=handle.exit_code in BOOT_EXIT_CODES,
            ) from None
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

    def kill_worker(self, handle: WorkerHandle, reason: str) -> None:
        """SIGKILL the worker through the zygote (race-free: the zygote only signals its live children)."""
        handle.killed_for = handle.killed_for or reason
        handle.retiring = True
        zygote = self._zygote
        if handle.pid is not None and zygote is not None and not handle.exited.is_set():
            try:
                zygote.send({"op": "kill", "pid": handle.pid, "signal": int(signal.SIGKILL)})
            except SandboxError:
                pass
        self._close_channel(handle)

    def retire_worker(self, handle: WorkerHandle, reason: str, *, call_stop: bool = True) -> None:
        """Stop a worker gracefully (the plugin's stop() unless ``call_stop`` is False, then shutdown),
        killing it if it does not exit within a second. Blocks up to about 2.5 s."""
        handle.killed_for = handle.killed_for or reason
        handle.retiring = True
        stub = handle.stub
        if stub is not None and not handle.exited.is_set():
            try:
                if call_stop:
                    stub.Stop(pb.StepRequest(), timeout=1.0)
                stub.Shutdown(pb.ShutdownRequest(), timeout=0.5)
            except (grpc.RpcError, ValueError):  # ValueError: the channel was closed (the worker died)
                pass
            if handle.exited.wait(1.0):
                return
        self.kill_worker(handle, reason)

    def stop_step(self, handle: WorkerHandle, timeout_s: float) -> str | None:
        """Call the plugin's stop() in one worker; return an error text, or None on success."""
        stub = handle.stub
        if stub is None or handle.exited.is_set():
            return None
        try:
            reply = stub.Stop(pb.StepRequest(), timeout=timeout_s)
        except ValueError:  # the channel was closed: the worker died or was killed
            return None
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"stop timed out after {timeout_s:g} s"
            return f"stop failed: {exc.code().name}"
        if reply.HasField("error"):
            return f"stop raised {reply.error.type or reply.error.kind}: {reply.error.message}"
        return None

    def _close_channel(self, handle: WorkerHandle) -> None:
        channel = handle.channel
        if channel is not None:
            handle.channel = None
            handle.callbacks.put(None)
            try:
                channel.close()
            except Exception:  # closing an already broken channel must never raise into the pool
                pass

    # -- plugin-to-host callbacks ------------------------------------------------------------------

    def _serve_callbacks(self, handle: WorkerHandle) -> None:
        stub = handle.stub
        if stub is None:
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
            for message in stub.Callbacks(outgoing(), wait_for_ready=True):
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
                    record = message.log
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
                elif kind == "service_request" and self._service_pool is not None:
                    if handle.service_calls >= MAX_SERVICE_CALLS_IN_FLIGHT:
                        reply = pb.ServiceReply(id=message.service_request.id)
                        reply.error.CopyFrom(
                            pb.RemoteError(
                                kind="service_error",
                                type="RuntimeError",
                                message=f"more than {MAX_SERVICE_CALLS_IN_FLIGHT} host service calls in flight",
                            )
                        )
                        handle.callbacks.put(pb.HostMessage(service_reply=reply))
                        continue
                    handle.service_calls += 1
                    self._service_pool.submit(self._answer_service, handle, message.service_request)
        except (grpc.RpcError, ValueError):  # ValueError: the worker died and its channel closed first
            pass
        except Exception:
            _log.exception("callbacks stream of worker %s failed", handle.pid, extra={"event": "callbacks_failed"})

    def _answer_service(self, handle: WorkerHandle, request: pb.ServiceRequest) -> None:
        allowed = self._allowed_services.get(handle.plugin_id, ())
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

    def allow_services(self, plugin_id: str, services: tuple[str, ...]) -> None:
        """Record which host services ``plugin_id``'s workers may call."""
        self._allowed_services = {**self._allowed_services, plugin_id: services}

    def get_worker_count(self) -> int:
        """Live workers of every plugin."""
        with self._lock:
            return len(self._workers)


BASE_DIR_PREFIX = "plugin-pool-"
SOCKET_NAME = "s"


def _bytecode_cache_for(config: SandboxConfig, runtime_dir: Path) -> BytecodeCache | None:
    """The bytecode cache ``[sandbox] bytecode_cache`` names (None for 'off'), opened (checked)."""
    where = config.bytecode_cache
    if where == "off":
        return None
    cache = BytecodeCache(runtime_dir / f"bytecode-{os.geteuid()}" if where == "auto" else Path(where))
    cache.open()
    return cache


def runtime_dir_for(config: SandboxConfig) -> Path:
    """The directory a pool keeps its private directory and uid locks in (``sandbox.runtime_dir``).

    'auto' is /run/plugin-pool for a root host (short, root-only, shared by every host of the machine so
    their uid claims meet), else /tmp, else the system temp dir. No side effects.
    """
    if config.runtime_dir != "auto":
        return Path(config.runtime_dir)
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return Path(RUN_DIR)
    if os.access("/tmp", os.W_OK | os.X_OK):
        return Path("/tmp")
    return Path(tempfile.gettempdir())


def remove_orphaned_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the private directories of hosts that died without closing (SIGKILL leaves them behind).

    Only directories named by this module, owned by this uid, whose host pid no longer runs. A pid that
    was reused by another process keeps its directory (the safe side). Returns what was removed.
    """
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{BASE_DIR_PREFIX}*-*"):
        pid_text = path.name[len(BASE_DIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if path.lstat().st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed


def _tail(path: Path, limit: int = 600) -> str:
    """The end of a log file, for error messages ('(empty log)' if there is nothing)."""
    try:
        text = path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return text.replace("\n", " | ") if text else f"(nothing in {path})"


def _cpu_seconds_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return 0.0
    return float(times.user + times.system)


def _rss_of(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return 0
