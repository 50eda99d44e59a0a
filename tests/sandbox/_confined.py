"""The confined runner the sandbox tests share: start ``hostile/_runner.py`` in a fresh interpreter with a
ConfinementSpec, run one hostile action, read back its JSON lines. Every child is bounded by a timeout and
killed in a ``finally``. Fixtures using these are in conftest.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugin_pool.sandbox import _confine

RUNNER = Path(__file__).parent / "hostile" / "_runner.py"
REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
FULL_STACK = ("pdeathsig", "netns", "userns", "rlimits", "no_new_privs", "landlock", "seccomp")
# Layers the default runner profile leaves out: a uid of its own, cgroups, the zygote's PID namespace and a
# private root each have their own tests below (with the pool applying all of them in test_hostile_pool).
POOL_ONLY_LAYERS = ("uid", "cgroup", "pidns", "mountns")
CHILD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Dirs:
    base: Path
    plugin: Path
    temp: Path
    sock: Path
    outside: Path
    secret: Path


@dataclass(frozen=True)
class Run:
    returncode: int
    lines: list[dict[str, Any]]
    stderr: str

    def stage(self, name: str) -> dict[str, Any]:
        for line in self.lines:
            if line["stage"] == name:
                return line
        raise AssertionError(f"runner sent no {name!r} line; exit {self.returncode}; stderr:\n{self.stderr}")

    @property
    def result(self) -> dict[str, Any]:
        return dict(self.stage("result")["result"])

    @property
    def report(self) -> _confine.ConfinementReport:
        return _confine.ConfinementReport.from_dict(self.stage("confined")["report"])

    def error(self) -> dict[str, Any]:
        result = self.result
        assert "error" in result, f"the action succeeded: {result}"
        return dict(result["error"])


def make_spec(dirs: Dirs, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "temp_dir": str(dirs.temp),
        "socket_dir": str(dirs.sock),
        "read_only_paths": [str(dirs.plugin), str(REPO_ROOT / "plugin_pool"), str(RUNNER.parent)],
        "cpu_time_s": 20,
        "memory_mb": 512,
        "open_files": 64,
        "file_size_mb": 8,
        "user_namespace": True,
        "unshare_net": True,
        "required_layers": [name for name in _confine.ALL_LAYERS if name not in POOL_ONLY_LAYERS],
        "log_fd": 2,
    }
    spec.update(overrides)
    return spec


def runner_command(config: dict[str, Any], python: str) -> list[str]:
    return [python, "-I", str(RUNNER), json.dumps(config)]


def read_lines(fd: int) -> list[dict[str, Any]]:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def run_hostile(
    action: str,
    dirs: Dirs,
    arg: Any = None,
    *,
    spec: dict[str, Any] | None = None,
    python: str = sys.executable,
    sys_path: tuple[str, ...] = (),
    lock: bool = False,
    threads: int = 0,
) -> Run:
    """Run one action in a confined runner; returns its exit code, JSON lines and stderr."""
    read_fd, write_fd = os.pipe()
    config = {
        "spec": spec if spec is not None else make_spec(dirs),
        "action": action,
        "arg": arg,
        "result_fd": write_fd,
        "lock_sockets": lock,
        "threads": threads,
        "sys_path": list(sys_path),
    }
    try:
        with subprocess.Popen(
            runner_command(config, python),
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as proc:
            os.close(write_fd)
            write_fd = -1
            try:
                _, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"runner for {action!r} did not finish within {CHILD_TIMEOUT_S} s")
            finally:
                if proc.poll() is None:
                    proc.kill()
        return Run(proc.returncode, read_lines(read_fd), stderr.decode(errors="replace"))
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def assert_errno(run: Run, expected: int) -> None:
    error = run.error()
    assert error["errno"] == expected, f"expected {errno.errorcode[expected]}, got {error}; stderr:\n{run.stderr}"
