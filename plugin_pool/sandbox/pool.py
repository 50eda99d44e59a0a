"""Routing calls to sandbox workers (host side): which worker takes a call, and what its failure means.

Each Untrusted plugin has its own workers (never shared with another plugin). A call takes an idle
worker of that plugin (the most recently used, so warm workers stay warm) and goes at once, alone, on the
worker's call stream. When every worker is busy it waits in line (bounded by ``queue_limit``); a worker
that comes free goes to the oldest waiting call, which takes up to ``max_batch`` - 1 of the calls behind
it along in the same frame (dynamic batching, as Triton's dynamic batcher does): each caller still gets
its own result or its own error. A worker that dies during a batch fails nobody blindly: with
``on_crash = "isolate"`` every call of the batch runs once more, alone, on another worker (so a call runs
at most twice, and only the poisoned one fails); with ``"fail"`` each gets the crash error.

Deadlines are the host's: a call past its deadline gets its worker killed (``DeadlineWatch``). How many
workers a plugin keeps is ``workers.py``'s; processes are the supervisor's, which this module takes as a
parameter (tests pass a fake, as go-plugin's ``RunnerFunc`` does).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from plugin_pool.config import SandboxConfig, check_pool_size
from plugin_pool.errors import (
    CallTimeoutError,
    MalformedReplyError,
    PluginNotActiveError,
    PoolOverloadedError,
    QueueTimeoutError,
)
from plugin_pool.lifecycle import PluginState
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox._batches import PENDING, Call, Rerun, lost_batch_outcomes, not_run, worth_rerun
from plugin_pool.sandbox._calls import WorkerLoss, encode, outcome_value
from plugin_pool.sandbox._chunks import ChunkRun, chunk_items, encode_chunk
from plugin_pool.sandbox._deadlines import DeadlineWatch
from plugin_pool.sandbox._exchange import Exchange
from plugin_pool.sandbox.manager import WorkerManager
from plugin_pool.sandbox.supervisor import Supervisor
from plugin_pool.sandbox.worker_client import WorkerHandle, WorkerPlan
from plugin_pool.sandbox.workers import RESTART_REASONS, PoolStats, Worker, WorkerGroup, WorkerRunner, WorkerState

__all__ = ["RESTART_REASONS", "DeadlineWatch", "PoolStats", "PoolSupervisor", "SandboxPool"]

_log = logging.getLogger("plugin_pool.sandbox")

RIDER_GRACE_S = 10.0
"""How long past its deadline a call riding in a batch waits for the batch's leader (a safety net only)."""


