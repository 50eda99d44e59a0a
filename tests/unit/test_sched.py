"""The sandbox's one scheduler: actions in time order, cancelled ones dropped, a stop that drops the rest."""

from __future__ import annotations

import threading
import time

from plugin_pool.sandbox._sched import Scheduler


def test_actions_run_in_time_order_whatever_order_they_came_in() -> None:
    sched = Scheduler("test-sched")
    sched.start()
    ran: list[str] = []
    done = threading.Event()
    try:
        sched.enter(0.06, lambda: (ran.append("late"), done.set()))
        sched.enter(0.02, lambda: ran.append("early"))
        sched.enter(0.04, lambda: ran.append("middle"))
        assert done.wait(5)
    finally:
        sched.stop()
    assert ran == ["early", "middle", "late"]


def test_an_earlier_action_wakes_a_thread_sleeping_until_a_later_one() -> None:
    sched = Scheduler("test-sched")
    sched.start()
    done = threading.Event()
    try:
        sched.enter(30.0, lambda: None)
        time.sleep(0.02)  # the thread now sleeps for 30 s
        started = time.monotonic()
        sched.enter(0.01, done.set)
        assert done.wait(5)
        assert time.monotonic() - started < 2.0
    finally:
        sched.stop()


def test_a_cancelled_action_never_runs_and_a_failing_one_does_not_stop_the_rest() -> None:
    sched = Scheduler("test-sched")
    sched.start()
    ran: list[str] = []
    done = threading.Event()
    try:
        sched.enter(0.01, lambda: 1 / 0)
        task = sched.enter(0.02, lambda: ran.append("cancelled"))
        task.cancel()
        task.cancel()  # twice is fine
        sched.enter(0.03, lambda: (ran.append("after"), done.set()))
        assert done.wait(5)
    finally:
        sched.stop()
    assert ran == ["after"]


def test_stop_drops_what_has_not_run_and_is_idempotent() -> None:
    sched = Scheduler("test-sched")
    sched.start()
    ran: list[str] = []
    sched.enter(0.2, lambda: ran.append("never"))
    sched.stop()
    sched.stop()
    late = sched.enter(0.0, lambda: ran.append("after stop"))
    time.sleep(0.3)
    assert ran == [] and late.action is None
    assert not any(t.name == "test-sched" for t in threading.enumerate())
