"""Calls waiting for a worker and riding together in one frame (host side): the records, and what each call
of a batch gets when its worker is lost. No locks, no I/O: the router (``pool``) drives them.

A batch is the oldest waiting call (the leader, which owns the worker) and the calls behind it that fit in
one frame (riders). When its worker is lost, the call that caused the loss gets the error: the one whose
deadline passed, or the one the worker died in (its progress cell says which). With ``on_crash =
"isolate"`` every other call runs once more, alone, if it has time left (so a call runs at most twice:
it may have run before the worker died); with ``"fail"`` each gets the error of the loss.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from plugin_pool.errors import CallTimeoutError
from plugin_pool.sandbox._calls import WorkerLoss
from plugin_pool.sandbox.workers import Worker

__all__ = ["PENDING", "RERUN_MIN_SHARE", "Call", "Rerun", "lost_batch_outcomes", "not_run", "worth_rerun"]

RERUN_MIN_SHARE = 0.1
"""A call of a lost batch runs again only while at least this share of its timeout is left."""
PENDING: Any = object()
"""A rider's outcome until its leader delivers one."""
_CALL_KINDS = (b"J", b"R")


@dataclass(eq=False, slots=True)
class Call:
    """One frame's worth of work for a worker: a call (which may lead or ride in a batch) or a chunk."""

    data: bytes
    capability: str
    deadline: float
    timeout_s: float
    cond: threading.Condition
    solo: bool = False
    """Never batched: a chunk of invoke_many, or a call run again alone after a batch was lost."""
    worker: Worker | None = None
    riders: list[Call] | None = None
    outcome: Any = PENDING
    """For a rider: its (ok, value), an exception to raise, or a Rerun."""

    @property
    def is_call(self) -> bool:
        """Whether it is a call (not a chunk): a call run again goes to the front of the line."""
        return self.data[:1] in _CALL_KINDS


@dataclass(frozen=True, slots=True)
class Rerun:
    """The batch a call rode in was lost: run it again alone, or raise ``error`` if too little time is left."""

    error: BaseException


def not_run(outcome: Any) -> bool:
    """Whether a worker answered that it did not run the call (an earlier one hit its memory limit)."""
    ok, value = outcome
    return not ok and value[0] == "not_run"


def worth_rerun(deadline: float, timeout_s: float) -> bool:
    """Whether a call of a lost batch has time enough left to run again alone."""
    return deadline - time.monotonic() >= RERUN_MIN_SHARE * timeout_s


def lost_batch_outcomes(plugin_id: str, batch: list[Call], loss: WorkerLoss, on_crash: str) -> tuple[list[Any], int]:
    """What each call of a lost batch gets (an error, or a Rerun), and the index of the error to report."""
    errors: list[Any] = [loss.error(plugin_id, c.capability, c.timeout_s) for c in batch]
    isolate = len(batch) > 1 and on_crash == "isolate" and loss.kind in ("died", "timeout")
    if not isolate:
        return errors, 0
    progress = loss.handle.progress_at_exit
    culprit: int | None = None
    if loss.kind == "timeout":  # the deadline that fired: the earliest of the batch
        culprit = min(range(len(batch)), key=lambda n: batch[n].deadline)
    elif 1 <= progress <= len(batch):
        culprit = progress - 1
    outcomes = [
        error
        if n == culprit
        # Not the cause: without time to run again, a plain timeout (its own worker was not killed for it).
        else Rerun(error if culprit is None else CallTimeoutError(plugin_id, c.capability, c.timeout_s))
        for n, (c, error) in enumerate(zip(batch, errors, strict=True))
    ]
    return outcomes, 0 if culprit is None else culprit
