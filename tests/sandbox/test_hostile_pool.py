"""The hostile plugin corpus, end to end through the real pool: host -> zygote -> confined worker.

One tiny plugin per behaviour lives in ``plugins/<name>/`` (plugin.toml + one module). Every plugin
reports what happened as data (an errno, a count) or crashes; each test asserts that the attempt failed
or was stopped, that the host got the right error (with pid and signal or exit code for a death), and
that another plugin (``echo``) keeps serving afterwards.

One host per test module (per xdist worker) keeps the suite fast: all plugins are added and started
once, with small limits. Tests that kill or break a worker use a plugin of their own. Network tests only
ever aim at loopback, at listeners the test itself owns. Nothing here is bounded by luck: the pool kills
every call at ``CALL_TIMEOUT_S`` and every plugin loop, thread and child has its own bound.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _hosts import ns_pid

from plugin_pool import PluginHost, load_config
from plugin_pool.errors import (
    CallTimeoutError,
    CapabilityDeniedError,
    MalformedReplyError,
    PayloadError,
    PluginCallError,
    ResourceLimitError,
    WorkerCrashedError,
)
from plugin_pool.registry.base import EventKind

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(60)]

PLUGINS_DIR = Path(__file__).parent / "plugins"
SECRET_VAR = "PLUGIN_POOL_TEST_SECRET"
MIB = 1024 * 1024

CALL_TIMEOUT_S = 4.0
CPU_TIME_S = 1  # RLIMIT_CPU is a lifetime budget; the spin plugin crosses it well within CALL_TIMEOUT_S
MEMORY_MB = 256
OPEN_FILES = 64
FILE_SIZE_MB = 1
MAX_MESSAGE_MB = 1
REPLACEMENT_WAIT_S = 10.0

# The layers the pool must apply on a machine that offers them (docs/SANDBOX.md).
EXPECTED_LAYERS = (
    "landlock",
    "seccomp",
    "seccomp_sockets",
    "netns",
    "no_new_privs",
    "rlimits",
    "pdeathsig",
    "uid",
    "cgroup",
    "pidns",
    "mountns",
)
# What a confined worker's environment may hold (docs/SANDBOX.md, step 5).
WORKER_ENVIRONMENT = {"PATH", "TMPDIR", "MALLOC_ARENA_MAX"}


class _Records(logging.Handler):
    """Keeps every record of the ``plugin_pool`` loggers, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)

    def snapshot(self) -> list[logging.LogRecord]:
        with self._guard:
            return list(self.records)


@dataclass(frozen=True)
class Hostile:
    host: PluginHost
    logs: _Records
    secret: str
    outside_file: Path

    def invoke(self, plugin_id: str, capability: str, payload: Any = None) -> Any:
        return self.host.invoke(plugin_id, capability, payload)

    def pid_of(self, plugin_id: str) -> int:
        """The host's pid of the plugin's one worker, checked against the pid the worker itself reports (its
        own PID namespace numbers it differently)."""
        reported = int(self.invoke(plugin_id, "ping")["pid"])
        assert self.host.sandbox is not None
        pids = self.host.sandbox.list_worker_pids(plugin_id, spares=False)  # the spare takes no call
        assert len(pids) == 1, pids
        assert ns_pid(pids[0]) == reported
        return pids[0]

    def wait_for_replacement(self, plugin_id: str, old_pid: int) -> int:
        """Wait until a new worker replaced ``old_pid`` and serves; return its pid."""
        assert self.host.sandbox is not None
        deadline = time.monotonic() + REPLACEMENT_WAIT_S
        while time.monotonic() < deadline:
            pids = self.host.sandbox.list_worker_pids(plugin_id, spares=False)
            if pids and old_pid not in pids:
                new_pid = self.pid_of(plugin_id)
                assert new_pid != old_pid
                return new_pid
            time.sleep(0.02)
        raise AssertionError(f"no replacement for worker {old_pid} of {plugin_id!r} within {REPLACEMENT_WAIT_S} s")

    def wait_for_restart(self, plugin_id: str, reason: str, expected: int) -> None:
        deadline = time.monotonic() + REPLACEMENT_WAIT_S
        while self.host.restarts[plugin_id, reason] < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.host.restarts[plugin_id, reason] == expected, dict(self.host.restarts)

    def assert_others_serve(self) -> None:
        """The benign plugin still answers, and the host process is obviously alive (we are it)."""
        token = uuid.uuid4().hex
        assert self.invoke("echo", "echo", {"token": token, "n": [1, 2, 3]}) == {"token": token, "n": [1, 2, 3]}
        assert self.host.get_plugin_health("echo").is_active


