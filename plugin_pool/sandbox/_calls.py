"""What crosses the boundary for the router (host side): encoding a call, and turning replies and lost
workers into results or precise errors. Pure functions and one record; no locks, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plugin_pool.errors import (
    CallTimeoutError,
    CapabilityDeniedError,
    MalformedReplyError,
    PayloadError,
    PluginCallError,
    PluginPoolError,
    ResourceLimitError,
    WorkerCrashedError,
)
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox.worker_client import WorkerHandle

__all__ = ["WorkerLoss", "encode", "outcome_value"]

_SIGXCPU = 24


def encode(
    plugin_id: str,
    encoder: Callable[[str, Any], bytes],
    capability: str,
    payload: Any,
    what: str,
    max_bytes: int,
    *,
    check_size: bool = True,
) -> bytes:
    """Encode in the host, so a payload that cannot cross the boundary fails before anything is sent.

    Raises PayloadError for a value that cannot cross, and (``check_size``) for data over ``max_bytes``."""
    try:
        data = encoder(capability, payload)
    except TypeError as exc:
        raise PayloadError(
            f"plugin {plugin_id!r}: the {what} cannot cross the sandbox boundary ({exc}); send "
            f"JSON-compatible values or bytes",
            plugin_id=plugin_id,
        ) from None
    if check_size and len(data) > max_bytes:
        raise PayloadError(
            f"plugin {plugin_id!r}: the {what} is {len(data)} bytes; the limit is {max_bytes} "
            f"(sandbox.max_message_mb){'; send smaller batches' if what == 'batch' else ''}",
            plugin_id=plugin_id,
        )
    return data


def outcome_value(plugin_id: str, capability: str, outcome: codec.Outcome, index: int | None, pid: int | None) -> Any:
    """The result of one call's outcome, or its error raised: what the worker reported, as our error types."""
    ok, value = outcome
    if ok:
        return value
    kind, type_name, message = value
    if kind == "resource_limit":
        # The worker caught a real MemoryError (RLIMIT_DATA); it is recycled once idle.
        raise ResourceLimitError(limit=type_name[:50] or "memory", plugin_id=plugin_id, pid=pid, capability=capability)
    if kind == "plugin_raised":
        raise PluginCallError(plugin_id, capability, type_name[:200] or "Exception", message[:2000], index=index)
    if kind in ("bad_payload", "bad_reply", "reply_too_large"):
        what = {
            "bad_payload": "the worker could not decode the payload",
            "bad_reply": "the plugin's result cannot cross the sandbox boundary",
            "reply_too_large": "the plugin's result is too large",
        }[kind]
        raise PayloadError(f"plugin {plugin_id!r}: {what}: {message[:500]}", plugin_id=plugin_id)
    if kind == "unknown_capability":
        raise CapabilityDeniedError(plugin_id, capability, ())
    raise MalformedReplyError(
        f"plugin {plugin_id!r}: the worker reported {kind[:50]!r}: {message[:500]}", plugin_id=plugin_id, pid=pid
    )


class WorkerLoss(Exception):
    """A worker was lost with frames in flight: ``kind`` is ``timeout`` (the deadline watch killed it),
    ``too_large`` (it broke the message limit) or ``died`` (crashed, killed, OOM, CPU limit; the exit
    report is in). ``error`` builds each caller's own error. Internal: callers never see it."""

    def __init__(self, handle: WorkerHandle, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.handle = handle
        self.kind = kind
        self.detail = detail

    def error(self, plugin_id: str, capability: str, timeout_s: float) -> PluginPoolError:
        """The precise error of one call that was on the lost worker. No side effects."""
        handle = self.handle
        if self.kind == "timeout":
            return CallTimeoutError(plugin_id, capability, timeout_s, pid=handle.pid)
        if self.kind == "too_large":
            return PayloadError(
                f"plugin {plugin_id!r}: the reply exceeds sandbox.max_message_mb ({self.detail})", plugin_id=plugin_id
            )
        if handle.exit_signal == _SIGXCPU:
            return ResourceLimitError(
                limit="cpu", plugin_id=plugin_id, pid=handle.pid, signal=handle.exit_signal, capability=capability
            )
        if handle.oom_killed:  # its memory cgroup was full: shared mappings, memfd or /tmp count there too
            return ResourceLimitError(
                limit="memory", plugin_id=plugin_id, pid=handle.pid, signal=handle.exit_signal, capability=capability
            )
        return WorkerCrashedError(
            plugin_id=plugin_id,
            pid=handle.pid,
            exit_code=handle.exit_code,
            signal=handle.exit_signal,
            capability=capability,
            detail=" | ".join(line for line in handle.exit_tail[-2:] if line.strip())[:300],
        )
