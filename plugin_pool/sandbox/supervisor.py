"""Keeping worker processes alive (host side): the zygote, booting workers, noticing deaths, killing.

The supervisor owns processes and nothing else: which worker takes a call is decided in ``pool.py``,
how many workers each plugin keeps in ``workers.py``. Its thread is a loop of named steps, like
gunicorn's arbiter: ``start_zygote`` when there is none, then ``run_due_tasks`` (the jobs that block:
booting workers). Timed actions (deadlines, backoffs, retirement timeouts, ``check_workers`` once a
second) run on the one scheduler (``_sched``), which never blocks. The zygote is started from the
supervisor's long-lived thread on purpose: PR_SET_PDEATHSIG fires when the *thread* that forked the
child exits, so a zygote started from a short-lived thread would die with it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import grpc
import psutil

from plugin_pool._proto.v1 import worker_pb2 as pb
from plugin_pool.config import SandboxConfig
from plugin_pool.errors import SandboxError
from plugin_pool.sandbox._codec import PROGRESS, PROGRESS_BYTES
from plugin_pool.sandbox._confine import LAYER_MOUNTNS, LAYER_PIDNS, LayerStatus
from plugin_pool.sandbox._sched import Scheduler, Task
from plugin_pool.sandbox._worker import BOOT_EXIT_CODES
from plugin_pool.sandbox.cgroups import CgroupLimits, CgroupTree
from plugin_pool.sandbox.confinement import PROGRESS_NAME, choose_confinement, worker_spec
from plugin_pool.sandbox.host_services import HostServices
from plugin_pool.sandbox.identities import WorkerIdentities
from plugin_pool.sandbox.worker_client import (
    BootError,
    WorkerClient,
    WorkerHandle,
    WorkerPlan,
    run_boot_step,
)
from plugin_pool.sandbox.zygote_client import (
    ZYGOTE_READY_TIMEOUT_S,
    WorkerExited,
    WorkerOutput,
    WorkerSpawned,
    ZygoteFrame,
    ZygoteProcess,
)

__all__ = ["BootError", "Supervisor", "WorkerHandle", "WorkerPlan", "remove_orphaned_dirs", "runtime_dir_for"]

_log = logging.getLogger("plugin_pool.sandbox")

MAX_SOCKET_PATH = 107
"""sun_path holds 108 bytes with the terminating NUL."""
RUN_DIR = "/run/plugin-pool"
"""The runtime directory of a root host (sandbox.runtime_dir = 'auto'); shared by every host of the machine."""
SOCKET_POLL_S = 0.0005
CHECK_INTERVAL_S = 1.0
RETIRE_STOP_S = 1.0
"""How long a retiring worker's stop() may take before it is shut down anyway."""
RETIRE_EXIT_S = 1.0
"""How long a retiring worker may take to exit after Shutdown before it is killed."""
BASE_DIR_PREFIX = "plugin-pool-"
SOCKET_NAME = "s"


