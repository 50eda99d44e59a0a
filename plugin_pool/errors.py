"""One error hierarchy for plugin_pool.

Every error derives from :class:`PluginPoolError` and carries the identifiers a caller needs
(plugin id, state, capability) as attributes. Messages say what happened and what to do.
Timeouts also derive from :class:`TimeoutError` so ``except TimeoutError`` works.
"""

from __future__ import annotations

import signal as _signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugin_pool.lifecycle import PluginState


class PluginPoolError(Exception):
    """Base class of every error plugin_pool raises."""

    plugin_id: str | None = None

    def __init__(self, message: str, *, plugin_id: str | None = None) -> None:
        super().__init__(message)
        self.plugin_id = plugin_id


class ConfigError(PluginPoolError, ValueError):
    """A configuration value is invalid; names the key, the source (file or variable) and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


class InvalidPluginError(PluginPoolError, ValueError):
    """A plugin's metadata or shape is invalid (bad id, missing method, bad capability).

    ``field`` names the offending field when there is one.
    """

    def __init__(self, message: str, *, plugin_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.field = field


class DuplicatePluginError(PluginPoolError):
    """A plugin with this id is already added to the host."""


class PluginNotFoundError(PluginPoolError, LookupError):
    """No plugin with this id is known to the host or registry."""


class IllegalTransitionError(PluginPoolError):
    """A lifecycle move that the transition table does not allow."""

    def __init__(self, source: PluginState, target: PluginState, *, plugin_id: str | None = None) -> None:
        who = f"plugin {plugin_id!r}" if plugin_id else "a plugin"
        super().__init__(
            f"{who} cannot move from {source.value} to {target.value}: "
            f"that transition is not in the lifecycle table (see plugin_pool.lifecycle.TRANSITIONS)",
            plugin_id=plugin_id,
        )
        self.source = source
        self.target = target


class PluginNotActiveError(PluginPoolError):
    """The plugin exists but is not Active, so it receives no work; ``state`` and ``reason`` say why."""

    def __init__(self, plugin_id: str, state: PluginState, reason: str | None = None) -> None:
        detail = f"{state.value}: {reason}" if reason else state.value
        super().__init__(
            f"plugin {plugin_id!r} is not active (state: {detail}); check host.get_health() "
            f"or the audit trail for why, fix the plugin and restart it",
            plugin_id=plugin_id,
        )
        self.state = state
        self.reason = reason


class PluginDisabledError(PluginPoolError):
    """An operator disabled the plugin in the shared registry, so no host starts it until it is enabled."""

    def __init__(self, plugin_id: str, reason: str | None = None) -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"plugin {plugin_id!r} is disabled in the registry{detail}; enable it with "
            f"`plugin-pool registry enable {plugin_id}` (or registry.set_enabled) to start it",
            plugin_id=plugin_id,
        )
        self.reason = reason


class CapabilityDeniedError(PluginPoolError, PermissionError):
    """A call to a capability the plugin did not declare. The denial is audited."""

    def __init__(self, plugin_id: str, capability: str, declared: tuple[str, ...]) -> None:
        super().__init__(
            f"plugin {plugin_id!r} did not declare capability {capability!r} "
            f"(declared: {', '.join(declared) or 'none'}); the call was refused and audited",
            plugin_id=plugin_id,
        )
        self.capability = capability
        self.declared = declared


class TrustViolationError(PluginPoolError, PermissionError):
    """An operation that the plugin's trust level forbids (for example Untrusted code in-process)."""


class ServiceNotAllowedError(PluginPoolError, PermissionError):
    """A plugin asked its context for a host service it is not allowed to use."""

    def __init__(self, plugin_id: str, service: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"plugin {plugin_id!r} may not use host service {service!r} "
            f"(allowed: {', '.join(allowed) or 'none'}); list it under services in the plugin's "
            f"configuration to allow it",
            plugin_id=plugin_id,
        )
        self.service = service
        self.allowed = allowed


class LifecycleError(PluginPoolError):
    """A lifecycle step (initialize, start, stop) raised; the plugin moved to Failed."""

    def __init__(self, message: str, *, plugin_id: str, step: str) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.step = step


class LifecycleTimeoutError(LifecycleError, TimeoutError):
    """A lifecycle step did not finish within its timeout; the plugin moved to Failed."""

    def __init__(self, *, plugin_id: str, step: str, timeout_s: float) -> None:
        super().__init__(
            f"plugin {plugin_id!r}: {step} timed out after {timeout_s:g} s; raise "
            f"lifecycle.{step}_timeout_s if the plugin needs longer",
            plugin_id=plugin_id,
            step=step,
        )
        self.timeout_s = timeout_s


class PluginCallError(PluginPoolError):
    """The plugin's capability method raised. ``remote_type`` and ``remote_message`` describe what it raised.

    In-process plugins chain the original exception as ``__cause__``; sandboxed plugins send the type name
    and message as data (never a pickle). ``index`` is set for the failing item of a batched call.
    """

    def __init__(
        self,
        plugin_id: str,
        capability: str,
        remote_type: str,
        remote_message: str,
        *,
        index: int | None = None,
    ) -> None:
        where = f" (batch item {index})" if index is not None else ""
        super().__init__(
            f"plugin {plugin_id!r} raised {remote_type} in {capability!r}{where}: {remote_message}",
            plugin_id=plugin_id,
        )
        self.capability = capability
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.index = index


