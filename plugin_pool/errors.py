"""One error hierarchy for plugin_pool: every class a caller can meet, all exported from ``plugin_pool``.

Every error derives from :class:`PluginPoolError` and carries the identifiers a caller needs
(plugin id, state, capability, worker pid) as attributes. Messages say what happened and what to do.
Timeouts also derive from :class:`TimeoutError` so ``except TimeoutError`` works.

Whether a failed call is safe to retry follows from its type (the README has the table):

- never ran: :class:`QueueTimeoutError` (waited for a worker past its deadline), :class:`PoolOverloadedError`,
  :class:`PluginNotActiveError`, :class:`HostClosedError` -- retry once the cause is gone;
- ran and was stopped: :class:`CallTimeoutError` (``started`` is True), :class:`WorkerCrashedError`,
  :class:`ResourceLimitError` -- the plugin may have had effects; retry only idempotent calls, and never
  a :class:`ResourceLimitError` unchanged (the same input hits the same limit).

::

    PluginPoolError
    ├── ConfigError (ValueError)
    ├── InvalidPluginError (ValueError)
    │   ├── ManifestError
    │   └── IntegrityError
    │       ├── IntegrityRejectedError
    │       ├── SignatureError
    │       └── ContentHashMismatchError
    ├── StagingError
    ├── VendorError
    ├── DuplicatePluginError, PluginNotFoundError (LookupError), IllegalTransitionError
    ├── PluginNotActiveError, PluginDisabledError, RequiredPluginError, HostClosedError
    ├── CapabilityDeniedError, TrustViolationError, ServiceNotAllowedError (PermissionError)
    ├── LifecycleError
    │   └── LifecycleTimeoutError (TimeoutError)
    ├── PluginCallError
    ├── CallTimeoutError (TimeoutError)
    │   └── QueueTimeoutError
    ├── PayloadError (TypeError)
    ├── RegistryError
    │   ├── RegistryConflictError
    │   └── RegistryUnavailableError
    └── SandboxError
        ├── WorkerCrashedError
        ├── ResourceLimitError
        ├── PoolOverloadedError
        ├── MalformedReplyError
        └── ConfinementUnavailableError
"""

from __future__ import annotations

import signal as _signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugin_pool.integrity import ContentHash
    from plugin_pool.lifecycle import PluginState

__all__ = [
    "CallTimeoutError",
    "CapabilityDeniedError",
    "ConfigError",
    "ConfinementUnavailableError",
    "ContentHashMismatchError",
    "DuplicatePluginError",
    "HostClosedError",
    "IllegalTransitionError",
    "IntegrityError",
    "IntegrityRejectedError",
    "InvalidPluginError",
    "LifecycleError",
    "LifecycleTimeoutError",
    "MalformedReplyError",
    "ManifestError",
    "PayloadError",
    "PluginCallError",
    "PluginDisabledError",
    "PluginNotActiveError",
    "PluginNotFoundError",
    "PluginPoolError",
    "PoolOverloadedError",
    "QueueTimeoutError",
    "RegistryConflictError",
    "RegistryError",
    "RegistryPermissionError",
    "RegistryUnavailableError",
    "RequiredPluginError",
    "ResourceLimitError",
    "SandboxError",
    "ServiceNotAllowedError",
    "SignatureError",
    "StagingError",
    "TrustViolationError",
    "VendorError",
    "WorkerCrashedError",
]


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


class ManifestError(InvalidPluginError):
    """A manifest is missing, unreadable or invalid; ``path`` names the file, ``field`` the key, ``reason``
    says what is wrong (the message without the path)."""

    def __init__(self, message: str, *, path: Path, field: str | None = None, plugin_id: str | None = None) -> None:
        super().__init__(f"{path}: {message}", plugin_id=plugin_id, field=field)
        self.path = path
        self.reason = message


