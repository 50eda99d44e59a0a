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

from plugin_pool.config import SandboxConfig
from plugin_pool.errors import SandboxError
from plugin_pool.sandbox._checks import check_workers
from plugin_pool.sandbox._confine import LAYER_MOUNTNS, LAYER_PIDNS, LayerStatus
from plugin_pool.sandbox._sched import Scheduler, Task
from plugin_pool.sandbox.cgroups import CgroupTree
from plugin_pool.sandbox.confinement import choose_confinement, worker_spec
from plugin_pool.sandbox.host_services import HostServices
from plugin_pool.sandbox.identities import WorkerIdentities
from plugin_pool.sandbox.resources import (
    BASE_DIR_PREFIX,
    MAX_SOCKET_PATH,
    SOCKET_NAME,
    claim_resources,
    make_worker_dirs,
    read_progress,
    release_resources,
    remove_orphaned_dirs,
    rss_of,
    runtime_dir_for,
)
from plugin_pool.sandbox.staging import bytecode_cache_for, is_staged, stage_copy, unstage_copy
from plugin_pool.sandbox.worker_client import (
    BootError,
    WorkerClient,
    WorkerHandle,
    WorkerPlan,
    boot_steps,
    stop_all,
    wait_for_socket,
)
from plugin_pool.sandbox.zygote_client import (
    ZYGOTE_READY_TIMEOUT_S,
    WorkerExited,
    WorkerOutput,
    WorkerSpawned,
    ZygoteFrame,
    ZygoteProcess,
)
from plugin_pool.staging import BytecodeCache

__all__ = ["BootError", "Supervisor", "WorkerHandle", "WorkerPlan", "remove_orphaned_dirs", "runtime_dir_for"]

_log = logging.getLogger("plugin_pool.sandbox")

CHECK_INTERVAL_S = 1.0
RETIRE_STOP_S = 1.0
"""How long a retiring worker's stop() may take before it is shut down anyway."""
RETIRE_EXIT_S = 1.0
"""How long a retiring worker may take to exit after Shutdown before it is killed."""


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
        self.bytecode_cache: BytecodeCache | None = None
        """Where bytecode compiled for staged copies is kept by content hash (``[sandbox] bytecode_cache``)."""
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
        missing = [p for p in self.config.extra_read_paths if not os.path.exists(p)]
        if missing:
            raise SandboxError(
                f"sandbox.extra_read_paths names {missing[0]!r}, which does not exist; create it or remove it "
                f"from the list"
            )
        self._decide_confinement()
        self.bytecode_cache = bytecode_cache_for(self.config, self.runtime_dir)
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
            release_resources(handle, self.identities)
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
        workers that burned CPU while no call was in flight (``on_idle_cpu``). See ``_checks``."""
        with self._lock:
            workers = [h for h in self._workers.values() if not h.exited.is_set()]
        check_workers(self.config, workers, self.on_idle_cpu)

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
        handle.progress_at_exit = read_progress(handle)
        handle.exited.set()
        for waiter in handle.exit_waiters:
            waiter.set()
        # The pool first (a spare takes over at once), the clean-up after: closing a channel and removing
        # cgroups may take milliseconds. A call still waiting on this worker's stream has seen it break.
        self.on_worker_exit(handle)
        self._close_channel(handle)
        if self.base_dir is not None:
            shutil.rmtree(handle.directory, ignore_errors=True)
        release_resources(handle, self.identities)

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
        claim_resources(self.config, plan, handle, self.identities, self.cgroups)
        try:
            make_worker_dirs(handle, mount_namespace=self.mount_namespace)
        except OSError:
            release_resources(handle, self.identities)
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
            zygote = self._zygote
            if not self._closed and zygote is not None:
                self._pending[number] = (future, handle)
        if self._closed or zygote is None:
            release_resources(handle, self.identities)
            shutil.rmtree(handle.directory, ignore_errors=True)
            what = "the sandbox is closed" if self._closed else "the sandbox zygote is not running"
            raise BootError(what, plugin_id=plan.plugin_id, pid=None, zygote_down=not self._closed)
        deadline = time.monotonic() + self.config.boot_timeout_s
        try:
            zygote.spawn(number, spec)
            pid = future.result(self.config.boot_timeout_s)
            if handle.cgroup is not None:
                # Here, while the worker confines itself: a cgroup v1 move waits several ms for an RCU grace
                # period. The worker imports the plugin only after Initialize, and checks it was moved.
                try:
                    handle.cgroup.add(pid)
                except OSError as cgroup_error:
                    raise BootError(
                        f"plugin {plan.plugin_id!r}: cannot move worker pid {pid} into its cgroups: {cgroup_error}",
                        plugin_id=plan.plugin_id,
                        pid=pid,
                    ) from cgroup_error
            wait_for_socket(handle, deadline, self.config.boot_timeout_s)
            self._connect(handle)
            boot_steps(handle, plan)
        except BaseException as exc:
            raise self._boot_failed(plan, handle, number, zygote, exc) from exc
        handle.booted_at = handle.idle_since = time.monotonic()
        handle.rss_baseline = rss_of(handle.pid)
        return handle

    def _boot_failed(
        self, plan: WorkerPlan, handle: WorkerHandle, number: int, zygote: ZygoteProcess, exc: BaseException
    ) -> BaseException:
        """Kill a worker whose boot failed; return the error to raise (BootError unless it is not ours)."""
        with self._lock:
            self._pending.pop(number, None)
            zygote_died = self._zygote is not zygote
        self.kill_worker(handle, "boot")
        if handle.pid is None:  # never forked: no exit report will come to release its uid and cgroups
            release_resources(handle, self.identities)
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
        return stop_all(handles, timeout_s)

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

    # -- plugins -----------------------------------------------------------------------------------

    def stage_plugin(self, plan: WorkerPlan) -> Path:
        """Make the verified private copy of ``plan.plugin_dir`` its workers load; return the copy. Blocks.
        See ``staging.stage_copy``: copied and hashed in one pass, compared with ``plan.content_hash``,
        bytecode compiled by the host or restored from the bytecode cache. Raises ContentHashMismatchError,
        IntegrityRejectedError or StagingError; nothing is left behind then."""
        assert self.base_dir is not None
        return stage_copy(self.base_dir, f"p{next(self._ids)}", plan, self.bytecode_cache)

    def is_staged(self, path: Path) -> bool:
        """Whether ``path`` is a copy made by stage_plugin. No side effects."""
        return self.base_dir is not None and is_staged(self.base_dir, path)

    def unstage_plugin(self, staged: Path) -> None:
        """Remove a copy made by stage_plugin (a no-op for any other path). Idempotent."""
        if self.base_dir is not None:
            unstage_copy(self.base_dir, staged)

    def read_code_capabilities(self, handle: WorkerHandle, timeout_s: float = 2.0) -> tuple[str, ...]:
        """The capabilities the plugin's code declares, as the worker reports them (its Health reply): data
        from an untrusted process, so only valid names, at most 256; empty when it cannot answer. Blocks up
        to ``timeout_s``."""
        client = handle.client
        if client is None or handle.exited.is_set():
            return ()
        return client.code_capabilities(timeout_s)

    def allow_services(self, plugin_id: str, services: tuple[str, ...]) -> None:
        """Record which host services ``plugin_id``'s workers may call."""
        self.services.allow_services(plugin_id, services)

    def get_worker_count(self) -> int:
        """Live workers of every plugin."""
        with self._lock:
            return len(self._workers)
