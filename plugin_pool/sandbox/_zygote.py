"""The zygote: a fresh interpreter that preloads the worker code and forks one worker per request.

Started by the host as ``python -I -c <boot> ROOT HOST_PID [pidns]``. It must never create a gRPC channel,
server or thread: it stays single-threaded so that every fork is a clean copy, and each worker starts gRPC
only after it has confined itself.

With ``pidns`` the process the host started unshares a PID namespace and forks the real zygote into it as
its init (pid 1); it then only waits for it. When the init of a PID namespace dies, the kernel kills every
process in it: no worker can outlive the zygote, whatever it does to its own death signal. Workers report
their pid as the host sees it (read from the host's /proc before they mount their own), and every frame to
the host uses those pids. The zygote runs one select loop over four kinds of input:

- requests from the host on stdin (frames): ``spawn``, ``kill``, ``exit``;
- SIGCHLD (through a wakeup pipe): it reaps workers and reports ``exited`` with code or signal and the
  last lines the worker printed;
- each worker's stdout/stderr pipe: forwarded to the host as ``output`` frames, size-capped, so nothing a
  worker prints can reach the protocol;
- the lifeline from the process that started it (PID namespace only): EOF means that process is gone.

If the host dies the zygote gets SIGKILL (PDEATHSIG), and so does every worker (their PDEATHSIG is tied
to the zygote).
"""

from __future__ import annotations

import ctypes
import os
import select
import selectors
import signal
import sys
import time
from collections import deque
from typing import Any

# Preloaded here so that each fork starts with them imported (about 90 ms saved per worker).
import grpc  # noqa: F401
import orjson  # noqa: F401

from plugin_pool.sandbox import _worker
from plugin_pool.sandbox._confine import get_host_pid, get_thread_count
from plugin_pool.sandbox._frames import FrameReader, encode_frame, write_all

EXIT_ZYGOTE_ORPHANED = 3
EXIT_PID_NAMESPACE_FAILED = 5
OUTPUT_CHUNK_BYTES = 4096
OUTPUT_TAIL_LINES = 20
OUTPUT_BUDGET_BYTES_PER_S = 64 * 1024
"""Forwarded output per worker per second; the rest is dropped and counted (a flood cannot starve us)."""

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_PID_BYTES = 8


class _Child:
    __slots__ = ("budget", "budget_at", "dropped", "fd", "host_pid", "partial", "plugin_id", "tail")

    def __init__(self, fd: int, plugin_id: str, host_pid: int) -> None:
        self.fd = fd
        self.plugin_id = plugin_id
        self.host_pid = host_pid
        self.tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self.partial = b""
        self.budget = OUTPUT_BUDGET_BYTES_PER_S
        self.budget_at = time.monotonic()
        self.dropped = 0