class IntegrityError(InvalidPluginError):
    """A plugin folder cannot be hashed or staged, or a manifest or key file cannot be read.

    ``path`` names the file (in the plugin's own folder, never a private copy of it). ``kind`` says why
    for the errors of a plugin's content: ``hash_mismatch``, ``signature`` or one of REJECTION_KINDS
    (None for a key or manifest file read outside a plugin's content).
    """

    kind: str | None = None

    def __init__(
        self, message: str, *, path: Path | str, plugin_id: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(f"{path}: {message}", plugin_id=plugin_id, field=field)
        self.path = Path(path)


REJECTION_KINDS = (
    "symlink",
    "special_file",
    "bytecode",
    "file_too_large",
    "folder_too_large",
    "too_many_files",
    "too_deep",
    "manifest",
    "unreadable",
)
"""The ``kind`` of an IntegrityRejectedError: a symlink, a fifo/socket/device, sourceless bytecode, a file or
the folder over its size limit, more entries or deeper folders than allowed, a manifest that cannot be
canonicalized, and a file or folder that cannot be read (or changed from a folder to a file while read)."""


class IntegrityRejectedError(IntegrityError):
    """A plugin folder holds something a plugin folder may not hold, or more than the limits allow.

    Raised while hashing or staging the folder, before anything of it runs. ``folder`` is the plugin's
    own folder, ``file`` the offending path relative to it (``""`` for the folder itself), ``kind`` one of
    REJECTION_KINDS, ``reason`` what was found and ``fix`` what to do. The host audits it as
    ``integrity_rejected`` and counts it in ``plugin_integrity_rejections_total{kind}``.
    """

    kind: str

    def __init__(
        self, *, folder: Path | str, file: str, kind: str, reason: str, fix: str, plugin_id: str | None = None
    ) -> None:
        if kind not in REJECTION_KINDS:
            raise ValueError(f"unknown integrity rejection kind {kind!r}; expected one of {REJECTION_KINDS}")
        who = f"plugin {plugin_id!r}: " if plugin_id else ""
        super().__init__(
            f"{who}{reason}; {fix}", path=Path(folder) / file if file else Path(folder), plugin_id=plugin_id
        )
        self.folder = Path(folder)
        self.file = file
        self.kind = kind
        self.reason = reason
        self.fix = fix


class SignatureError(IntegrityError):
    """A plugin's signature is missing or does not verify.

    ``reason`` is one of ``unsigned``, ``malformed``, ``algorithm``, ``unknown_key``, ``bad_signature``,
    ``content_changed``; ``key_id`` names the signing key when the signature names one.
    """

    kind = "signature"

    def __init__(
        self,
        message: str,
        *,
        path: Path | str,
        reason: str,
        key_id: str | None = None,
        plugin_id: str | None = None,
    ) -> None:
        super().__init__(message, path=path, plugin_id=plugin_id, field="signature")
        self.reason = reason
        self.key_id = key_id


class ContentHashMismatchError(IntegrityError):
    """A plugin's files differ from the content hash recorded when it was registered.

    ``plugin_id`` names the plugin, ``path`` its folder (not a private copy), ``changes`` what differs
    (``"changed: x.py"``, ``"added: y"``, ``"removed: z"``), ``expected`` and ``actual`` the two hashes.
    The host audits it as ``hash_mismatch``.
    """

    kind = "hash_mismatch"

    def __init__(self, plugin_id: str, path: Path, expected: ContentHash, actual: ContentHash) -> None:
        changes = expected.diff(actual)
        shown = ", ".join(changes[:10]) + (f" and {len(changes) - 10} more" if len(changes) > 10 else "")
        super().__init__(
            f"content hash mismatch for plugin {plugin_id!r}: {shown or 'the content differs'} since it was "
            f"registered (expected {expected.digest}, found {actual.digest}); the plugin's files changed after "
            f"discovery: restore them, or re-run discovery and publish a new version",
            path=path,
            plugin_id=plugin_id,
            field="content_hash",
        )
        self.changes = changes
        self.expected = expected
        self.actual = actual


class StagingError(PluginPoolError):
    """The host could not write the private copy of a plugin folder (disk full, permissions): nothing the
    plugin did. ``path`` names the plugin's folder."""

    def __init__(self, message: str, *, plugin_id: str | None = None, path: Path | str | None = None) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.path = Path(path) if path is not None else None


class VendorError(PluginPoolError):
    """``plugin-pool vendor`` could not install a plugin's ``[python] requirements`` into its folder (pip
    refused them, a hash did not match, no wheel for this platform) or the result cannot run as a plugin
    folder. ``path`` names the plugin's folder; the folder keeps what it had before."""

    def __init__(self, message: str, *, plugin_id: str | None = None, path: Path | str | None = None) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.path = Path(path) if path is not None else None


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
    """A call did not finish within its deadline.

    ``started`` says whether the plugin's code began to run. This class itself means it did: the call ran
    and was stopped (an ``async def`` coroutine cancelled; a sandbox worker killed -- ``pid`` -- and
    replaced), so the plugin may have had effects and a retry is safe only for idempotent calls. A call
    that never started raises the subclass :class:`QueueTimeoutError` (``started`` False), safe to retry.
    """

    started: bool = True

    def __init__(
        self, plugin_id: str, capability: str, timeout_s: float, *, pid: int | None = None, message: str | None = None
    ) -> None:
        killed = f"; worker pid {pid} was killed and is being replaced" if pid is not None else ""
        super().__init__(
            message or f"plugin {plugin_id!r}: call to {capability!r} did not finish within {timeout_s:g} s{killed}",
            plugin_id=plugin_id,
        )
        self.capability = capability
        self.timeout_s = timeout_s
        self.pid = pid


class QueueTimeoutError(CallTimeoutError):
    """The call's deadline passed while it waited for a worker (or a dispatcher thread): it never started.

    Nothing of the plugin ran, so a retry is safe; the plugin was busy (raise ``max_workers`` or the
    deadline, or send less). ``started`` is False; ``waited_s`` is how long it waited.
    """

    started = False

    def __init__(self, plugin_id: str, capability: str, timeout_s: float, *, waited_s: float | None = None) -> None:
        waited = timeout_s if waited_s is None else waited_s
        super().__init__(
            plugin_id,
            capability,
            timeout_s,
            message=(
                f"plugin {plugin_id!r}: call to {capability!r} waited {waited:.3g} s for a free worker and never "
                f"started (deadline {timeout_s:g} s); it is safe to retry; raise the plugin's max_workers or the "
                f"timeout if this recurs"
            ),
        )
        self.waited_s = waited


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
        how = _describe_exit(exit_code, signal)
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


class ResourceLimitError(SandboxError):
    """The worker hit a resource limit; ``limit`` names it (``cpu``, ``memory``, ``file_size``, ...).

    A sibling of :class:`WorkerCrashedError`, not a kind of it: a retry-on-crash handler must not resend a
    call that will hit the same limit again. A CPU limit kills the worker (SIGXCPU; ``signal`` is set); a
    memory limit fails the allocation, and the worker, still alive, is recycled once idle. Either way the
    call failed and the worker is replaced.
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
        during = f" during {capability!r}" if capability else ""
        how = f" ({_describe_exit(exit_code, signal)})" if signal is not None or exit_code is not None else ""
        fix = f" (raise sandbox.{limit}_mb if the plugin needs more)" if limit == "memory" else ""
        super().__init__(
            f"plugin {plugin_id!r}: worker pid {pid} reached its {limit} limit{during}{how}; the call failed and "
            f"the worker is being replaced; resending the same input will hit the limit again{fix}",
            plugin_id=plugin_id,
            pid=pid,
        )
        self.limit = limit
        self.exit_code = exit_code
        self.signal = signal
        self.capability = capability


class PoolOverloadedError(SandboxError):
    """Every worker of the plugin is busy and the wait queue is full; retry later or raise pool limits."""


class MalformedReplyError(SandboxError):
    """The worker answered with something the protocol does not allow."""


class ConfinementUnavailableError(SandboxError):
    """The sandbox cannot confine workers as far as the configured minimum requires."""


def _describe_exit(exit_code: int | None, signal: int | None) -> str:
    """How a worker process ended, in words: ``killed by signal SIGKILL (9)``, ``exited with code 3``."""
    if signal is not None:
        try:
            return f"killed by signal {_signal.Signals(signal).name} ({signal})"
        except ValueError:
            return f"killed by signal {signal}"
    if exit_code is not None:
        return f"exited with code {exit_code}"
    return "died"
