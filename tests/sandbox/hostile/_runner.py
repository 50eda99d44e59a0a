"""Run one hostile action inside a confined process; used by tests/sandbox/test_confine.py.

Usage: python -I _runner.py '<json config>'. The config holds the ConfinementSpec (as ``to_dict``),
the action name and argument, and the fd of a pipe the test owns. The runner writes JSON lines to
that pipe only, so nothing the action prints to stdout or stderr can be taken for a result:

    {"stage": "confined", "pid": ..., "report": {...}}     or     {"stage": "refused", "layer": ..., ...}
    {"stage": "result", "result": {...}}   (the action's return value, or {"error": {...}})

Everything the runner and the actions need is imported before confinement.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from typing import Any

_SANDBOX_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REPO_ROOT = os.path.dirname(os.path.dirname(_SANDBOX_TESTS))


def _write(fd: int, payload: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(payload) + "\n").encode())


def main() -> int:
    config = json.loads(sys.argv[1])
    for entry in [*config.get("sys_path", []), _REPO_ROOT, _SANDBOX_TESTS]:
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from hostile import ACTIONS, Context
    from plugin_pool.sandbox import _confine

    result_fd = int(config["result_fd"])
    spec_data = dict(config["spec"])
    spec_data["read_only_paths"] = _confine.default_read_only_paths(*spec_data.get("read_only_paths", ()))
    spec_data["keep_fds"] = [result_fd]
    spec = _confine.ConfinementSpec.from_dict(spec_data)
    action = ACTIONS[config["action"]]

    # Threads started before confinement, to prove confine_self refuses a multi-threaded process.
    release = threading.Event()
    extra = [threading.Thread(target=release.wait, args=(10,), daemon=True) for _ in range(config.get("threads", 0))]
    for thread in extra:
        thread.start()
    host_pid = _confine.get_host_pid()  # before a private root replaces /proc
    try:
        report = _confine.confine_self(spec, parent_pid=os.getppid())
    except _confine.ConfinementError as exc:
        release.set()
        _write(result_fd, {"stage": "refused", "layer": exc.layer, "reason": exc.reason, "message": str(exc)})
        return 3
    if config.get("lock_sockets"):
        report = _confine.lock_sockets(spec, report)
    _write(result_fd, {"stage": "confined", "pid": os.getpid(), "host_pid": host_pid, "report": report.to_dict()})

    ctx = Context(
        spec=spec, report=report, lock_sockets=lambda: _confine.lock_sockets(spec, report), result_fd=result_fd
    )
    try:
        result = action(config.get("arg"), ctx)
    except BaseException as exc:  # report anything, even MemoryError or SystemExit, as data
        result = {
            "error": {
                "type": type(exc).__name__,
                "errno": getattr(exc, "errno", None),
                "message": str(exc),
                "traceback": traceback.format_exc(limit=3),
            }
        }
    _write(result_fd, {"stage": "result", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
