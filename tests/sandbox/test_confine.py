"""Real tests of the worker-side confinement: one hostile behaviour per test, in a real confined process.

Each test starts ``hostile/_runner.py`` in a fresh interpreter. The runner confines itself with
``confine_self`` (and ``lock_sockets`` when asked), then runs one action from ``hostile/`` and writes
JSON lines to a pipe only the test reads. Every child is bounded by a timeout and killed in a
``finally``. Network actions only ever address 127.0.0.1, on listeners the test itself owns.

The default profile uses a user namespace instead of a uid drop (SANDBOX-FACTS section 8), because
a uid drop needs a Python runtime readable by that uid; the uid tests look for such an interpreter.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyseccomp  # type: ignore[import-untyped,unused-ignore]
import pytest
from _confined import (
    CHILD_TIMEOUT_S,
    NOBODY,
    POOL_ONLY_LAYERS,
    Dirs,
    assert_errno,
    make_spec,
    run_hostile,
    runner_command,
)

from plugin_pool.sandbox import _confine, _landlock, _seccomp

_INTERMEDIATE_PARENT = """
import json, subprocess, sys, time
cmd, fd = json.loads(sys.argv[1])
subprocess.Popen(cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL)
time.sleep(30)
"""

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(60)]

# ---------------------------------------------------------------------------------------------------------
# spec, probe and report


def test_spec_validates_and_round_trips(dirs: Dirs) -> None:
    spec = _confine.ConfinementSpec.from_dict(make_spec(dirs))
    assert _confine.ConfinementSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="memory_mb=128 is below 256"):
        _confine.ConfinementSpec(temp_dir="/tmp", memory_mb=128)
    with pytest.raises(ValueError, match="needs root_dir"):
        _confine.ConfinementSpec(temp_dir="/tmp", mount_namespace=True)
    with pytest.raises(ValueError, match="not absolute"):
        _confine.ConfinementSpec(temp_dir="tmp")
    with pytest.raises(ValueError, match="unknown layers"):
        _confine.ConfinementSpec(temp_dir="/tmp", layers=frozenset({"landlok"}))


def _process_state() -> dict[str, str]:
    status = Path("/proc/self/status").read_text().splitlines()
    keep = ("NoNewPrivs", "Seccomp", "Seccomp_filters", "Uid", "Gid", "CapEff", "Threads")
    state = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in status if line.startswith(keep)}
    state["netns"] = os.readlink("/proc/self/ns/net")
    state["userns"] = os.readlink("/proc/self/ns/user")
    state["env"] = json.dumps(dict(os.environ), sort_keys=True)
    return state


def test_probe_layers_reports_every_layer_and_changes_nothing() -> None:
    before = _process_state()
    status = _confine.probe_layers()
    assert _process_state() == before
    assert list(status) == list(_confine.ALL_LAYERS)
    for name, layer in status.items():
        assert layer.reason, f"layer {name} has no reason"
        json.dumps(layer.to_dict())
    abi = _landlock.get_abi_version()
    assert status["landlock"].abi == abi
    assert status["landlock"].available == (abi >= 1)
    assert status["seccomp"].available == _seccomp.is_filter_supported()
    assert status["rlimits"].available and status["pdeathsig"].available


def test_probe_reports_uid_unavailable_when_a_path_is_unreadable(dirs: Dirs) -> None:
    if os.geteuid() != 0:
        pytest.skip("the uid layer needs a root host; an unprivileged host uses user_namespace")
    private = dirs.base / "private"
    private.mkdir(mode=0o700)
    spec = _confine.ConfinementSpec(temp_dir=str(dirs.temp), read_only_paths=(str(private),), uid=NOBODY)
    status = _confine.probe_layers(spec)["uid"]
    assert not status.available
    assert str(private) in status.reason and "0700" in status.reason


def test_report_lists_layers_in_force(dirs: Dirs, full_stack: None) -> None:
    run = run_hostile("introspect", dirs, lock=True)
    report = run.report
    assert report.list_in_force() == [name for name in _confine.ALL_LAYERS if name not in POOL_ONLY_LAYERS]
    for name in POOL_ONLY_LAYERS:
        assert report.layers[name].state == "not_requested", report.layers[name]
    assert report.landlock_abi == _landlock.get_abi_version()
    assert report.list_missing(["landlock", "seccomp", "uid"]) == ["uid"]
    json.dumps(report.to_dict())
    # The same state, read from inside the worker.
    inside = run.result
    assert inside["no_new_privs"] == 1
    assert inside["seccomp_mode"] == 2
    assert inside["pdeathsig"] == signal.SIGKILL
    assert inside["rlimits"]["RLIMIT_DATA"] == [512 * 2**20] * 2
    assert inside["rlimits"]["RLIMIT_CPU"] == [20, 21]
    assert inside["rlimits"]["RLIMIT_CORE"] == [0, 0]
    assert inside["netns_inode"] != os.stat("/proc/self/ns/net").st_ino
    assert inside["environ"] == {"PATH": "/usr/bin:/bin", "TMPDIR": str(dirs.temp), "MALLOC_ARENA_MAX": "2"}
    assert inside["open_fds"][:3] == [0, 1, 2] and len(inside["open_fds"]) == 4  # + the result pipe
    assert inside["stdin_is_devnull"] and inside["stdout_is_devnull"] and inside["session_leader"]
    assert inside["root_listing"] == "denied"


def test_confine_refuses_a_process_with_two_threads(dirs: Dirs) -> None:
    run = run_hostile("introspect", dirs, threads=1)
    refused = run.stage("refused")
    assert refused["layer"] == "threads"
    assert "has 2 threads" in refused["reason"]
    assert run.returncode == 3


# ---------------------------------------------------------------------------------------------------------
# network


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        ("AF_INET", "SOCK_STREAM"),
        ("AF_INET", "SOCK_DGRAM"),
        ("AF_INET6", "SOCK_STREAM"),
        ("AF_NETLINK", "SOCK_RAW"),
        ("AF_PACKET", "SOCK_RAW"),
    ],
)
def test_non_unix_socket_families_are_refused(dirs: Dirs, full_stack: None, family: str, kind: str) -> None:
    assert_errno(run_hostile("open_socket", dirs, [family, kind]), errno.EAFNOSUPPORT)


# Each profile alone must stop the connection; the full stack stops it at socket().
_NET_PROFILES: dict[str, tuple[dict[str, Any], tuple[str, ...], int]] = {
    "full": ({}, ("seccomp",), errno.EAFNOSUPPORT),
    "landlock_only": (
        {
            "layers": ["pdeathsig", "rlimits", "no_new_privs", "landlock"],
            "user_namespace": False,
            "unshare_net": False,
        },
        ("landlock",),
        errno.EACCES,
    ),
    "netns_only": (
        {"layers": ["pdeathsig", "rlimits", "netns", "userns"]},
        ("netns", "userns"),
        errno.ENETUNREACH,
    ),
}


def _profile_spec(dirs: Dirs, overrides: dict[str, Any]) -> dict[str, Any]:
    spec = make_spec(dirs, **overrides)
    spec["required_layers"] = [
        name for name in spec["required_layers"] if name in spec.get("layers", spec["required_layers"])
    ]
    if not spec["user_namespace"]:
        spec["required_layers"] = [n for n in spec["required_layers"] if n not in ("userns", "netns")]
    return spec


@pytest.mark.parametrize("profile", list(_NET_PROFILES))
def test_tcp_connect_to_loopback_never_arrives(dirs: Dirs, require_layers: Callable[..., None], profile: str) -> None:
    overrides, layers, expected = _NET_PROFILES[profile]
    require_layers(*layers)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        run = run_hostile("tcp_connect", dirs, port, spec=_profile_spec(dirs, overrides))
        assert_errno(run, expected)
        with pytest.raises(BlockingIOError):
            listener.accept()


@pytest.mark.parametrize("profile", ["full", "netns_only"])
def test_udp_send_to_loopback_never_arrives(dirs: Dirs, require_layers: Callable[..., None], profile: str) -> None:
    # Landlock (ABI <= 7) has no UDP rules, so there is no landlock_only case here.
    overrides, layers, expected = _NET_PROFILES[profile]
    require_layers(*layers)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        run = run_hostile("udp_send", dirs, listener.getsockname()[1], spec=_profile_spec(dirs, overrides))
        assert_errno(run, expected)
        with pytest.raises(BlockingIOError):
            listener.recv(64)


def test_unix_socket_works_until_lock_sockets_then_refused_in_every_thread(dirs: Dirs, full_stack: None) -> None:
    result = run_hostile("unix_socket_then_lock", dirs).result
    assert result["before"] == {"ok": True}
    assert result["layer"] == "in_force"
    # The thread existed before lock_sockets: only TSYNC can have reached it.
    assert result["thread_after"]["socket"] == {"ok": False, "errno": errno.EPERM}
    assert result["thread_after"]["socketpair"] == {"ok": False, "errno": errno.EPERM}
    assert result["main_after"] == {"ok": False, "errno": errno.EPERM}


# ---------------------------------------------------------------------------------------------------------
# filesystem


@pytest.mark.parametrize("target", ["/etc/shadow", "/proc/1/environ", "outside", "symlink"])
def test_reads_outside_allowed_paths_are_denied(dirs: Dirs, full_stack: None, target: str) -> None:
    path = {"outside": str(dirs.secret), "symlink": str(dirs.plugin / "link-to-secret")}.get(target, target)
    assert_errno(run_hostile("read_file", dirs, path), errno.EACCES)


def test_plugin_dir_is_readable(dirs: Dirs, full_stack: None) -> None:
    assert run_hostile("read_file", dirs, str(dirs.plugin / "plugin.py")).result == {"read_bytes": 10}


@pytest.mark.parametrize("where", ["outside", "plugin"])
def test_writes_outside_the_temp_dir_are_denied(dirs: Dirs, full_stack: None, where: str) -> None:
    target = (dirs.outside if where == "outside" else dirs.plugin) / "dropped.txt"
    assert_errno(run_hostile("write_file", dirs, str(target)), errno.EACCES)
    assert not target.exists()


def test_writes_inside_the_temp_dir_work(dirs: Dirs, full_stack: None) -> None:
    result = run_hostile("write_temp", dirs).result
    assert result == {
        "path": str(dirs.temp / "control.txt"),
        "mkstemp_dir": str(dirs.temp),
        "tmpdir_env": str(dirs.temp),
    }
    assert (dirs.temp / "control.txt").read_text() == "inside"


def test_file_size_beyond_fsize_gives_efbig(dirs: Dirs, full_stack: None) -> None:
    run = run_hostile("write_big_file", dirs, 2, spec=make_spec(dirs, file_size_mb=1))
    assert_errno(run, errno.EFBIG)
    assert (dirs.temp / "big.bin").stat().st_size == 2**20


# ---------------------------------------------------------------------------------------------------------
# processes


@pytest.mark.parametrize("action", ["do_fork", "run_subprocess", "exec_shell"])
def test_new_processes_and_exec_are_refused(dirs: Dirs, full_stack: None, action: str) -> None:
    assert_errno(run_hostile(action, dirs), errno.EPERM)


@pytest.mark.parametrize("action", ["ptrace_parent", "signal_parent", "unshare_user"])
def test_reaching_outside_the_process_is_refused(dirs: Dirs, full_stack: None, action: str) -> None:
    assert_errno(run_hostile(action, dirs), errno.EPERM)


def _nr(name: str) -> int:
    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))


_CLONE_THREAD = 0x00010000
_RAW_SYSCALLS: dict[str, tuple[list[int], int]] = {
    # name: (arguments, expected errno). Arguments are harmless: without the filter these fail with
    # EFAULT/EINVAL/ENOTTY or do nothing, so a broken filter shows up as a wrong errno, not damage.
    "mount": ([0, 0, 0, 0, 0], errno.EPERM),
    "umount2": ([0, 0], errno.EPERM),
    "pivot_root": ([0, 0], errno.EPERM),
    "move_mount": ([0, 0, 0, 0, 0], errno.EPERM),
    "open_tree": ([0, 0, 0], errno.EPERM),
    "fsopen": ([0, 0], errno.EPERM),
    "mount_setattr": ([0, 0, 0, 0, 0], errno.EPERM),
    "setns": ([0, 0], errno.EPERM),
    "chroot": ([0], errno.EPERM),
    "bpf": ([0, 0, 0], errno.EPERM),
    "perf_event_open": ([0, 0, 0, 0, 0], errno.EPERM),
    "userfaultfd": ([0], errno.EPERM),
    "io_uring_setup": ([1, 0], errno.EPERM),
    "keyctl": ([0, 0, 0, 0, 0], errno.EPERM),
    "add_key": ([0, 0, 0, 0, 0], errno.EPERM),
    "kexec_load": ([0, 0, 0, 0], errno.EPERM),
    "init_module": ([0, 0, 0], errno.EPERM),
    "delete_module": ([0, 0], errno.EPERM),
    "reboot": ([0, 0, 0, 0], errno.EPERM),
    "swapoff": ([0], errno.EPERM),
    "process_vm_readv": ([1, 0, 0, 0, 0, 0], errno.EPERM),
    "personality": ([0x0006], errno.EPERM),  # PER_BSD
    "ioctl": ([0, 0x5412, 0], errno.EPERM),  # TIOCSTI on fd 0
    "clone": ([_CLONE_THREAD | 0x40000000, 0, 0, 0, 0], errno.EPERM),  # a "thread" in a new netns
    "clone3": ([0, 0], errno.ENOSYS),  # ENOSYS, so glibc falls back to clone for threads
}


@pytest.mark.parametrize("name", list(_RAW_SYSCALLS))
def test_denied_syscalls_fail_with_the_filter_errno(dirs: Dirs, full_stack: None, name: str) -> None:
    args, expected = _RAW_SYSCALLS[name]
    assert_errno(run_hostile("raw_syscall", dirs, [_nr(name), *args]), expected)


def test_x32_syscall_kills_the_process(dirs: Dirs, full_stack: None) -> None:
    run = run_hostile("x32_syscall", dirs)
    assert run.returncode == -signal.SIGSYS, run.lines
    assert [line["stage"] for line in run.lines] == ["confined"]


def test_threads_still_start_after_confinement(dirs: Dirs, full_stack: None) -> None:
    assert run_hostile("start_thread", dirs, lock=True).result == {"results": [499500] * 4}


def test_worker_dies_with_its_parent(dirs: Dirs, full_stack: None) -> None:
    assert_dies_with_parent(dirs, make_spec(dirs), sys.executable, ())


def assert_dies_with_parent(dirs: Dirs, spec: dict[str, Any], python: str, sys_path: tuple[str, ...]) -> None:
    read_fd, write_fd = os.pipe()
    config = {"spec": spec, "action": "sleep", "arg": 15, "result_fd": write_fd, "sys_path": list(sys_path)}
    cmd = [
        sys.executable,
        "-I",
        "-c",
        _INTERMEDIATE_PARENT,
        json.dumps([runner_command(config, python), write_fd]),
    ]
    worker_pid = 0
    parent = subprocess.Popen(cmd, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
    try:
        os.close(write_fd)
        ready, _, _ = select.select([read_fd], [], [], CHILD_TIMEOUT_S)
        assert ready, "the worker never reported that it was confined"
        line = json.loads(os.read(read_fd, 65536).decode().splitlines()[0])
        assert line["stage"] == "confined", line
        worker_pid = line["pid"]
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while _is_alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _is_alive(worker_pid), "the worker outlived its parent: PDEATHSIG is not armed"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(5)
        if worker_pid and _is_alive(worker_pid) and "_runner.py" in _cmdline(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
        os.close(read_fd)


def _is_alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------
# resources


def test_allocation_beyond_rlimit_data_raises_memoryerror_and_the_worker_lives(dirs: Dirs, full_stack: None) -> None:
    run = run_hostile("allocate_big", dirs, 1024, spec=make_spec(dirs, memory_mb=256))
    assert run.result == {"big": "MemoryError", "after_mb": 64}
    assert run.returncode == 0


def test_cpu_spin_beyond_rlimit_cpu_is_killed_by_sigxcpu(dirs: Dirs, full_stack: None) -> None:
    run = run_hostile("spin_cpu", dirs, 15, spec=make_spec(dirs, cpu_time_s=1))
    assert run.returncode == -signal.SIGXCPU, run.stderr
    assert [line["stage"] for line in run.lines] == ["confined"]


# ---------------------------------------------------------------------------------------------------------
# uid drop


@pytest.fixture
def uid_dirs(dirs: Dirs, require_layers: Callable[..., None]) -> Dirs:
    """The dirs, with the temp and socket dirs owned by the worker uid (as the pool makes them)."""
    require_layers("uid", "landlock", "seccomp", "mountns")
    for path in (dirs.temp, dirs.sock):
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o700)
    (dirs.base / "root").mkdir()
    return dirs


def _uid_spec(dirs: Dirs) -> dict[str, Any]:
    """A uid drop in a private root, as the pool confines its workers: the runtime is reachable through
    the binds wherever it lives (this very checkout may lie below a 0700 directory)."""
    required = [n for n in _confine.ALL_LAYERS if n not in ("userns", "cgroup", "pidns")]
    return make_spec(
        dirs,
        user_namespace=False,
        uid=NOBODY,
        required_layers=required,
        mount_namespace=True,
        root_dir=str(dirs.base / "root"),
        temp_dir="/tmp",
    )


def test_uid_drop_to_nobody(uid_dirs: Dirs) -> None:
    run = run_hostile("introspect", uid_dirs, spec=_uid_spec(uid_dirs))
    assert run.report.is_in_force("uid") and run.report.is_in_force("mountns")
    assert run.result["resuid"] == [NOBODY] * 3
    assert run.result["groups"] == []
    assert run.result["pdeathsig"] == signal.SIGKILL  # armed again after setresuid


def test_uid_drop_hides_root_only_files_in_the_plugin_dir(uid_dirs: Dirs) -> None:
    private = uid_dirs.plugin / "root-only.txt"
    private.write_text("root only")
    private.chmod(0o600)
    run = run_hostile("read_file", uid_dirs, str(private), spec=_uid_spec(uid_dirs))
    assert_errno(run, errno.EACCES)


def test_uid_dropped_worker_dies_with_its_parent(uid_dirs: Dirs) -> None:
    assert_dies_with_parent(uid_dirs, _uid_spec(uid_dirs), sys.executable, ())


def test_required_uid_drop_refuses_an_unreadable_runtime(dirs: Dirs, require_layers: Callable[..., None]) -> None:
    # Without a private root the uid must pass every directory above each read-only path itself.
    require_layers("uid")
    private = dirs.base / "private-runtime"
    private.mkdir(mode=0o700)
    required = [n for n in _confine.ALL_LAYERS if n not in ("userns", "cgroup", "pidns", "mountns")]
    spec = make_spec(dirs, user_namespace=False, uid=NOBODY, required_layers=required)
    spec["read_only_paths"] = [*spec["read_only_paths"], str(private)]
    run = run_hostile("introspect", dirs, spec=spec)
    refused = run.stage("refused")
    assert refused["layer"] == "uid"
    assert f"does not let uid {NOBODY} reach" in refused["reason"] and "mount namespace" in refused["reason"]
    blocked_before = [
        p for p in _confine.default_read_only_paths() if _confine._find_inaccessible_path(p, NOBODY, NOBODY, os.R_OK)
    ]
    if not blocked_before:  # otherwise the runtime itself is the first unreadable path (a 0700 checkout)
        assert str(private) in refused["reason"]