class CallTimeoutError(PluginPoolError, TimeoutError):
    """A call did not finish within its deadline."""

    def __init__(self, plugin_id: str, capability: str, timeout_s: float, *, pid: int | None = None) -> None:
        killed = f"; worker pid {pid} was killed and is being replaced" if pid is not None else ""
        super().__init__(
            f"plugin {plugin_id!r}: call to {capability!r} did not finish within {timeout_s:g} s{killed}",
            plugin_id=plugin_id,
        )
        self.capability = capability
        self.timeout_s = timeout_s
        self.pid = pid


class HostClosedError(PluginPoolError):
    """The host is not open (not opened yet, or already closed)."""


class RegistryError(PluginPoolError):
    """The registry could not complete an operation."""


class RegistryConflictError(RegistryError):
    """A compare-and-set status change found another state than the one expected."""

    def __init__(self, plugin_id: str, expected: PluginState, actual: PluginState) -> None:
        super().__init__(
            f"plugin {plugin_id!r}: expected state {expected.value} but the registry holds "
            f"{actual.value}; another actor changed it, re-read and retry",
            plugin_id=plugin_id,
        )
        self.expected = expected
        self.actual = actual


class RegistryUnavailableError(RegistryError, ConnectionError):
    """The registry database cannot be reached; ``host`` and ``port`` say where it was expected."""

    def __init__(self, message: str, *, host: str, port: str, plugin_id: str | None = None) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.host = host
        self.port = port


class RegistryPermissionError(RegistryError, PermissionError):
    """The database refused the registry's role an operation: ``role`` lacks ``grant`` on ``object``.

    The message is one line naming the three and pointing at docs/OPERATIONS.md.
    """

    def __init__(self, message: str, *, role: str, object: str, grant: str) -> None:
        super().__init__(message)
        self.role = role
        self.object = object
        self.grant = grant


class RequiredPluginError(PluginPoolError):
    """A plugin a module requires is not active."""


class PayloadError(PluginPoolError, TypeError):
    """A payload (or a result) cannot cross the sandbox boundary: not JSON-compatible, or too large."""


class SandboxError(PluginPoolError):
    """Something went wrong in the sandbox around an Untrusted plugin's call. ``pid`` names the worker."""

    def __init__(self, message: str, *, plugin_id: str | None = None, pid: int | None = None) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.pid = pid


class WorkerCrashedError(SandboxError):
    """The worker process serving a call died. ``exit_code`` or ``signal`` says how."""

    def __init__(
        self,
        *,
        plugin_id: str,
        pid: int | None,
        exit_code: int | None = None,
        signal: int | None = None,
        capability: str | None = None,
        detail: str = "",
    ) -> None:
        if signal is not None:
            try:
                how = f"killed by signal {_signal.Signals(signal).name} ({signal})"
            except ValueError:
                how = f"killed by signal {signal}"
        elif exit_code is not None:
            how = f"exited with code {exit_code}"
        else:
            how = "died"
        during = f" during {capability!r}" if capability else ""
        super().__init__(
            f"plugin {plugin_id!r}: worker pid {pid} {how}{during}{': ' + detail if detail else ''}; "
            f"the call failed and the worker is being replaced",
            plugin_id=plugin_id,
            pid=pid,
        )
        self.exit_code = exit_code
        self.signal = signal
        self.capability = capability


class ResourceLimitError(WorkerCrashedError):
    """The worker hit a resource limit; ``limit`` names it (``cpu``, ``memory``, ``file_size``, ...).

    A CPU limit kills the worker (SIGXCPU); a memory limit fails the allocation, and the worker, which
    is still alive, is recycled once idle. Either way the call failed and the worker is replaced.
    """

    def __init__(
        self,
        *,
        limit: str,
        plugin_id: str,
        pid: int | None,
        exit_code: int | None = None,
        signal: int | None = None,
        capability: str | None = None,
    ) -> None:
        super().__init__(
            plugin_id=plugin_id,
            pid=pid,
            exit_code=exit_code,
            signal=signal,
            capability=capability,
            detail=f"its {limit} limit was exceeded",
        )
        if exit_code is None and signal is None:
            during = f" during {capability!r}" if capability else ""
            self.args = (
                f"plugin {plugin_id!r}: worker pid {pid} reached its {limit} limit{during}; the call failed "
                f"and the worker is being replaced (raise sandbox.{limit}_mb if the plugin needs more)"
                if limit == "memory"
                else f"plugin {plugin_id!r}: worker pid {pid} reached its {limit} limit{during}; the call "
                f"failed and the worker is being replaced",
            )
        self.limit = limit


class PoolOverloadedError(SandboxError):
    """Every worker of the plugin is busy and the wait queue is full; retry later or raise pool limits."""


class MalformedReplyError(SandboxError):
    """The worker answered with something the protocol does not allow."""


class ConfinementUnavailableError(SandboxError):
    """The sandbox cannot confine workers as far as the configured minimum requires."""
