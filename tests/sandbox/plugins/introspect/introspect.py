"""Reports the confinement it runs under, read from inside the worker (no /proc reads)."""

from __future__ import annotations

import ctypes
import os
import resource
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_libc = ctypes.CDLL(None, use_errno=True)
_PR_GET_SECCOMP = 21
_PR_GET_NO_NEW_PRIVS = 39


class Introspect(PluginBase):
    info = PluginInfo(id="introspect", name="Introspect", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def inspect(self, payload: Any) -> dict[str, Any]:
        limits = {
            name: list(resource.getrlimit(getattr(resource, name)))
            for name in ("RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE")
        }
        try:
            os.listdir("/")
            root_listing = "allowed"
        except OSError as exc:
            root_listing = f"errno {exc.errno}"
        return {
            "no_new_privs": _libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
            "seccomp_mode": _libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0),
            "rlimits": limits,
            "root_listing": root_listing,
        }

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
