"""The worker side imports nothing of the host: checked at run time, in a fresh interpreter.

import-linter checks the static imports (setup.cfg); this catches what a lazy import or a package
``__init__`` would drag in when the zygote actually loads the worker code.
"""

from __future__ import annotations

import json
import subprocess
import sys

HOST_ONLY = (
    "plugin_pool.host",
    "plugin_pool.registry",
    "plugin_pool.config",
    "plugin_pool.sandbox.pool",
    "plugin_pool.sandbox._chunks",
    "plugin_pool.sandbox._batches",
    "plugin_pool.sandbox._exchange",
    "plugin_pool.sandbox._deadlines",
    "plugin_pool.sandbox.manager",
    "plugin_pool.sandbox.workers",
    "plugin_pool.sandbox.supervisor",
    "plugin_pool.sandbox._checks",
    "plugin_pool.sandbox.host_services",
    "plugin_pool.sandbox.zygote_client",
    "plugin_pool.sandbox.staging",
    "plugin_pool.sandbox.resources",
    "plugin_pool.sandbox.confinement",
    "plugin_pool.sandbox._calls",
    "plugin_pool.sandbox.worker_client",
    "plugin_pool.sandbox._sched",
    "plugin_pool.testing",
    "plugin_pool.cli",
    "psycopg",
    "psycopg_pool",
    "prometheus_client",
    "psutil",
    "pythonjsonlogger",
)


def _modules_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(out.stdout))


def test_the_zygote_and_worker_modules_load_nothing_of_the_host() -> None:
    loaded = _modules_after("import plugin_pool.sandbox._zygote, plugin_pool.sandbox._worker")
    assert "plugin_pool.sandbox._worker" in loaded
    assert "grpc" in loaded  # the worker does serve gRPC
    assert [m for m in loaded if m.startswith(HOST_ONLY)] == []


def test_the_confinement_modules_load_neither_grpc_nor_orjson() -> None:
    loaded = _modules_after("import plugin_pool.sandbox._confine")
    assert [m for m in loaded if m.startswith((*HOST_ONLY, "grpc", "orjson"))] == []