class Supervisor:
    """Boots, watches and kills sandbox workers through one zygote; restarts the zygote if it dies.

    Thread-safe. ``open`` and ``close`` are idempotent; ``close`` kills every worker and removes every
    directory it created. ``on_worker_exit(handle)`` runs on the zygote reader thread once per worker that
    was spawned, when it is gone; ``on_idle_cpu(handle, share)`` on the scheduler thread. Callbacks must
    not block for long.
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        on_worker_exit: Callable[[WorkerHandle], None] | None = None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.on_worker_exit: Callable[[WorkerHandle], None] = on_worker_exit or (lambda handle: None)
        self.on_idle_cpu: Callable[[WorkerHandle, float], None] | None = None
        """Called (on the scheduler thread) with a worker that burned more than ``idle_cpu_limit`` CPUs while
        no call was in flight, and the share it burned; the pool decides what to do with it."""
        self.services = HostServices(services)
        self.scheduler = Scheduler()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._workers: dict[int, WorkerHandle] = {}
        self._pending: dict[int, tuple[Future[int], WorkerHandle]] = {}
        self._ids = itertools.count(1)
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._zygote: ZygoteProcess | None = None
        self._zygote_ready = threading.Event()
        self._thread: threading.Thread | None = None
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
        self.user_namespace = False
        self.zygote_restarts = 0

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
        self._decide_confinement()
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
        self.services.open()
        self.scheduler.start()
        self.scheduler.enter(CHECK_INTERVAL_S, self._check_periodically)
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
            self._jobs.clear()
            self._wake.notify_all()
        self.scheduler.stop()
        for handle in workers:
            handle.killed_for = handle.killed_for or "stop"
            self._close_channel(handle)
        zygote = self._zygote
        if zygote is not None:
            zygote.stop()  # the zygote kills and reaps its workers before it exits
        if self._thread is not None:
            self._thread.join(3.0)
        self.services.close()
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
        choice = choose_confinement(self.config, self.runtime_dir)
        self.layers = choice.layers
        self.applied_layers = choice.applied
        self.required_layers = choice.required
        self.identities = choice.identities
        self.cgroups = choice.cgroups
        self.user_namespace = choice.user_namespace

    @property
    def pid_namespace(self) -> bool:
        """Whether the zygote and its workers run in a PID namespace of their own. No side effects."""
        return LAYER_PIDNS in self.applied_layers

    @property
    def mount_namespace(self) -> bool:
        """Whether each worker gets a private root (mount namespace, tmpfs /tmp, own /proc). No side effects."""
        return LAYER_MOUNTNS in self.applied_layers

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the running zygote (the parent of every worker), or None while there is none."""
        zygote = self._zygote
        return zygote.pid if zygote is not None else None

    @property
    def is_closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    # -- the supervisor loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                needs_zygote = self._zygote is None
            if needs_zygote:
                self.start_zygote()
                continue
            self.run_due_tasks()
            with self._lock:
                if not self._closed and not self._jobs and self._zygote is not None:
                    self._wake.wait()

    def start_zygote(self) -> None:
        """Start a zygote (on the supervisor thread). On failure, retry after a second."""
        assert self.base_dir is not None
        zygote = ZygoteProcess(self.base_dir, self._on_frame, self._on_zygote_exit, pid_namespace=self.pid_namespace)
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
        """Run the queued jobs, while there is a zygote (without one, the loop starts it first: only this
        thread does, so a job waiting for it here would wait in vain)."""
        while True:
            with self._lock:
                if self._closed or self._zygote is None or not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:
                _log.exception("sandbox task failed", extra={"event": "sandbox_task_failed"})

    def schedule(self, delay_s: float, job: Callable[[], None]) -> None:
        """Run ``job`` (which may block, e.g. boot a worker) on the supervisor thread after ``delay_s``.
        Never blocks; jobs run one at a time, in the order they come due."""
        if delay_s <= 0:
            self._enqueue(job)
        else:
            self.scheduler.enter(delay_s, lambda: self._enqueue(job))

    def call_later(self, delay_s: float, action: Callable[[], object]) -> Task:
        """Run ``action`` (short, never blocking) on the scheduler thread after ``delay_s``; return its task."""
        return self.scheduler.enter(delay_s, action)

    def _enqueue(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            self._jobs.append(job)
            self._wake.notify_all()

    def _check_periodically(self) -> None:
        try:
            self.check_workers()
        finally:
            if not self._closed:
                self.scheduler.enter(CHECK_INTERVAL_S, self._check_periodically)

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

    # -- zygote frames -----------------------------------------------------------------------------

    def _on_frame(self, frame: ZygoteFrame) -> None:
        if isinstance(frame, WorkerExited):
            with self._lock:
                handle = self._workers.pop(frame.pid, None)
            if handle is not None:
                handle.exit_code = frame.code
                handle.exit_signal = frame.signal
                handle.exit_tail = list(frame.tail)
                self._worker_gone(handle)
        elif isinstance(frame, WorkerOutput):
            with self._lock:
                known = self._workers.get(frame.pid)
            plugin_id = known.plugin_id if known else "?"
            for line in frame.lines:
                _log.info(
                    "%s",
                    line,
                    extra={
                        "event": "worker_output",
                        "pluginId": plugin_id,
                        "trustLevel": "untrusted",
                        "pid": frame.pid,
                    },
                )
        else:
            with self._lock:
                pending = self._pending.pop(frame.request_id, None)
                if pending is not None and isinstance(frame, WorkerSpawned):
                    pending[1].pid = frame.pid
                    self._workers[frame.pid] = pending[1]
            if pending is not None:
                if isinstance(frame, WorkerSpawned):
                    pending[0].set_result(frame.pid)
                else:
                    pending[0].set_exception(SandboxError(f"fork failed in the zygote: {frame.error}"))

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
        handle.progress_at_exit = _read_progress(handle)
        handle.exited.set()
        for waiter in handle.exit_waiters:
            waiter.set()
        self._close_channel(handle)
        # The pool first (a spare takes over at once), the clean-up after: removing cgroups may wait.
        self.on_worker_exit(handle)
        if self.base_dir is not None:
            shutil.rmtree(handle.directory, ignore_errors=True)
        self._release_resources(handle)

    # -- workers -----------------------------------------------------------------------------------

    def spawn_worker(self, plan: WorkerPlan) -> WorkerHandle:
        """Fork a worker for ``plan`` and boot it: serve, initialize, start, open its call stream. Blocks
        (about 20 ms).

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
        spec = worker_spec(
            self.config,
            plan,
            handle,
            applied=self.applied_layers,
            required=self.required_layers,
            user_namespace=self.user_namespace,
        )
        future: Future[int] = Future()
        with self._lock:
            if self._closed:
                self._release_resources(handle)
                raise BootError("the sandbox is closed", plugin_id=plan.plugin_id, pid=None)
            zygote = self._zygote
            self._pending[number] = (future, handle)
        if zygote is None:
            raise BootError("the sandbox zygote is not running", plugin_id=plan.plugin_id, pid=None, zygote_down=True)
        deadline = time.monotonic() + self.config.boot_timeout_s
        try:
            zygote.spawn(number, spec)
            pid = future.result(self.config.boot_timeout_s)
            if handle.cgroup is not None:
                # Here, while the worker confines itself: a cgroup v1 move waits several ms for an RCU grace
                # period. The worker imports the plugin only after Initialize, and checks it was moved.
                handle.cgroup.add(pid)
            self._wait_for_socket(handle, deadline)
            self._connect(handle)
            self._boot_steps(handle, plan)
        except BaseException as exc:
            raise self._boot_failed(plan, handle, number, zygote, exc) from exc
        handle.booted_at = handle.idle_since = time.monotonic()
        handle.rss_baseline = _rss_of(handle.pid)
        return handle

    def _boot_steps(self, handle: WorkerHandle, plan: WorkerPlan) -> None:
        run_boot_step(
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
        run_boot_step(
            handle, "start", plan.start_timeout_s, lambda stub, t: stub.Start.future(pb.StepRequest(), timeout=t)
        )
        client = handle.client
        if client is None:  # it died right after start: the boot fails like any death
            raise BootError(
                f"plugin {plan.plugin_id!r}: {handle.describe_exit()} after start",
                plugin_id=plan.plugin_id,
                pid=handle.pid,
                boot_failure=handle.exit_code in BOOT_EXIT_CODES,
            )
        client.open_stream()

    def _boot_failed(
        self, plan: WorkerPlan, handle: WorkerHandle, number: int, zygote: ZygoteProcess, exc: BaseException
    ) -> BaseException:
        """Kill a worker whose boot failed; return the error to raise (BootError unless it is not ours)."""
        with self._lock:
            self._pending.pop(number, None)
            zygote_died = self._zygote is not zygote
        self.kill_worker(handle, "boot")
        if handle.pid is None:  # never forked: no exit report will come to release its uid and cgroups
            self._release_resources(handle)
            shutil.rmtree(handle.directory, ignore_errors=True)
        if zygote_died and isinstance(exc, Exception) and not getattr(exc, "boot_failure", False):
            return BootError(
                f"plugin {plan.plugin_id!r}: the sandbox zygote died while this worker booted",
                plugin_id=plan.plugin_id,
                pid=handle.pid,
                zygote_down=True,
            )
        if isinstance(exc, BootError):
            return exc
        if isinstance(exc, FutureTimeout):
            return BootError(
                f"plugin {plan.plugin_id!r}: the zygote did not fork a worker in time",
                plugin_id=plan.plugin_id,
                pid=None,
            )
        if isinstance(exc, SandboxError):
            return BootError(str(exc), plugin_id=plan.plugin_id, pid=handle.pid)
        return exc

    def kill_worker(self, handle: WorkerHandle, reason: str) -> None:
        """SIGKILL the worker through the zygote (race-free: the zygote only signals its live children) and
        close its channel, so whatever waits on it fails at once. Never blocks; safe to call twice."""
        handle.killed_for = handle.killed_for or reason
        handle.retiring = True
        zygote = self._zygote
        if handle.pid is not None and zygote is not None and not handle.exited.is_set():
            try:
                zygote.kill(handle.pid, int(signal.SIGKILL))
            except SandboxError:
                pass
        self._close_channel(handle)

    def retire_worker(self, handle: WorkerHandle, reason: str, *, call_stop: bool = True) -> None:
        """Stop a worker gracefully: the plugin's stop() (unless ``call_stop`` is False; up to a second), then
        Shutdown, then a kill if it has not exited a second later. Never blocks (the steps run on gRPC
        callbacks and the scheduler); safe to call twice."""
        handle.killed_for = handle.killed_for or reason
        handle.retiring = True
        client = handle.client
        if client is None or handle.exited.is_set():
            self.kill_worker(handle, reason)
            return

        def kill_later(_: object = None) -> None:
            self.call_later(RETIRE_EXIT_S, lambda: None if handle.exited.is_set() else self.kill_worker(handle, reason))

        def shut_down(_: object = None) -> None:
            try:
                client.shutdown_future(0.5).add_done_callback(kill_later)
            except ValueError:  # the channel was closed: it died or was killed meanwhile
                kill_later()

        if not call_stop:
            shut_down()
            return
        try:
            client.stop_future(RETIRE_STOP_S).add_done_callback(shut_down)
        except ValueError:
            shut_down()

    def stop_steps(self, handles: list[WorkerHandle], timeout_s: float) -> list[str | None]:
        """Call the plugin's stop() in every worker at once (each has the full ``timeout_s``, so n workers
        take one timeout, not n); return each one's error text, or None on success. Blocks."""
        futures: list[grpc.Future[pb.StepReply] | None] = []
        for handle in handles:
            client = handle.client
            try:
                futures.append(None if client is None or handle.exited.is_set() else client.stop_future(timeout_s))
            except ValueError:  # the channel was closed: the worker died or was killed
                futures.append(None)
        return [_stop_error(future, timeout_s) for future in futures]

    def _close_channel(self, handle: WorkerHandle) -> None:
        client = handle.client
        if client is not None:
            handle.client = None
            client.close()
        handle.callbacks.put(None)

    def _connect(self, handle: WorkerHandle) -> None:
        # Built on a local name and published last: the worker may die meanwhile, and its exit report closes
        # (and clears) handle.client from the zygote reader thread.
        client = WorkerClient(handle.socket_path, int(self.config.max_message_mb * 1024 * 1024))
        handle.client = client
        if handle.exited.is_set():  # it died while we connected: nobody else will close this channel
            self._close_channel(handle)
        self.services.serve(handle)

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
        # The progress cell: the worker maps it before it drops its uid; the host reads it when it dies.
        fd = os.open(directory / PROGRESS_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, PROGRESS_BYTES)
        except OSError:
            os.close(fd)
            raise
        handle.progress_fd = fd

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
        """Give back a gone worker's uid, remove its cgroups, close its progress cell. Idempotent."""
        progress_fd, handle.progress_fd = handle.progress_fd, None
        if progress_fd is not None:
            os.close(progress_fd)
        identity, handle.identity = handle.identity, None
        cgroup, handle.cgroup = handle.cgroup, None
        if cgroup is not None:
            cgroup.remove()
        if identity is not None and self.identities is not None:
            self.identities.release(identity)

    # -- plugins -----------------------------------------------------------------------------------

    def stage_plugin(self, plugin_id: str, source: Path) -> Path:
        """Copy a plugin folder to a private place its workers load from; return the copy. Blocks briefly.

        Directories become 0755 and files 0644, owned by the host: the worker uid can read them but not
        change them, wherever the original lives (a 0700 home, a temp dir). Symlinks are copied as links,
        so one that points outside still leads nowhere a worker may read (Landlock).
        """
        assert self.base_dir is not None
        staged = self.base_dir / "plugins"
        staged.mkdir(mode=0o711, exist_ok=True)
        target = staged / f"p{next(self._ids)}"
        shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for dirpath, _, filenames in os.walk(target):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        return target

    def unstage_plugin(self, staged: Path) -> None:
        """Remove a copy made by stage_plugin (a no-op for any other path). Idempotent."""
        if self.base_dir is not None and staged.parent == self.base_dir / "plugins":
            shutil.rmtree(staged, ignore_errors=True)

    def allow_services(self, plugin_id: str, services: tuple[str, ...]) -> None:
        """Record which host services ``plugin_id``'s workers may call."""
        self.services.allow_services(plugin_id, services)

    def get_worker_count(self) -> int:
        """Live workers of every plugin."""
        with self._lock:
            return len(self._workers)


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


def _read_progress(handle: WorkerHandle) -> int:
    """The progress cell's value (0 when unreadable): which call of a batch the worker was in."""
    if handle.progress_fd is None:
        return 0
    try:
        return int(PROGRESS.unpack(os.pread(handle.progress_fd, PROGRESS.size, 0))[0])
    except (OSError, ValueError):  # struct.error is a ValueError
        return 0


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