def _config() -> Any:
    return load_config(
        overrides={
            "sandbox": {
                "memory_mb": MEMORY_MB,
                "cpu_time_s": CPU_TIME_S,
                "file_size_mb": FILE_SIZE_MB,
                "open_files": OPEN_FILES,
                "max_message_mb": MAX_MESSAGE_MB,
                "max_total_workers": 96,
                "crash_limit": 50,
                "restart_backoff_s": 0.01,
            },
            "host": {"call_timeout_s": CALL_TIMEOUT_S},
        }
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """One host with every hostile plugin started, a secret in the host environment, and a secret file
    outside every plugin folder."""
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    outside.mkdir()
    secret = f"s3cret-{uuid.uuid4().hex}"
    outside_file = outside / "secret.txt"
    outside_file.write_text(secret)

    logs = _Records()
    package_logger = logging.getLogger("plugin_pool")
    old_level = package_logger.level
    package_logger.setLevel(logging.DEBUG)
    package_logger.addHandler(logs)
    env = pytest.MonkeyPatch()
    env.setenv(SECRET_VAR, secret)  # set before the host (and its zygote) starts
    host = PluginHost(_config())
    try:
        host.open()
        for folder in sorted(PLUGINS_DIR.iterdir()):
            if (folder / "plugin.toml").is_file():
                host.add_plugin_dir(folder)
        failed = host.start_plugins().failed
        if failed:
            pytest.fail(f"hostile plugins failed to start: {failed}")
        yield Hostile(host=host, logs=logs, secret=secret, outside_file=outside_file)
    finally:
        # Kill the workers first: a graceful stop costs each worker about 0.5 s, one after the other
        # (see the report), which would add ~15 s to this module for nothing it tests.
        if host.sandbox is not None:
            host.sandbox.close()
        host.close()
        env.undo()
        package_logger.removeHandler(logs)
        package_logger.setLevel(old_level)


# -- confinement -------------------------------------------------------------------------------------


def test_confinement_report_lists_every_layer_as_applied(hostile: Hostile, require_layers: Callable[..., None]) -> None:
    require_layers(*EXPECTED_LAYERS)
    assert hostile.host.sandbox is not None
    report = hostile.host.sandbox.get_confinement()
    for layer in EXPECTED_LAYERS:
        assert report["layers"][layer]["available"], report["layers"][layer]
        assert layer in report["applied"], report
        assert layer in report["required"], report
    # And from inside a worker: the layers are really in force, with the configured limits.
    inside = hostile.invoke("introspect", "inspect")
    assert inside["no_new_privs"] == 1
    assert inside["seccomp_mode"] == 2  # SECCOMP_MODE_FILTER
    assert inside["rlimits"]["RLIMIT_CPU"] == [CPU_TIME_S, CPU_TIME_S + 1]
    # The memory cgroup holds memory_mb; RLIMIT_DATA only stops absurd reservations above it.
    assert inside["rlimits"]["RLIMIT_DATA"] == [8 * MEMORY_MB * MIB, 8 * MEMORY_MB * MIB]
    assert inside["rlimits"]["RLIMIT_NOFILE"] == [OPEN_FILES, OPEN_FILES]
    assert inside["rlimits"]["RLIMIT_FSIZE"] == [FILE_SIZE_MB * MIB, FILE_SIZE_MB * MIB]
    assert inside["rlimits"]["RLIMIT_CORE"] == [0, 0]
    assert inside["root_listing"] == f"errno {errno.EACCES}"  # Landlock
    hostile.assert_others_serve()


# -- network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6"])
@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM"])
def test_inet_sockets_are_refused(
    hostile: Hostile, require_layers: Callable[..., None], family: str, kind: str
) -> None:
    require_layers("seccomp", "seccomp_sockets")
    result = hostile.invoke("net-create", "create", {"family": family, "type": kind})
    # Filter 2 (socket -> EPERM) is the newest filter, so its errno wins over filter 1's EAFNOSUPPORT.
    assert result == {"created": False, "errno": errno.EPERM, "error": "PermissionError"}
    hostile.assert_others_serve()


def _listener(kind: int, host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.bind((host, 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"no {host} loopback on this machine: {exc}")
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    sock.settimeout(0.3)
    return sock


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("capability", ["tcp_connect", "udp_send"])
def test_loopback_listener_receives_nothing(
    hostile: Hostile, require_layers: Callable[..., None], address: str, capability: str
) -> None:
    require_layers("seccomp_sockets", "netns")
    kind = socket.SOCK_STREAM if capability == "tcp_connect" else socket.SOCK_DGRAM
    with _listener(kind, address) as listener:
        port = listener.getsockname()[1]
        result = hostile.invoke("net-loopback", capability, {"host": address, "port": port})
        assert result == {"sent": False, "errno": errno.EPERM, "error": "PermissionError"}
        with pytest.raises(TimeoutError):
            if kind == socket.SOCK_STREAM:
                conn, peer = listener.accept()
                conn.close()
                raise AssertionError(f"the plugin reached the test's listener from {peer}")
            data, peer = listener.recvfrom(4096)
            raise AssertionError(f"the plugin's datagram {data!r} arrived from {peer}")
    hostile.assert_others_serve()


@pytest.mark.parametrize("kind", ["netlink_route", "netlink_dgram", "packet_raw", "packet_dgram", "unix_stream"])
def test_netlink_packet_and_new_unix_sockets_are_refused(
    hostile: Hostile, require_layers: Callable[..., None], kind: str
) -> None:
    require_layers("seccomp", "seccomp_sockets")
    assert hostile.invoke("net-raw", "open_socket", kind) == {
        "created": False,
        "errno": errno.EPERM,
        "error": "PermissionError",
    }
    hostile.assert_others_serve()


# -- files and environment ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/shadow", "/proc/1/environ", "host_environ", "outside"])
def test_reading_outside_the_plugin_folder_is_refused(
    hostile: Hostile, require_layers: Callable[..., None], target: str
) -> None:
    require_layers("landlock", "mountns", "pidns")
    path: Any = {
        "host_environ": f"/proc/{os.getpid()}/environ",
        "outside": str(hostile.outside_file),
        # A folder may not hold a symlink (staging refuses one), so the plugin makes these itself, at run time,
        # in its own temp dir, and reads through them.
        "link_to_secret": {"via_link": str(hostile.outside_file)},
        "link_to_shadow": {"via_link": "/etc/shadow"},
    }.get(target, target)
    result = hostile.invoke("read-file", "read", path)
    # None of these exist in the worker's private root (its /proc shows its own process only); where the
    # path does exist, Landlock refuses it as well (test_confine tests each layer alone).
    assert result == {"read": False, "errno": errno.ENOENT, "error": "FileNotFoundError"}
    assert hostile.secret not in json.dumps(result)
    # Positive control: the plugin does read its own folder.
    own = hostile.invoke("read-file", "read", "plugin.toml")
    assert own["read"] is True and 'id = "read-file"' in own["data"]
    hostile.assert_others_serve()


def test_host_environment_does_not_reach_the_worker(hostile: Hostile) -> None:
    assert os.environ[SECRET_VAR] == hostile.secret  # the host really has it
    environ = hostile.invoke("env-dump", "environ")
    assert SECRET_VAR not in environ
    assert not any(hostile.secret in value for value in environ.values())
    assert set(environ) <= WORKER_ENVIRONMENT, environ
    hostile.assert_others_serve()


@pytest.mark.parametrize("where", ["plugin_dir", "tmp_root", "test_tmp"])
def test_writing_outside_the_temp_dir_is_refused(
    hostile: Hostile, require_layers: Callable[..., None], tmp_path: Path, where: str
) -> None:
    require_layers("landlock", "mountns")
    name = f"pwned-{uuid.uuid4().hex}.txt"
    targets = {
        "plugin_dir": PLUGINS_DIR / "write_file" / name,
        "tmp_root": Path("/tmp") / name,
        "test_tmp": tmp_path / name,
    }
    target = targets[where]
    # The plugin's folder is a read-only bind of the host's private copy (EROFS); the test's directory does
    # not exist in the worker's root (ENOENT); /tmp is the worker's own tmpfs, so that write works but lands
    # nowhere the host can see.
    expected = {
        "plugin_dir": {"written": False, "errno": errno.EROFS, "error": "OSError"},
        "tmp_root": {"written": True, "errno": None, "tempdir": "/tmp"},
        "test_tmp": {"written": False, "errno": errno.ENOENT, "error": "FileNotFoundError"},
    }[where]
    try:
        payload = {"where": where, "name": name, "path": str(target)}
        result = hostile.invoke("write-file", "write", payload)
        # The plugin writes into the folder it was loaded from: the host's private read-only copy of it.
        written_to = Path(result.pop("path"))
        assert written_to.name == name
        if where != "plugin_dir":
            assert written_to == target
        assert result == expected
        assert not target.exists() and not written_to.exists()
    finally:
        target.unlink(missing_ok=True)
    hostile.assert_others_serve()


def test_writing_in_the_private_temp_dir_works_within_the_file_size_limit(
    hostile: Hostile, require_layers: Callable[..., None]
) -> None:
    require_layers("landlock", "rlimits")
    pid = hostile.pid_of("write-file")
    result = hostile.invoke("write-file", "write", {"where": "tempdir", "name": f"own-{uuid.uuid4().hex}"})
    assert result["written"] is True
    # Its TMPDIR is /tmp inside its private root: a tmpfs of its own, not the host's /tmp.
    assert result["tempdir"] == "/tmp" and result["path"].startswith("/tmp/")
    assert not Path(result["path"]).exists()
    # RLIMIT_FSIZE: one byte past the limit fails with EFBIG (Python ignores SIGXFSZ: the worker lives).
    too_big = hostile.invoke("write-file", "write", {"where": "tempdir", "size": FILE_SIZE_MB * MIB + 1})
    assert too_big["written"] is False and too_big["errno"] == errno.EFBIG
    assert hostile.pid_of("write-file") == pid
    hostile.assert_others_serve()


# -- processes ---------------------------------------------------------------------------------------


def test_fork_bomb_is_refused(hostile: Hostile, require_layers: Callable[..., None]) -> None:
    require_layers("seccomp")
    pid = hostile.pid_of("fork-bomb")
    assert hostile.invoke("fork-bomb", "fork") == {"forked": 0, "errno": errno.EPERM, "error": "PermissionError"}
    assert hostile.invoke("fork-bomb", "spawn") == {"spawned": False, "errno": errno.EPERM, "error": "PermissionError"}
    assert hostile.pid_of("fork-bomb") == pid
    hostile.assert_others_serve()


def test_thread_bomb_is_limited_and_the_worker_recovers(hostile: Hostile, require_layers: Callable[..., None]) -> None:
    require_layers("rlimits")
    pid = hostile.pid_of("thread-bomb")
    result = hostile.invoke("thread-bomb", "spawn_threads", 10_000)
    # Thread stacks count against RLIMIT_DATA (SANDBOX-FACTS section 7), so thread creation stops early.
    assert 0 < result["started"] < 10_000, result
    assert result["error"] == "RuntimeError: can't start new thread", result
    # Once the plugin's threads end, the same worker serves again.
    assert hostile.pid_of("thread-bomb") == pid
    hostile.assert_others_serve()


def test_file_descriptor_exhaustion_returns_emfile(hostile: Hostile, require_layers: Callable[..., None]) -> None:
    require_layers("rlimits")
    pid = hostile.pid_of("fd-exhaust")
    result = hostile.invoke("fd-exhaust", "exhaust")
    assert result["errno"] == errno.EMFILE
    assert 0 < result["opened"] < OPEN_FILES
    assert hostile.pid_of("fd-exhaust") == pid
    hostile.assert_others_serve()


def test_memory_bomb_raises_resource_limit_memory(hostile: Hostile, require_layers: Callable[..., None]) -> None:
    require_layers("rlimits")
    pid = hostile.pid_of("memory-bomb")
    before = hostile.host.restarts["memory-bomb", "memory"]
    with pytest.raises(ResourceLimitError) as caught:
        hostile.invoke("memory-bomb", "allocate", 2 * 1024 * MIB)
    # The worker caught a real MemoryError (RLIMIT_DATA refused the allocation) and said so as data.
    assert (caught.value.limit, caught.value.plugin_id, caught.value.capability) == (
        "memory",
        "memory-bomb",
        "allocate",
    )
    assert caught.value.pid == pid
    assert f"worker pid {pid} reached its memory limit" in str(caught.value)
    # That worker is recycled once idle and replaced (counted once, reason 'memory'); the plugin serves on.
    assert hostile.invoke("memory-bomb", "allocate", MIB) == {"allocated": MIB}
    hostile.wait_for_restart("memory-bomb", "memory", before + 1)
    hostile.wait_for_replacement("memory-bomb", pid)
    hostile.assert_others_serve()


def test_cpu_spin_past_rlimit_cpu_raises_resource_limit_cpu(
    hostile: Hostile, require_layers: Callable[..., None]
) -> None:
    require_layers("rlimits")
    pid = hostile.pid_of("cpu-spin")
    before = hostile.host.restarts["cpu-spin", "cpu"]
    with pytest.raises(ResourceLimitError) as caught:
        hostile.invoke("cpu-spin", "spin", 10 * CPU_TIME_S)
    assert caught.value.limit == "cpu"
    assert caught.value.signal == signal.SIGXCPU
    assert caught.value.pid == pid
    hostile.wait_for_replacement("cpu-spin", pid)
    hostile.wait_for_restart("cpu-spin", "cpu", before + 1)
    hostile.assert_others_serve()


def test_sleep_past_the_deadline_times_out_and_replaces_the_worker(hostile: Hostile) -> None:
    pid = hostile.pid_of("sleeper")
    before = hostile.host.restarts["sleeper", "timeout"]
    started = time.monotonic()
    with pytest.raises(CallTimeoutError) as caught:
        hostile.invoke("sleeper", "sleep", 30)
    elapsed = time.monotonic() - started
    assert CALL_TIMEOUT_S - 0.1 <= elapsed < CALL_TIMEOUT_S + 2.0
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.pid == pid
    assert caught.value.timeout_s == CALL_TIMEOUT_S
    new_pid = hostile.wait_for_replacement("sleeper", pid)
    hostile.wait_for_restart("sleeper", "timeout", before + 1)
    assert new_pid != pid
    with pytest.raises(ProcessLookupError):  # killed, and reaped by the zygote
        os.kill(pid, 0)
    hostile.assert_others_serve()


def test_segfault_crashes_only_its_call(hostile: Hostile) -> None:
    pid = hostile.pid_of("segfault")
    before = hostile.host.restarts["segfault", "crash"]
    with pytest.raises(WorkerCrashedError) as caught:
        hostile.invoke("segfault", "crash")
    assert type(caught.value) is WorkerCrashedError
    assert caught.value.pid == pid
    assert caught.value.signal == signal.SIGSEGV
    assert caught.value.exit_code is None
    assert caught.value.capability == "crash"
    hostile.wait_for_replacement("segfault", pid)
    hostile.wait_for_restart("segfault", "crash", before + 1)
    hostile.assert_others_serve()


def test_os_exit_reports_the_exit_code(hostile: Hostile) -> None:
    pid = hostile.pid_of("exit-code")
    with pytest.raises(WorkerCrashedError) as caught:
        hostile.invoke("exit-code", "exit", 3)
    assert type(caught.value) is WorkerCrashedError
    assert caught.value.pid == pid
    assert caught.value.exit_code == 3
    assert caught.value.signal is None
    hostile.wait_for_replacement("exit-code", pid)
    hostile.assert_others_serve()


def test_signalling_the_host_zygote_and_siblings_is_refused(
    hostile: Hostile, require_layers: Callable[..., None]
) -> None:
    require_layers("landlock")
    zygote = int(hostile.invoke("signal-sender", "parent"))
    victim = hostile.pid_of("victim")
    host_pid = os.getpid()
    assert len({zygote, victim, host_pid}) == 3
    # Signal 0 takes the same permission check as a real signal without delivering anything; the
    # sibling (a plugin of its own) gets a real SIGKILL.
    attempts = [(host_pid, 0), (host_pid, signal.SIGCONT), (zygote, 0), (zygote, signal.SIGCONT), (victim, 0)]
    attempts.append((victim, signal.SIGKILL))
    for pid, sig in attempts:
        result = hostile.invoke("signal-sender", "kill", {"pid": pid, "signal": int(sig)})
        assert result == {"delivered": False, "errno": errno.EPERM, "error": "PermissionError"}, (pid, sig)
    os.kill(zygote, 0)  # still there
    assert hostile.pid_of("victim") == victim
    assert hostile.invoke("signal-sender", "parent") == zygote
    hostile.assert_others_serve()


@pytest.mark.parametrize("target", ["zygote", "sibling", "host"])
def test_ptrace_attach_is_refused(hostile: Hostile, require_layers: Callable[..., None], target: str) -> None:
    require_layers("seccomp")
    pid = {"zygote": 0, "sibling": hostile.pid_of("victim"), "host": os.getpid()}[target]
    result = hostile.invoke("ptracer", "attach", pid)
    assert result["attached"] is False and result["errno"] == errno.EPERM, result
    hostile.pid_of("victim")
    hostile.assert_others_serve()


def test_execve_of_a_shell_is_refused_and_the_worker_lives(
    hostile: Hostile, require_layers: Callable[..., None]
) -> None:
    require_layers("seccomp")
    pid = hostile.pid_of("exec-shell")
    assert hostile.invoke("exec-shell", "exec_sh") == {
        "executed": False,
        "errno": errno.EPERM,
        "error": "PermissionError",
    }
    assert hostile.pid_of("exec-shell") == pid
    hostile.assert_others_serve()


# -- the protocol ------------------------------------------------------------------------------------


def test_oversized_reply_raises_payload_error_and_the_worker_serves(hostile: Hostile) -> None:
    pid = hostile.pid_of("big-reply")
    with pytest.raises(PayloadError) as caught:
        hostile.invoke("big-reply", "reply", (MAX_MESSAGE_MB + 1) * MIB)
    assert caught.value.plugin_id == "big-reply"
    assert "too large" in str(caught.value)
    # Many items that only together pass the limit fail the same way in a batch.
    with pytest.raises(PayloadError):
        hostile.host.invoke_many("big-reply", "reply", [MIB // 2, MIB // 2, MIB // 2])
    assert hostile.invoke("big-reply", "reply", MIB // 2) == "x" * (MIB // 2)
    assert hostile.pid_of("big-reply") == pid
    hostile.assert_others_serve()


def _worker_output(hostile: Hostile, plugin_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in hostile.logs.snapshot()
        if getattr(r, "event", None) == "worker_output" and getattr(r, "pluginId", None) == plugin_id
    ]


def test_stdout_flood_is_capped_and_the_protocol_stays_intact(hostile: Hostile) -> None:
    pid = hostile.pid_of("stdout-flood")
    result = hostile.invoke("stdout-flood", "flood", 50)
    assert result["lines"] > 50_000
    # Later calls work on the same worker and elsewhere.
    for _ in range(5):
        assert hostile.pid_of("stdout-flood") == pid
        hostile.assert_others_serve()
    deadline = time.monotonic() + 3.0
    while not _worker_output(hostile, "stdout-flood") and time.monotonic() < deadline:
        time.sleep(0.02)
    forwarded = _worker_output(hostile, "stdout-flood")
    # Output is forwarded to the host log, but rate-limited: a flood cannot flood the host's logs.
    assert forwarded, "the zygote forwarded none of the worker's output"
    assert len(forwarded) < 2_000, len(forwarded)
    assert all(r.name == "plugin_pool.sandbox" and r.levelno == logging.INFO for r in forwarded)


def test_forged_log_lines_stay_inside_worker_output_records(hostile: Hostile) -> None:
    marker = f"forged-{uuid.uuid4().hex}"
    echo_pid = hostile.pid_of("echo")
    lines = [
        json.dumps({"level": "CRITICAL", "logger": "plugin_pool.host", "message": marker}),
        json.dumps(
            {
                "level": "ERROR",
                "logger": "plugin_pool.sandbox",
                "event": "plugin_failed",
                "pluginId": "echo",
                "m": marker,
            }
        ),
        # Looks like a zygote frame announcing the echo worker's death.
        json.dumps({"op": "exited", "pid": echo_pid, "code": 0, "signal": None, "tail": [marker]}),
    ]
    assert hostile.invoke("log-forger", "forge", lines) == {"printed": len(lines)}
    expected = 2 * len(lines) + 1  # stdout and stderr, plus the one behind a carriage return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        found = [r for r in hostile.logs.snapshot() if marker in r.getMessage() or marker in str(vars(r))]
        if len(found) >= expected:
            break
        time.sleep(0.02)
    assert len(found) >= expected, [r.getMessage() for r in found]
    for record in found:
        assert record.name == "plugin_pool.sandbox"
        assert record.levelno == logging.INFO
        assert getattr(record, "event", None) == "worker_output"
        assert getattr(record, "pluginId", None) == "log-forger"
        assert record.getMessage().lstrip("\r") in lines
    # The fake "exited" frame did not touch the echo worker.
    assert hostile.pid_of("echo") == echo_pid
    hostile.assert_others_serve()


def test_import_time_side_effects_stay_in_the_worker(hostile: Hostile, require_layers: Callable[..., None]) -> None:
    require_layers("seccomp_sockets", "landlock")
    report = hostile.invoke("import-effects", "report")
    assert report["worker_environ_pwned"] == "1"  # the module really ran its import-time code, there
    assert "PWNED" not in os.environ
    assert hostile.host.sandbox is not None and hostile.host.sandbox.supervisor.base_dir is not None
    # Neither the plugin folders nor the verified copies the workers load were imported in the host.
    roots = (str(PLUGINS_DIR.resolve()), str(hostile.host.sandbox.supervisor.base_dir.resolve()))
    leaked = [
        name
        for name, module in list(sys.modules.items())
        if str(getattr(module, "__file__", None) or "").startswith(roots)
    ]
    assert leaked == []
    assert "import_effects" not in sys.modules
    # The thread it started at import is confined like the plugin itself.
    assert report["thread_done"] is True
    assert len(report["attempts"]) == 20
    assert all(a == {"created": False, "errno": errno.EPERM} for a in report["attempts"]), report["attempts"]
    assert report["marker"] == {"written": False, "errno": errno.EROFS}  # its folder is a read-only bind
    assert not (PLUGINS_DIR / "import_effects" / "pwned_marker").exists()
    hostile.assert_others_serve()


@pytest.mark.parametrize("capability", ["secret", "../ping", "ping\x00"])
def test_undeclared_capability_is_denied_and_audited(hostile: Hostile, capability: str) -> None:
    registry = hostile.host.registry
    before = registry.list_events(plugin_id="undeclared", event=EventKind.CAPABILITY_DENIED)
    with pytest.raises(CapabilityDeniedError) as caught:
        hostile.invoke("undeclared", capability, "x")
    assert caught.value.capability == capability
    assert caught.value.plugin_id == "undeclared"
    assert set(caught.value.declared) == {"echo", "ping"}
    after = registry.list_events(plugin_id="undeclared", event=EventKind.CAPABILITY_DENIED)
    assert len(after) == len(before) + 1
    assert after[-1].details["capability"] == capability
    assert hostile.invoke("undeclared", "echo", "x") == "x"
    hostile.assert_others_serve()


@pytest.mark.parametrize("kind", ["set", "object", "int_key", "huge_int", "lone_surrogate", "circular"])
def test_result_that_cannot_be_encoded_raises_payload_error(hostile: Hostile, kind: str) -> None:
    pid = hostile.pid_of("bad-result")
    with pytest.raises(PayloadError) as caught:
        hostile.invoke("bad-result", "result", kind)
    assert "cannot cross the sandbox boundary" in str(caught.value)
    assert hostile.pid_of("bad-result") == pid
    hostile.assert_others_serve()


@pytest.mark.parametrize("kind", ["invalid_json", "deep_json", "unknown_kind"])
def test_forged_reply_raises_malformed_reply_error(hostile: Hostile, kind: str) -> None:
    pid = hostile.pid_of("bad-result")
    with pytest.raises(MalformedReplyError) as caught:
        hostile.invoke("bad-result", "forge_reply", kind)
    assert caught.value.plugin_id == "bad-result"
    assert hostile.pid_of("bad-result") == pid
    hostile.assert_others_serve()


def test_plugin_exception_becomes_plugin_call_error(hostile: Hostile) -> None:
    with pytest.raises(PluginCallError) as caught:
        hostile.invoke("raiser", "boom", None)
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "boom"
    assert caught.value.plugin_id == "raiser"
    assert caught.value.capability == "boom"
    assert caught.value.index is None
    with pytest.raises(PluginCallError) as batch:
        hostile.host.invoke_many("raiser", "boom", ["ok", "ok", None])
    assert (batch.value.index, batch.value.remote_type, batch.value.remote_message) == (2, "ValueError", "boom")
    with pytest.raises(PluginCallError) as huge:
        hostile.invoke("raiser", "boom", "huge_message")
    assert len(huge.value.remote_message) <= 2000
    hostile.assert_others_serve()


def test_exception_with_unprintable_message_becomes_plugin_call_error(hostile: Hostile) -> None:
    pid = hostile.pid_of("bad-exception")
    try:
        with pytest.raises(PluginCallError) as caught:
            hostile.invoke("bad-exception", "throw", "unprintable")
        assert caught.value.remote_type == "UnprintableError"
        assert hostile.pid_of("bad-exception") == pid
    finally:
        hostile.assert_others_serve()


def test_system_exit_from_a_capability_fails_the_call_at_once(hostile: Hostile) -> None:
    started = time.monotonic()
    try:
        with pytest.raises((PluginCallError, WorkerCrashedError)) as caught:
            hostile.invoke("bad-exception", "throw", "system_exit")
        error = caught.value
        precise = (isinstance(error, PluginCallError) and error.remote_type == "SystemExit") or (
            isinstance(error, WorkerCrashedError) and error.exit_code == 7
        )
        assert precise, repr(error)
        assert time.monotonic() - started < CALL_TIMEOUT_S / 2
    finally:
        hostile.assert_others_serve()