class PoolSupervisor(WorkerRunner, Protocol):
    """What the pool needs from a supervisor beyond the worker runner (``Supervisor``; tests pass a fake)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def stage_plugin(self, plan: WorkerPlan) -> Any: ...

    def is_staged(self, path: Any) -> bool: ...

    def unstage_plugin(self, staged: Any) -> None: ...

    def read_code_capabilities(self, handle: WorkerHandle, timeout_s: float = 2.0) -> tuple[str, ...]: ...

    def allow_services(self, plugin_id: str, services: tuple[str, ...]) -> None: ...


class SandboxPool:
    """The preforked, confined worker pool for Untrusted plugins.

    Thread-safe. ``open`` (probes confinement, starts the zygote) and ``close`` are idempotent.
    ``on_restart(plugin_id, reason)`` is called once per replacement; ``on_plugin_failed(plugin_id,
    reason)`` when a plugin keeps crashing or its replacement cannot boot (the host moves it to Failed).
    ``supervisor``: the process side (default: a ``Supervisor`` for ``config``).
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        services: Mapping[str, Any] | None = None,
        on_restart: Callable[[str, str], None] | None = None,
        on_plugin_failed: Callable[[str, str], None] | None = None,
        supervisor: PoolSupervisor | None = None,
    ) -> None:
        self.config = config
        self.supervisor: Any = supervisor if supervisor is not None else Supervisor(config, services=services)
        self._manager = WorkerManager(
            config,
            self.supervisor,
            on_ready=self._serve_waiters,
            on_restart=on_restart or (lambda plugin_id, reason: None),
            on_plugin_failed=on_plugin_failed or (lambda plugin_id, reason: None),
        )
        self._watch = DeadlineWatch(self.supervisor, self._all_handles)
        self._exchanger = Exchange(self.supervisor, self._watch)
        self._max_message_bytes = int(config.max_message_mb * 1024 * 1024)

    def open(self) -> SandboxPool:
        """Probe confinement and start the zygote. Raises ConfinementUnavailableError below the minimum."""
        self.supervisor.open()
        return self

    def close(self) -> None:
        """Kill every worker (spares too) and the zygote. Idempotent."""
        for group in self._manager.list_groups():
            with group.lock:
                group.active = False
                self._serve_waiters(group)
        self.supervisor.close()

    def get_confinement(self) -> dict[str, Any]:
        """Which layers this kernel offers, which the workers get, and which are required."""
        sup = self.supervisor
        return {
            "layers": {name: status.to_dict() for name, status in sup.layers.items()},
            "applied": sorted(sup.applied_layers),
            "required": sorted(sup.required_layers),
            "worker_uids": (
                None if sup.identities is None else f"{sup.identities.first}-{sup.identities.last}, one per worker"
            ),
            "user_namespace": sup.user_namespace,
            "pid_namespace": sup.pid_namespace,
            "mount_namespace": sup.mount_namespace,
            "cgroups": None if sup.cgroups is None else sup.cgroups.describe(),
        }

    # -- plugin lifecycle -------------------------------------------------------------------------------

    def stage_plugin(self, plan: WorkerPlan) -> WorkerPlan:
        """Make the verified private copy the plugin's workers will load; return the plan pointing at it.

        Workers load a private read-only copy: readable by their uid wherever the folder lives, holding
        exactly the bytes that were hashed (and checked against ``plan.content_hash``), and the code that
        runs cannot change under them. The host stages while the plugin is Loading, so a folder that
        changed or holds what it may not fails the load. Raises ContentHashMismatchError,
        IntegrityRejectedError or StagingError (see Supervisor.stage_plugin). Blocks on the copy.
        """
        return dataclasses.replace(plan, plugin_dir=self.supervisor.stage_plugin(plan))

    def unstage_plugin(self, plan: WorkerPlan) -> None:
        """Remove a copy made by stage_plugin that was never handed to start_plugin. Idempotent."""
        self.supervisor.unstage_plugin(plan.plugin_dir)

    def start_plugin(self, plan: WorkerPlan, *, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Boot the plugin's first workers (initialize and start run in each); its spares follow in the
        background. Blocks. ``plan`` comes from :meth:`stage_plugin` (or is staged here first); from here the
        pool owns the copy and removes it when the plugin stops or fails. Raises BootError (with the worker's
        last output) if the first worker cannot boot, ConfigError for bounds that do not fit.
        """
        low, high = check_pool_size(
            self.config.min_workers if min_workers is None else min_workers,
            self.config.max_workers if max_workers is None else max_workers,
            max_total_workers=self.config.max_total_workers,
            where=f"plugins.{plan.plugin_id}",
        )
        if not self.supervisor.is_staged(plan.plugin_dir):
            plan = self.stage_plugin(plan)
        try:
            self.supervisor.allow_services(plan.plugin_id, plan.services)
            self._manager.start_plugin(plan, low, high)
        except BaseException:
            self.supervisor.unstage_plugin(plan.plugin_dir)
            raise

    def stop_plugin(self, plugin_id: str, *, timeout_s: float) -> str | None:
        """Run the plugin's stop() in every worker (spares too), then retire them. Blocks; returns the first
        error, or None. Safe to call twice (the second call does nothing)."""
        group = self._manager.get_group(plugin_id)
        if group is None:
            return None
        error = self._manager.stop_plugin(plugin_id, timeout_s=timeout_s)
        self.supervisor.unstage_plugin(group.plan.plugin_dir)
        return error

    # -- sizing ---------------------------------------------------------------------------------------

    def resize_plugin(
        self, plugin_id: str, *, min_workers: int | None = None, max_workers: int | None = None
    ) -> tuple[int, int]:
        """Change a running plugin's pool bounds without failing a call; return the new (min, max).

        Growing the minimum boots workers up to it (a spare takes a place at once; as far as
        ``max_total_workers`` allows); lowering the maximum retires idle workers above it gracefully (their
        stop() runs) and each busy one above it when its call returns. Retirements are not replacements:
        no restart is counted. Idle workers between the new minimum and maximum stay (the pool never
        shrinks towards its minimum by itself). Does not block on workers; safe to call any number of
        times. Raises PluginNotActiveError for a plugin without workers and ConfigError for bounds below
        1 or a minimum above the maximum.
        """
        group = self._manager.get_group(plugin_id)
        if group is None:
            raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "it has no sandbox workers")
        with group.lock:
            low = group.min_workers if min_workers is None else min_workers
            high = group.max_workers if max_workers is None else max_workers
        if max_workers is None and high < low:
            high = low  # raising only the minimum carries the maximum along
        check_pool_size(low, high, where=f"plugins.{plugin_id}", source="resize")
        short = self._manager.resize(group, low, high)
        if short:
            _log.warning(
                "plugin %r: %d workers for min_workers=%d were not started: sandbox.max_total_workers (%d) is reached",
                plugin_id,
                short,
                low,
                self.config.max_total_workers,
                extra={"event": "pool_resized", "pluginId": plugin_id, "trustLevel": "untrusted"},
            )
        _log.info(
            "plugin %r: pool resized to min_workers=%d, max_workers=%d",
            plugin_id,
            low,
            high,
            extra={"event": "pool_resized", "pluginId": plugin_id, "trustLevel": "untrusted"},
        )
        return low, high

    def update_limits(
        self, *, min_workers: int | None = None, max_workers: int | None = None, max_total_workers: int | None = None
    ) -> SandboxConfig:
        """Change the defaults for plugins started later (``min_workers``, ``max_workers``) and the cap of all
        workers together (``max_total_workers``), and return the configuration now in force.

        Lowering the cap stops growth and new plugins beyond it; running workers stay (resize the plugins
        to retire some). Running plugins keep their bounds: use :meth:`resize_plugin`. Safe to call twice.
        """
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("min_workers", min_workers),
                ("max_workers", max_workers),
                ("max_total_workers", max_total_workers),
            )
            if value is not None
        }
        config = dataclasses.replace(self.config, **changes)
        check_pool_size(config.min_workers, config.max_workers, max_total_workers=config.max_total_workers)
        self.config = config  # one reference swap: readers see the old or the new limits, never a mix
        self._manager.set_limit(config)
        return config

    # -- calls --------------------------------------------------------------------------------------

    def invoke(self, plugin_id: str, capability: str, payload: Any, timeout_s: float) -> Any:
        """Run one call in a worker of ``plugin_id`` and return its result. Blocks up to ``timeout_s``.

        When every worker is busy the call waits in line and may ride in a batch with other calls (it gets
        its own result or error either way)."""
        data = encode(plugin_id, codec.encode_call, capability, payload, "payload", self._max_message_bytes)
        deadline = time.monotonic() + timeout_s
        return self._run_call(self._group(plugin_id), capability, data, deadline, timeout_s, solo=False)

    def _group(self, plugin_id: str) -> WorkerGroup:
        group = self._manager.get_group(plugin_id)
        if group is None:
            raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "it has no sandbox workers")
        return group

    def _run_call(
        self, group: WorkerGroup, capability: str, data: bytes, deadline: float, timeout_s: float, *, solo: bool
    ) -> Any:
        with group.lock:
            if not group.active:
                raise PluginNotActiveError(group.plugin_id, PluginState.STOPPED, "its sandbox workers were stopped")
            worker = self._manager.take_idle(group) if not group.waiters else None
            if worker is None:
                call = self._wait_in_line(group, data, capability, deadline, timeout_s, solo=solo)
        if worker is not None:  # the common case: an idle worker, the call goes at once, alone
            return self._alone(group, worker, capability, data, deadline, timeout_s)
        if call.worker is None:  # it rode in another call's batch
            outcome = call.outcome
            if isinstance(outcome, Rerun):
                if not worth_rerun(deadline, timeout_s):
                    raise outcome.error
                return self._run_call(group, capability, data, deadline, timeout_s, solo=True)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome_value(group.plugin_id, capability, outcome, None, None)
        return self._lead(group, call)

    def _alone(
        self, group: WorkerGroup, worker: Worker, capability: str, data: bytes, deadline: float, timeout_s: float
    ) -> Any:
        """One call on a worker of its own: the shortest path (no batch, no rider to answer)."""
        handle = worker.handle
        try:
            reply = self._exchanger.send_one(worker, data, deadline)
        except WorkerLoss as loss:
            error = loss.error(group.plugin_id, capability, timeout_s)
            with group.lock:
                group.errors += 1
                group.last_error = str(error)[:500]
            raise error from None
        try:
            outcome = codec.decode_reply(reply)
        except (ValueError, UnicodeDecodeError) as exc:
            self._give_back(group, worker, 1)
            raise MalformedReplyError(
                f"plugin {group.plugin_id!r}: worker pid {handle.pid} sent a malformed reply: {exc}",
                plugin_id=group.plugin_id,
                pid=handle.pid,
            ) from None
        if not outcome[0] and outcome[1][0] == "resource_limit":
            handle.recycle_for = handle.recycle_for or "memory"  # a real MemoryError: replaced once idle
        with group.lock:
            group.calls += 1
            self._manager.release(group, worker, 1)
        return outcome_value(group.plugin_id, capability, outcome, None, handle.pid)

    def _take_worker(self, group: WorkerGroup, capability: str, deadline: float, timeout_s: float) -> Worker:
        """A worker for one caller alone (chunks of invoke_many): idle now, or after waiting in line."""
        with group.lock:
            if not group.active:
                raise PluginNotActiveError(group.plugin_id, PluginState.STOPPED, "its sandbox workers were stopped")
            worker = self._manager.take_idle(group) if not group.waiters else None
            if worker is None:
                worker = self._wait_in_line(group, b"", capability, deadline, timeout_s, solo=True).worker
            assert worker is not None
            return worker

    def _wait_in_line(
        self, group: WorkerGroup, data: bytes, capability: str, deadline: float, timeout_s: float, *, solo: bool
    ) -> Call:
        """Wait (caller holds the lock) until the call is handed a worker, or its batch's leader answered it.

        Calls run again after a lost batch go to the front: they already waited their turn."""
        plugin_id = group.plugin_id
        if len(group.waiters) >= self.config.queue_limit:
            raise PoolOverloadedError(
                f"plugin {plugin_id!r}: all {group.serving} workers are busy and {len(group.waiters)} calls are "
                f"waiting (sandbox.queue_limit); retry later or raise sandbox.max_workers",
                plugin_id=plugin_id,
            )
        call = Call(data, capability, deadline, timeout_s, threading.Condition(group.lock), solo=solo)
        if solo and call.is_call:
            group.waiters.appendleft(call)
        else:
            group.waiters.append(call)
        try:
            self._serve_waiters(group)
            self._manager.reconcile(group)  # a spare steps in, or the pool grows, while the call waits
            while call.worker is None and call.outcome is PENDING:
                if not group.active and call in group.waiters:
                    raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "its sandbox workers were stopped")
                riding = call not in group.waiters
                remaining = deadline + (RIDER_GRACE_S if riding else 0.0) - time.monotonic()
                if remaining <= 0:
                    if riding:  # its batch's leader took it: it may have run
                        raise CallTimeoutError(plugin_id, capability, timeout_s)
                    raise QueueTimeoutError(plugin_id, capability, timeout_s)
                call.cond.wait(remaining)
            return call
        finally:
            if call.worker is None and call.outcome is PENDING and call in group.waiters:
                group.waiters.remove(call)

    def _serve_waiters(self, group: WorkerGroup) -> None:
        """Hand idle workers to waiting calls, oldest first, each with the calls behind it that fit in one
        frame (caller holds the lock). When the group stopped, wake every waiting call to fail."""
        if not group.active:
            for call in group.waiters:
                call.cond.notify()
            return
        while group.waiters and group.idle:
            worker = self._manager.take_idle(group)
            if worker is None:
                return
            leader = group.waiters.popleft()
            leader.worker = worker
            leader.cond.notify()  # it takes the calls that will ride with it when it wakes (see _lead)

    def _take_riders(self, group: WorkerGroup, leader: Call, count: int) -> list[Call]:
        """Up to ``count`` waiting calls (not solo ones) that fit in one frame with the leader's."""
        riders: list[Call] = []
        size = len(leader.data) + 4 * (count + 2)
        now = time.monotonic()
        for call in list(group.waiters):
            if len(riders) >= count:
                break
            # A call out of time stays in line (it fails on its own); one that would not fit waits for the next.
            if call.solo or call.deadline <= now or size + len(call.data) > self._max_message_bytes:
                continue
            group.waiters.remove(call)
            riders.append(call)
            size += len(call.data)
        return riders

    def _lead(self, group: WorkerGroup, call: Call) -> Any:
        """Send the call (and its riders) on the worker it was handed; deliver every rider's outcome."""
        worker = call.worker
        assert worker is not None
        if time.monotonic() >= call.deadline:  # it waited its whole time: the worker goes on to the next call
            self._give_back(group, worker, 0)
            raise QueueTimeoutError(group.plugin_id, call.capability, call.timeout_s)
        room = self.config.max_batch - 1
        # Riders are taken now, when the leader has woken, not when it was handed the worker: the calls that
        # came meanwhile (often the caller that freed the worker, calling again) ride along, at no cost in
        # latency. Batch only at full size: while the pool grows, the calls behind get workers of their own.
        if not call.solo and room > 0 and group.serving >= group.max_workers:
            with group.lock:
                wait_s = self.config.batch_wait_us / 1e6
                if wait_s > 0 and len(group.waiters) < room:
                    call.cond.wait(wait_s)  # the optional window: calls arriving meanwhile ride along
                call.riders = self._take_riders(group, call, room)
        batch = [call, *(call.riders or ())]
        try:
            outcomes = self._exchange(group, worker, batch)
        except WorkerLoss as loss:
            outcomes, shown = lost_batch_outcomes(group.plugin_id, batch, loss, self.config.on_crash)
            with group.lock:
                group.last_error = str(loss.error(group.plugin_id, batch[shown].capability, 0.0))[:500]
                group.errors += sum(isinstance(o, BaseException) for o in outcomes)  # a rerun counts later
        except BaseException as exc:
            self._deliver(group, batch[1:], [copy.copy(exc) for _ in batch[1:]])
            raise
        else:  # calls the worker did not run (one before them hit its memory limit) run again, alone
            outcomes = [
                Rerun(QueueTimeoutError(group.plugin_id, c.capability, c.timeout_s)) if not_run(o) else o
                for c, o in zip(batch, outcomes, strict=True)
            ]
        self._deliver(group, batch[1:], outcomes[1:])
        mine = outcomes[0]
        if isinstance(mine, Rerun):
            if not worth_rerun(call.deadline, call.timeout_s):
                raise mine.error
            return self._run_call(group, call.capability, call.data, call.deadline, call.timeout_s, solo=True)
        if isinstance(mine, BaseException):
            raise mine
        return outcome_value(group.plugin_id, call.capability, mine, None, worker.handle.pid)

    def _exchange(self, group: WorkerGroup, worker: Worker, batch: list[Call]) -> list[Any]:
        """One frame (a call, a chunk, or calls batched together) and its reply; returns the outcomes in order
        and gives the worker back. Raises WorkerLoss when the worker is lost, MalformedReplyError."""
        handle = worker.handle
        multi = len(batch) > 1
        data = codec.encode_multi([c.data for c in batch]) if multi else batch[0].data
        frames = self._exchanger.send(worker, [data], min(c.deadline for c in batch), reply_parts=multi)[0]
        try:
            if not multi:
                outcomes = [codec.decode_reply(frames[0])]
            else:
                outcomes = []
                for frame in frames:
                    outcomes += codec.decode_reply_items(frame)[0]
                if len(outcomes) != len(batch):
                    raise ValueError(f"{len(outcomes)} replies to {len(batch)} calls")
        except (ValueError, UnicodeDecodeError) as exc:
            self._give_back(group, worker, len(batch))
            raise MalformedReplyError(
                f"plugin {group.plugin_id!r}: worker pid {handle.pid} sent a malformed reply: {exc}",
                plugin_id=group.plugin_id,
                pid=handle.pid,
            ) from None
        if any(not ok and value[0] == "resource_limit" for ok, value in outcomes):
            handle.recycle_for = handle.recycle_for or "memory"  # a real MemoryError: replaced once idle
        with group.lock:
            group.calls += len(batch)
            group.batched += len(batch) - 1
        self._give_back(group, worker, len(batch))
        return outcomes

    def _deliver(self, group: WorkerGroup, riders: list[Call], outcomes: list[Any]) -> None:
        if not riders:
            return
        with group.lock:
            for rider, outcome in zip(riders, outcomes, strict=True):
                rider.outcome = outcome
                rider.cond.notify()

    def _give_back(self, group: WorkerGroup, worker: Worker, calls: int) -> None:
        with group.lock:
            self._manager.release(group, worker, calls)

    def _all_handles(self) -> list[WorkerHandle]:
        return [h for group in self._manager.list_groups() for h in list(group.workers)]

    # -- many inputs of one capability --------------------------------------------------------------

    def invoke_many(
        self,
        plugin_id: str,
        capability: str,
        payloads: Iterable[Any],
        timeout_s: float,
        *,
        chunk_size: int | None = None,
    ) -> list[Any]:
        """Run many inputs of one capability and return the results in order. Blocks.

        The inputs go in chunks, cut by count and by bytes (``sandbox.chunk_mb``), every chunk encoded
        before any is sent; the chunks are spread over the plugin's idle workers (asking for more up to
        ``max_workers``), with the next chunk already queued on a worker while it runs one. Each chunk has
        ``timeout_s`` from when its worker could start it. The failing item with the lowest index raises
        its error, with ``index`` set for a PluginCallError.
        """
        items = list(payloads)
        if not items:
            return []
        group = self._group(plugin_id)
        chunks = chunk_items(items, chunk_size, group.max_workers, self.config.chunk_mb)
        # Every chunk encoded before any is sent: a payload that cannot cross fails the call at once.
        parts = [
            part
            for offset, chunk in chunks
            for part in encode_chunk(plugin_id, capability, chunk, offset, self._max_message_bytes)
        ]
        return ChunkRun(self, group, capability, parts, timeout_s).run()

    # -- health -------------------------------------------------------------------------------------

    def get_stats(self, plugin_id: str) -> PoolStats | None:
        """The plugin's workers and counters, or None if it has no workers. Never blocks for long."""
        group = self._manager.get_group(plugin_id)
        return None if group is None else group.get_stats()

    def get_code_capabilities(self, plugin_id: str) -> tuple[str, ...]:
        """The capabilities the plugin's code declares, as one of its workers reports them (valid names only;
        empty without a worker that answers). The host compares them with the manifest. Blocks briefly."""
        group = self._manager.get_group(plugin_id)
        if group is None:
            return ()
        with group.lock:
            handle = next(iter(group.workers), None)
        return self.supervisor.read_code_capabilities(handle) if handle is not None else ()

    def list_worker_pids(self, plugin_id: str, *, spares: bool = True) -> list[int]:
        """Pids of the plugin's live worker processes: every one (spares, and workers retiring until they
        exit), or with ``spares=False`` only those serving calls. For operators and tests; no side effects."""
        group = self._manager.get_group(plugin_id)
        if group is None:
            return []
        with group.lock:
            workers = (
                group.workers.values()
                if spares
                else [*group.idle, *(w for w in group.workers.values() if w.state is WorkerState.BUSY)]
            )
            return sorted(w.handle.pid for w in workers if w.handle.pid is not None and not w.handle.exited.is_set())

    def list_spare_pids(self, plugin_id: str) -> list[int]:
        """Pids of the plugin's warm spares. No side effects."""
        group = self._manager.get_group(plugin_id)
        if group is None:
            return []
        with group.lock:
            return sorted(w.handle.pid for w in group.spares if w.handle.pid is not None)
