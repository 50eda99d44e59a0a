"""Load and chaos for a running host: many caller threads, every call accounted for, workers killed, leaks checked.

The one place the load tests (``tests/load``) and the soak script (``scripts/soak.py``) take their machinery
from; a scanning service's own load tests can use it the same way::

    from plugin_pool.testing.load import LoadDriver, ResourceSnapshot, echo_call, wait_for_no_leaks

    before = ResourceSnapshot.take()
    with PluginHost(config) as host:
        ...                                            # add and start plugins
        kinds = [echo_call(host, "hello", group="builtin"), echo_call(host, "scanner", group="untrusted",
                 errors=(WorkerCrashedError,), deadline_s=host.config.host.call_timeout_s)]
        report = LoadDriver(kinds, threads=8, calls=10_000).run()
    report.check()                                     # wrong results, imprecise errors, hangs, lost calls
    assert wait_for_no_leaks(before).leaks == []       # children, fds, sockets, temp dirs, threads

- :class:`LoadDriver` runs caller threads for a number of calls or a duration. Each call is one
  :class:`CallKind`: a function that makes the call, a check of its result, the precise errors it may
  raise and its deadline. Every call ends in exactly one of: ok, wrong result, precise error (counted by
  :func:`error_label`), unexpected error; a call slower than its deadline plus ``grace_s`` is also counted
  as overdue. :class:`LoadReport` holds the counts per kind and a :class:`LatencyHistogram` each
  (fixed memory, so a run of any length costs the same).
- :class:`ChaosMonkey` kills sandbox workers (and every so often the zygote) with SIGKILL from its own
  thread and counts what it killed, so a test can compare ``host.restarts`` with it exactly.
- :class:`ResourceSnapshot` and :func:`wait_for_no_leaks` compare this process before and after:
  child processes, file descriptors, open files, sockets, temporary directories, Python threads, memory.
- :func:`make_echo_plugin` (BuiltIn or Trusted, in-process) and :func:`write_load_plugin` (an Untrusted
  plugin folder) are plugins made for load: they echo, sleep, allocate or raise on request.

Nothing here reads the environment: scale factors and durations are the caller's (the tests read
``PLUGIN_POOL_LOAD_SCALE``, the soak script its command line).
"""

from __future__ import annotations

from plugin_pool.testing.load._calls import CallKind, KindReport, LoadReport, echo_call, error_label
from plugin_pool.testing.load._chaos import ChaosMonkey
from plugin_pool.testing.load._driver import LoadDriver
from plugin_pool.testing.load._histogram import LatencyHistogram, format_seconds
from plugin_pool.testing.load._plugins import make_echo_plugin, write_load_plugin
from plugin_pool.testing.load._resources import (
    DEFAULT_TEMP_PATTERNS,
    MIB,
    LeakReport,
    ResourceSnapshot,
    process_memory,
    wait_for_no_leaks,
)

__all__ = [
    "DEFAULT_TEMP_PATTERNS",
    "MIB",
    "CallKind",
    "ChaosMonkey",
    "KindReport",
    "LatencyHistogram",
    "LeakReport",
    "LoadDriver",
    "LoadReport",
    "ResourceSnapshot",
    "echo_call",
    "error_label",
    "format_seconds",
    "make_echo_plugin",
    "process_memory",
    "wait_for_no_leaks",
    "write_load_plugin",
]
