"""Tiny hostile plugins: one action per behaviour the sandbox must stop (or, for controls, allow).

Each action takes ``(arg, ctx)`` and returns a JSON-able dict; an exception is reported by the runner
as ``{"error": {"type", "errno", "message"}}``. Actions never signal or trace anything but the runner's
own parent with signal 0 / an immediate detach, and only ever address 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hostile import filesystem, neighbours, network, processes, resources


@dataclass(frozen=True)
class Context:
    """What an action may use besides its argument."""

    spec: Any
    report: Any
    lock_sockets: Callable[[], Any]
    result_fd: int = -1
    """The pipe results go to: an action may write an early JSON line of its own (a ``stage`` of its own)."""


Action = Callable[[Any, Context], dict[str, Any]]

ACTIONS: dict[str, Action] = {}
for _module in (filesystem, neighbours, network, processes, resources):
    for _name in _module.__all__:
        ACTIONS[_name] = getattr(_module, _name)
