"""A fake supervisor for routing tests: no processes, no sockets (go-plugin's RunnerFunc seam).

Each "worker" is the real worker-side ``WorkerServicer.serve_calls`` loop (the real codec, batches, progress
cell) running on a thread of its own, fed by an in-memory stream; its plugin is a dict of plain functions.
``kill_worker`` breaks the stream at once and reports the exit on another thread, as the zygote reader does.
Every wait is bounded.
"""

from __future__ import annotations

import itertools
import mmap
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from plugin_pool.config import SandboxConfig
from plugin_pool.sandbox._sched import Scheduler
from plugin_pool.sandbox._worker import WorkerServicer
from plugin_pool.sandbox.worker_client import BootError, StreamBroken, WorkerHandle, WorkerPlan

Capability = Callable[[Any], Any]
_END = object()
_NEVER = threading.Event()
DEAD_S = 30.0


_serving = threading.local()


def die() -> None:
    """Called by a fake plugin method: its worker dies in this call (like a SIGKILL): the stream breaks, the
    exit is reported, and this call never returns a reply."""
    client: FakeClient = _serving.client
    client.owner.kill_worker(client.handle, "")
    _NEVER.wait(DEAD_S)  # a dead worker runs nothing more (this thread lingers, bounded, as a daemon)


def hang() -> None:
    """Called by a fake plugin method: block until the worker is killed (at most 5 s)."""
    client: FakeClient = _serving.client
    client.gone.wait(5.0)


class FakeClient:
    """A worker's call stream in memory, served by the real worker-side loop on a thread."""

    def __init__(self, owner: FakeSupervisor, handle: WorkerHandle, methods: dict[str, Capability]) -> None:
        self.owner = owner
        self.handle = handle
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.broken = threading.Event()
        self.gone = threading.Event()
        """The process is dead (set by a kill)."""
        self.servicer = WorkerServicer(handle.plugin_id, owner.config_max_bytes)
        self.servicer.methods = dict(methods)
        self.servicer.ready.set()
        self.servicer.progress = mmap.mmap(-1, 4096)
        self.frames = 0
        threading.Thread(target=self._serve, name=f"fake-worker-{handle.pid}", daemon=True).start()

    def _incoming(self) -> Iterator[memoryview]:
        while True:
            item = self.requests.get()
            if item is _END:
                return
            self.frames += 1
            yield memoryview(item)

    def _serve(self) -> None:
        _serving.client = self
        for reply in self.servicer.serve_calls(self._incoming(), None):  # type: ignore[arg-type]
            if self.gone.is_set():
                return  # a dead worker sends nothing
            self.replies.put(bytes(reply))

    def open_stream(self) -> None:
        return None

    def send(self, data: bytes) -> None:
        self.requests.put(data)

    def receive(self) -> memoryview:
        while True:
            if self.broken.is_set():
                raise StreamBroken("the fake worker is gone")
            try:
                return memoryview(self.replies.get(timeout=0.01))
            except queue.Empty:
                continue

    def cancel(self) -> None:
        self.broken.set()

    def close(self) -> None:
        self.broken.set()
        self.gone.set()
        self.requests.put(_END)


class FakeSupervisor:
    """What ``SandboxPool`` needs from a supervisor, in memory. ``methods`` is every worker's plugin."""

    def __init__(self, config: SandboxConfig, methods: dict[str, Capability]) -> None:
        self.config = config
        self.config_max_bytes = int(config.max_message_mb * 1024 * 1024)
        self.methods = methods
        self.on_worker_exit: Callable[[WorkerHandle], None] = lambda handle: None
        self.on_idle_cpu: Callable[[WorkerHandle, float], None] | None = None
        self.scheduler = Scheduler("fake-sched")
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.pids = itertools.count(1000)
        self.spawned: list[WorkerHandle] = []
        self.boot_failures = 0
        """Boots that still fail (with a crash, not a boot failure) before one succeeds."""
        self.retire_s = 0.0
        """How long a graceful retirement takes before the worker exits (a real one runs stop() first)."""
        self.lock = threading.Lock()
        self.closed = False

    # -- the pool's side -------------------------------------------------------------------------------

    def open(self) -> None:
        self.scheduler.start()
        threading.Thread(target=self._run_jobs, name="fake-supervisor", daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.jobs.put(None)
        for handle in list(self.spawned):
            self.kill_worker(handle, "stop")
        self.scheduler.stop()

    def _run_jobs(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job()

    def stage_plugin(self, plan: WorkerPlan) -> Path:
        return plan.plugin_dir

    def is_staged(self, path: Path) -> bool:
        return True

    def read_code_capabilities(self, handle: WorkerHandle, timeout_s: float = 2.0) -> tuple[str, ...]:
        return ()

    def unstage_plugin(self, staged: Path) -> None:
        return None

    def allow_services(self, plugin_id: str, services: tuple[str, ...]) -> None:
        return None

    def spawn_worker(self, plan: WorkerPlan) -> WorkerHandle:
        with self.lock:
            if self.boot_failures:
                self.boot_failures -= 1
                raise BootError(f"plugin {plan.plugin_id!r}: fake boot failure", plugin_id=plan.plugin_id, pid=None)
        pid = next(self.pids)
        handle = WorkerHandle(plugin_id=plan.plugin_id, directory=Path("/nonexistent"), socket_path=Path("/x"))
        handle.pid = pid
        handle.booted_at = handle.idle_since = time.monotonic()
        handle.client = FakeClient(self, handle, self.methods)  # type: ignore[assignment]
        with self.lock:
            self.spawned.append(handle)
        return handle

    def kill_worker(self, handle: WorkerHandle, reason: str) -> None:
        handle.killed_for = handle.killed_for or reason or None
        handle.retiring = True
        client = handle.client
        if client is None or handle.exited.is_set():
            return
        handle.client = None
        client.close()
        threading.Thread(target=self._report_exit, args=(handle, client), daemon=True).start()

    def _report_exit(self, handle: WorkerHandle, client: Any) -> None:
        if handle.exited.is_set():
            return
        handle.exit_signal = 9
        handle.progress_at_exit = int.from_bytes(client.servicer.progress[:4], "little")
        handle.exited.set()
        self.on_worker_exit(handle)

    def retire_worker(self, handle: WorkerHandle, reason: str, *, call_stop: bool = True) -> None:
        handle.killed_for = handle.killed_for or reason
        if self.retire_s > 0:
            self.scheduler.enter(self.retire_s, lambda: self.kill_worker(handle, reason))
        else:
            self.kill_worker(handle, reason)

    def stop_steps(self, handles: list[WorkerHandle], timeout_s: float) -> list[str | None]:
        return [None for _ in handles]

    def schedule(self, delay_s: float, job: Callable[[], None]) -> None:
        if delay_s <= 0:
            self.jobs.put(job)
        else:
            self.scheduler.enter(delay_s, lambda: self.jobs.put(job))

    def call_later(self, delay_s: float, action: Callable[[], object]) -> Any:
        return self.scheduler.enter(delay_s, action)

    # -- for the tests ------------------------------------------------------------------------------------

    def live(self) -> list[WorkerHandle]:
        with self.lock:
            return [h for h in self.spawned if not h.exited.is_set()]

    def frames_of(self, handle: WorkerHandle) -> int:
        for spawned in self.spawned:
            if spawned is handle and spawned.client is not None:
                return int(spawned.client.frames)  # type: ignore[attr-defined]
        return 0