class Zygote:
    """The zygote's loop. Everything runs on the one thread."""

    def __init__(self, host_pid: int, request_fd: int, reply_fd: int, lifeline_fd: int | None = None) -> None:
        self.host_pid = host_pid
        self.reader = FrameReader(request_fd)
        self.reply_fd = reply_fd
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}
        """Live workers by their pid in this process's PID namespace."""
        self.by_host_pid: dict[int, int] = {}
        self.by_fd: dict[int, int] = {}
        self.exited: dict[int, tuple[int | None, int | None]] = {}
        self.running = True
        self.lifeline_fd = lifeline_fd
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(request_fd, selectors.EVENT_READ, "request")
        self.selector.register(wake_r, selectors.EVENT_READ, "sigchld")
        if lifeline_fd is not None:
            self.selector.register(lifeline_fd, selectors.EVENT_READ, "lifeline")

    def send(self, message: dict[str, Any]) -> None:
        write_all(self.reply_fd, encode_frame(message))

    def serve(self) -> None:
        while self.running:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "request":
                    self.handle_requests()
                elif key.data == "sigchld":
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
                    self.reap_workers()
                elif key.data == "lifeline":  # the process that started us died (it never writes)
                    self.shutdown()
                    os._exit(EXIT_ZYGOTE_ORPHANED)
                else:
                    self.forward_output(key.fd)
            self.reap_workers()
            if self.lifeline_fd is None and os.getppid() != self.host_pid:
                self.shutdown()
                os._exit(EXIT_ZYGOTE_ORPHANED)

    def handle_requests(self) -> None:
        frames = self.reader.read_available()
        if frames is None:  # the host closed our stdin: it is gone or closing
            self.shutdown()
            return
        for frame in frames:
            op = frame.get("op")
            if op == "spawn":
                self.spawn_worker(frame)
            elif op == "kill":
                pid = self.by_host_pid.get(int(frame["pid"]))
                if pid is not None:
                    self.kill_worker(pid, int(frame.get("signal", signal.SIGKILL)))
            elif op == "exit":
                self.shutdown()

    def spawn_worker(self, frame: dict[str, Any]) -> None:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (out_r, out_w, pid_r, pid_w):
                os.close(fd)
            self.send({"op": "spawn_failed", "id": frame["id"], "error": str(exc)})
            return
        if pid == 0:  # the worker
            code = _worker.EXIT_BOOT_FAILED
            try:
                os.close(out_r)
                os.close(pid_r)
                # First thing: tell the zygote our pid as the host numbers it (the host's /proc, still ours).
                write_all(pid_w, get_host_pid().to_bytes(_PID_BYTES, "big"))
                os.close(pid_w)
                code = _worker.run_worker(frame["spec"], parent_pid=parent, output_fd=out_w)
            except BaseException as exc:  # the worker never returns into the zygote's loop
                try:
                    os.write(2, f"worker boot failed: {type(exc).__name__}: {exc}\n".encode(errors="replace"))
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(out_w)
        os.close(pid_w)
        host_pid = _read_pid(pid_r)
        os.close(pid_r)
        child = _Child(out_r, str(frame["spec"].get("plugin_id", "?")), host_pid or pid)
        self.children[pid] = child
        self.by_host_pid[child.host_pid] = pid
        self.by_fd[out_r] = pid
        self.selector.register(out_r, selectors.EVENT_READ, "output")
        self.send({"op": "spawned", "id": frame["id"], "pid": child.host_pid})

    def kill_worker(self, pid: int, sig: int) -> None:
        # Only our own live children: a reaped pid may already belong to someone else.
        if pid in self.children and pid not in self.exited:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            child = self.children.get(pid)
            if child is not None:
                self.drain_output(pid, child)
                self.close_child(pid)
                tail = list(child.tail)
                if child.partial:
                    tail.append(child.partial.decode(errors="replace"))
                self.send(
                    {
                        "op": "exited",
                        "pid": child.host_pid,
                        "code": code,
                        "signal": sig,
                        "tail": tail[-OUTPUT_TAIL_LINES:],
                        "dropped_bytes": child.dropped,
                    }
                )

    def forward_output(self, fd: int) -> None:
        pid = self.by_fd.get(fd)
        if pid is None:
            return
        child = self.children[pid]
        try:
            data = os.read(fd, OUTPUT_CHUNK_BYTES)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(fd)
            self.by_fd.pop(fd, None)
            return
        self.emit_output(pid, child, data)

    def drain_output(self, pid: int, child: _Child) -> None:
        if child.fd not in self.by_fd:
            return
        os.set_blocking(child.fd, False)
        for _ in range(16):
            try:
                data = os.read(child.fd, OUTPUT_CHUNK_BYTES)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.emit_output(pid, child, data)

    def emit_output(self, pid: int, child: _Child, data: bytes) -> None:
        now = time.monotonic()
        if now - child.budget_at >= 1.0:
            child.budget, child.budget_at = OUTPUT_BUDGET_BYTES_PER_S, now
        lines = (child.partial + data).split(b"\n")
        child.partial = lines.pop()[-OUTPUT_CHUNK_BYTES:]
        text_lines = []
        for raw in lines:
            line = raw[:OUTPUT_CHUNK_BYTES].decode(errors="replace")
            child.tail.append(line)
            if child.budget >= len(raw):
                child.budget -= len(raw)
                text_lines.append(line)
            else:
                child.dropped += len(raw)
        if text_lines:
            self.send({"op": "output", "pid": child.host_pid, "lines": text_lines})

    def close_child(self, pid: int) -> None:
        child = self.children.pop(pid, None)
        if child is None:
            return
        self.by_host_pid.pop(child.host_pid, None)
        if child.fd in self.by_fd:
            self.selector.unregister(child.fd)
            self.by_fd.pop(child.fd, None)
        os.close(child.fd)

    def shutdown(self) -> None:
        self.running = False
        for pid in list(self.children):
            self.kill_worker(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while self.children and time.monotonic() < deadline:
            self.reap_workers()
            time.sleep(0.005)


def _read_pid(fd: int) -> int | None:
    data = b""
    while len(data) < _PID_BYTES:
        chunk = os.read(fd, _PID_BYTES - len(data))
        if not chunk:
            return None  # the worker died before it could say
        data += chunk
    return int.from_bytes(data, "big")


def _enter_pid_namespace(libc: ctypes.CDLL) -> tuple[int | None, str]:
    """Fork the real zygote as init of a new PID namespace; in this (outer) process, wait for it and exit
    with its status. Returns (lifeline fd, how) in the zygote, or (None, why not) when no namespace could
    be made (then this process goes on as the zygote itself)."""
    uid, gid = os.getuid(), os.getgid()
    unprivileged = os.geteuid() != 0
    flags = _CLONE_NEWPID | (_CLONE_NEWUSER if unprivileged else 0)
    if libc.unshare(flags) != 0:
        return None, f"unshare(CLONE_NEWPID) failed: {os.strerror(ctypes.get_errno())}"
    if unprivileged:  # a PID namespace needs a user namespace that owns it: keep our own ids inside
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(lifeline_w)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # getppid() reads 0 in a new namespace, so the lifeline tells whether the outer process still lives.
        if select.select([lifeline_r], [], [], 0)[0]:
            os._exit(EXIT_ZYGOTE_ORPHANED)
        return lifeline_r, "init of its own PID namespace"
    # The outer process: hand the protocol to the zygote alone (the host must see EOF when it dies).
    os.close(lifeline_r)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(EXIT_ZYGOTE_ORPHANED)
        except InterruptedError:
            continue
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def main(argv: list[str]) -> int:
    host_pid = int(argv[1])
    want_pid_namespace = len(argv) > 2 and argv[2] == "pidns"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != host_pid:  # the host died before we armed the death signal
        return EXIT_ZYGOTE_ORPHANED
    lifeline: int | None = None
    pid_namespace = "not requested"
    if want_pid_namespace:
        lifeline, pid_namespace = _enter_pid_namespace(libc)
        if lifeline is None:
            sys.stderr.write(f"zygote: no PID namespace: {pid_namespace}\n")
            return EXIT_PID_NAMESPACE_FAILED
    # The protocol gets private descriptors; fds 0 and 1 become /dev/null so that nothing printed by
    # accident (here or in a worker before it redirects) can be read as a reply.
    request_fd = os.dup(0)
    reply_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for fd in (request_fd, reply_fd):
        os.set_inheritable(fd, False)
    threads = get_thread_count()
    if threads != 1:
        sys.stderr.write(f"zygote: expected 1 thread after imports, found {threads}\n")
        return 4
    zygote = Zygote(host_pid, request_fd, reply_fd, lifeline)
    zygote.send({"op": "ready", "pid": get_host_pid(), "pid_namespace": lifeline is not None, "how": pid_namespace})
    zygote.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
