"""The host's view of the zygote (host side): start it, send it requests, read its typed frames.

The zygote is a process the host execs (never forks: gRPC is not fork-safe once started); in a PID
namespace the host starts a small shim that makes the namespace and forks the zygote as its init. The
protocol is length-prefixed JSON frames (``_frames``) on private pipes: the host sends ``spawn``,
``kill`` and ``exit``; the zygote answers ``ready``, ``spawned``/``spawn_failed``, ``exited`` and
``output``. Frames are parsed here into small typed records, so the supervisor reads fields, not dicts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plugin_pool
from plugin_pool.errors import SandboxError
from plugin_pool.sandbox._frames import FrameReader, encode_frame, write_all

__all__ = [
    "ZYGOTE_READY_TIMEOUT_S",
    "WorkerExited",
    "WorkerOutput",
    "WorkerSpawnFailed",
    "WorkerSpawned",
    "ZygoteFrame",
    "ZygoteProcess",
    "parse_frame",
]

_log = logging.getLogger("plugin_pool.sandbox")

ZYGOTE_READY_TIMEOUT_S = 15.0

_ZYGOTE_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from plugin_pool.sandbox._zygote import main; raise SystemExit(main(sys.argv[1:]))"
)


@dataclass(frozen=True, slots=True)
class WorkerSpawned:
    """The zygote forked the worker of spawn request ``request_id``; ``pid`` as the host numbers it."""

    request_id: int
    pid: int


@dataclass(frozen=True, slots=True)
class WorkerSpawnFailed:
    """The zygote could not fork for spawn request ``request_id``."""

    request_id: int
    error: str


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """A worker was reaped: its exit code or signal and the last lines it printed."""

    pid: int
    code: int | None
    signal: int | None
    tail: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkerOutput:
    """Lines a worker printed on stdout/stderr (size- and rate-capped by the zygote)."""

    pid: int
    lines: tuple[str, ...]


ZygoteFrame = WorkerSpawned | WorkerSpawnFailed | WorkerExited | WorkerOutput


def parse_frame(frame: dict[str, Any]) -> ZygoteFrame | None:
    """A zygote frame as its record, or None for an op this host does not know. Raises ValueError (or
    KeyError/TypeError as ValueError) for a known op with malformed fields."""
    try:
        op = frame.get("op")
        if op == "spawned":
            return WorkerSpawned(int(frame["id"]), int(frame["pid"]))
        if op == "spawn_failed":
            return WorkerSpawnFailed(int(frame["id"]), str(frame.get("error")))
        if op == "exited":
            code, sig = frame.get("code"), frame.get("signal")
            return WorkerExited(
                int(frame["pid"]),
                None if code is None else int(code),
                None if sig is None else int(sig),
                tuple(str(line) for line in frame.get("tail", ())),
            )
        if op == "output":
            return WorkerOutput(int(frame["pid"]), tuple(str(line) for line in frame.get("lines", ())))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed zygote frame {str(frame)[:200]}: {exc!r}") from exc
    return None


class ZygoteProcess:
    """The host side of one zygote: start it, send requests, read its frames on a reader thread.

    ``on_frame`` gets every frame but ``ready``, already parsed, on the reader thread; ``on_exit`` runs once
    on that thread when the zygote is gone. ``start`` blocks until the zygote is ready (or raises);
    ``stop`` is idempotent.
    """

    def __init__(
        self,
        directory: Path,
        on_frame: Callable[[ZygoteFrame], None],
        on_exit: Callable[[], None],
        *,
        pid_namespace: bool = False,
    ) -> None:
        self._directory = directory
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._pid_namespace = pid_namespace
        self._write_lock = threading.Lock()
        self.ready = threading.Event()
        """Set when the zygote said it is ready, or when it died first (then ``gone`` is set too)."""
        self.gone = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.in_pid_namespace = False

    def start(self) -> None:
        """Exec the zygote and wait until it is ready. Blocks up to ZYGOTE_READY_TIMEOUT_S; raises
        SandboxError (with the end of its log) if it dies or does not get ready in time."""
        root = str(Path(plugin_pool.__file__).resolve().parent.parent)
        log_path = self._directory / "zygote.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        args = [sys.executable, "-I", "-c", _ZYGOTE_BOOT, root, str(os.getpid())]
        if self._pid_namespace:
            args.append("pidns")
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                close_fds=True,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "2", "LC_ALL": "C.UTF-8"},
            )
        finally:
            log.close()
        self.pid = self.proc.pid
        threading.Thread(target=self._read, name="plugin-pool-zygote-reader", daemon=True).start()
        # A zygote that dies while it starts wakes us at once (the reader sets ready when its pipe closes).
        if not self.ready.wait(ZYGOTE_READY_TIMEOUT_S) or self.gone.is_set():
            died = self.gone.is_set()
            self.stop()
            code = self.proc.returncode
            raise SandboxError(
                (
                    f"the sandbox zygote exited with code {code} while starting"
                    if died
                    else f"the sandbox zygote did not start within {ZYGOTE_READY_TIMEOUT_S:g} s"
                )
                + f": {log_tail(log_path)}"
            )

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        reader = FrameReader(self.proc.stdout.fileno())
        try:
            while True:
                frames = reader.read_available()
                if frames is None:
                    break
                for frame in frames:
                    if frame.get("op") == "ready":
                        self.in_pid_namespace = bool(frame.get("pid_namespace"))
                        # In a PID namespace the zygote is the child of the process we started (which only
                        # waits for it): its own pid is the one that is the parent of every worker.
                        self.pid = int(frame.get("pid") or self.proc.pid)
                        self.ready.set()
                        continue
                    parsed = parse_frame(frame)
                    if parsed is not None:
                        self._on_frame(parsed)
        except (OSError, ValueError) as exc:
            _log.error("zygote protocol broken: %s", exc, extra={"event": "zygote_protocol_error"})
        finally:
            self.gone.set()
            self.ready.set()
            self.proc.wait()
            # The pipes would otherwise be left to the garbage collector (a ResourceWarning each).
            for pipe in (self.proc.stdout, self.proc.stdin):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            self._on_exit()

    def send(self, frame: dict[str, Any]) -> None:
        """Write one request frame. Raises SandboxError when the zygote is gone. Thread-safe."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise SandboxError("the sandbox zygote is not running")
        with self._write_lock:
            try:
                write_all(proc.stdin.fileno(), encode_frame(frame))
            except (BrokenPipeError, ValueError, OSError) as exc:
                raise SandboxError(f"the sandbox zygote is gone: {exc}") from exc

    def spawn(self, request_id: int, spec: dict[str, Any]) -> None:
        """Ask for a worker; the answer is a WorkerSpawned or WorkerSpawnFailed frame. Raises SandboxError."""
        self.send({"op": "spawn", "id": request_id, "spec": spec})

    def kill(self, pid: int, sig: int) -> None:
        """Ask the zygote to signal its live child ``pid`` (race-free: it never signals a reaped pid)."""
        self.send({"op": "kill", "pid": pid, "signal": sig})

    def stop(self) -> None:
        """Ask the zygote to exit (it kills and reaps its workers first); kill it after 3 s. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        try:
            self.send({"op": "exit"})
        except SandboxError:
            pass
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(3.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3.0)


def log_tail(path: Path, limit: int = 600) -> str:
    """The end of a log file, for error messages ('(nothing in …)' if there is nothing). No side effects."""
    try:
        text = path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return text.replace("\n", " | ") if text else f"(nothing in {path})"
