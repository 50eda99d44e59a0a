"""Helpers of the load tests: hosts with fast test settings, and a throwaway PostgreSQL cluster.

The load, chaos and leak machinery itself is :mod:`plugin_pool.testing.load` (shared with scripts/soak.py).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugin_pool import Config, PluginHost, load_config

FAST_SANDBOX: Mapping[str, Any] = {
    "recycle_jitter": 0.0,
    # Only the chaos decides when workers go: no recycling by calls or age during a test.
    "recycle_after_calls": 10_000_000,
    "recycle_after_s": 100_000.0,
    # Kills are not a crash loop here: a high limit, a short window, a short backoff.
    "crash_limit": 10_000,
    "crash_window_s": 1.0,
    "restart_backoff_s": 0.005,
    "restart_backoff_max_s": 0.05,
    "boot_timeout_s": 10.0,
}
CALL_TIMEOUT_S = 5.0


def load_config_for_tests(*, registry: Mapping[str, Any] | None = None, **sandbox: Any) -> Config:
    """The load tests' configuration: :data:`FAST_SANDBOX` plus ``sandbox`` overrides, a 5 s call deadline."""
    overrides: dict[str, Any] = {
        "sandbox": {**FAST_SANDBOX, **sandbox},
        "host": {"call_timeout_s": CALL_TIMEOUT_S},
    }
    if registry is not None:
        overrides["registry"] = dict(registry)
    return load_config(overrides=overrides)


def new_host(config: Config | None = None, **sandbox: Any) -> PluginHost:
    """An open host with ``config`` (default :func:`load_config_for_tests` with ``sandbox`` overrides)."""
    return PluginHost(config or load_config_for_tests(**sandbox)).open()


def scaled(n: float, scale: float, *, minimum: int = 1) -> int:
    """``n`` times the load scale, as a whole number (at least ``minimum``)."""
    return max(minimum, round(n * scale))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """A throwaway PostgreSQL cluster: ``initdb`` in a temp dir, ``pg_ctl start``/``stop`` on a free loopback
    port (the same port across restarts), as the ``postgres`` OS user when this process is root (PostgreSQL
    refuses to run as root). ``destroy`` stops it and removes the directory. Every command is bounded."""

    COMMAND_TIMEOUT_S = 60.0

    def __init__(self) -> None:
        bindir = self.find_bindir()
        assert bindir is not None, self.find_problem()
        self.bindir = bindir
        self.runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.directory: Path | None = None
        self.port = free_port()
        self.running = False

    @staticmethod
    def find_bindir() -> Path | None:
        """The directory of initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
        on_path = shutil.which("initdb")
        if on_path and shutil.which("pg_ctl"):
            return Path(os.path.realpath(on_path)).parent
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        return Path(candidates[-1]).parent if candidates else None

    @classmethod
    def find_problem(cls) -> str | None:
        """Why no cluster can be made here (None when one can)."""
        bindir = cls.find_bindir()
        if bindir is None or not (bindir / "pg_ctl").exists():
            return "initdb and pg_ctl were not found (on PATH or in /usr/lib/postgresql/*/bin)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no 'postgres' user to run PostgreSQL as"
            if shutil.which("runuser") is None:
                return "running as root, and runuser (to run PostgreSQL as 'postgres') was not found"
        return None

    @property
    def dsn(self) -> str:
        """The connection string of the ``postgres`` database over TCP on 127.0.0.1."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create(self) -> None:
        """initdb a new cluster in a new temp dir (trust authentication, no fsync). Blocks ~1-2 s."""
        self.directory = Path(tempfile.mkdtemp(prefix="plugin-pool-load-pg-"))
        if self.runas:
            shutil.chown(self.directory, "postgres")
        self._run(
            "initdb", "-D", str(self.directory / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections. Blocks."""
        assert self.directory is not None
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.directory / "data"), "-o", options, "-l", str(self.directory / "log"), "-w",
            "-t", "30", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are cut at once) and wait until it is down. Blocks."""
        assert self.directory is not None
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def destroy(self) -> None:
        """Stop the server if it runs and remove the directory. Idempotent; never raises."""
        if self.directory is None:
            return
        if self.running:
            try:
                self.stop("immediate")
            except (AssertionError, OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def _run(self, program: str, *args: str) -> None:
        command = [*self.runas, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.COMMAND_TIMEOUT_S, check=False)
        if done.returncode != 0:
            log = ""
            if self.directory is not None and (self.directory / "log").exists():
                log = (self.directory / "log").read_text(errors="replace")[-2000:]
            raise AssertionError(
                f"{' '.join(command)} failed with code {done.returncode}:\n{done.stdout}\n{done.stderr}\n{log}"
            )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())
