"""One error taxonomy: every class in errors.py, every one exported from plugin_pool, retry-safety by type."""

from __future__ import annotations

import inspect
import signal

import pytest

import plugin_pool
import plugin_pool.discovery
import plugin_pool.integrity
import plugin_pool.manifest
from plugin_pool import errors
from plugin_pool.errors import (
    CallTimeoutError,
    PluginPoolError,
    QueueTimeoutError,
    ResourceLimitError,
    SandboxError,
    WorkerCrashedError,
)

ERROR_CLASSES = {
    name: obj
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, PluginPoolError) and obj.__module__ == errors.__name__
}


def test_errors_all_is_every_class_defined_there() -> None:
    assert sorted(errors.__all__) == sorted(ERROR_CLASSES)


@pytest.mark.parametrize("name", sorted(ERROR_CLASSES))
def test_every_error_is_exported_from_the_package(name: str) -> None:
    assert name in plugin_pool.__all__
    assert getattr(plugin_pool, name) is ERROR_CLASSES[name]


def test_no_plugin_pool_error_is_defined_outside_errors_py_that_callers_can_meet() -> None:
    # The old homes still offer the names, as the very same classes.
    assert plugin_pool.manifest.ManifestError is errors.ManifestError
    assert plugin_pool.integrity.IntegrityError is errors.IntegrityError
    assert plugin_pool.integrity.SignatureError is errors.SignatureError
    assert plugin_pool.discovery.ContentHashMismatchError is errors.ContentHashMismatchError


def test_a_resource_limit_is_not_a_crash() -> None:
    # A retry-on-crash handler must not resend a call that hits the same limit again.
    assert not issubclass(ResourceLimitError, WorkerCrashedError)
    assert issubclass(ResourceLimitError, SandboxError)
    cpu = ResourceLimitError(limit="cpu", plugin_id="p", pid=7, signal=int(signal.SIGXCPU), capability="scan")
    assert (cpu.limit, cpu.pid, cpu.signal, cpu.capability) == ("cpu", 7, signal.SIGXCPU, "scan")
    assert "SIGXCPU" in str(cpu) and "hit the limit again" in str(cpu)
    memory = ResourceLimitError(limit="memory", plugin_id="p", pid=7)
    assert "raise sandbox.memory_mb" in str(memory)


def test_a_call_that_never_started_is_told_apart_from_one_that_was_stopped() -> None:
    ran = CallTimeoutError("p", "scan", 2.0, pid=41)
    queued = QueueTimeoutError("p", "scan", 2.0, waited_s=2.0)
    assert ran.started is True and queued.started is False
    assert isinstance(queued, CallTimeoutError) and isinstance(queued, TimeoutError)
    assert "worker pid 41 was killed" in str(ran)
    assert "never started" in str(queued) and "safe to retry" in str(queued)
    assert (queued.plugin_id, queued.capability, queued.timeout_s, queued.pid) == ("p", "scan", 2.0, None)


def test_every_timeout_is_a_timeout_error() -> None:
    timeouts = [cls for cls in ERROR_CLASSES.values() if "Timeout" in cls.__name__]
    assert timeouts and all(issubclass(cls, TimeoutError) for cls in timeouts)
