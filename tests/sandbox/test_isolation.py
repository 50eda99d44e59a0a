"""The isolation layers of a worker, each alone in a real confined process, each with a positive control.

Every test runs the same hostile action twice or more: once under a profile without the layer (the
attack must work: the control proves the test can fail), and once with the layer alone (and, where it
matters, under the full stack). Evidence is taken from outside the confined process: a victim's
priority, limits and scheduling read from /proc, the host's own file system, cgroup counters, whether
the process still lives. Victims are children this test starts; nothing else is ever targeted.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from _confined import CHILD_TIMEOUT_S, NOBODY, Dirs, assert_errno, make_spec, run_hostile, runner_command

from plugin_pool.sandbox import cgroups

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(60)]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_IOPRIO_GET = 252  # x86_64
_IOPRIO_WHO_PROCESS = 1

# Only what the layer under test needs besides the always-on steps; all run as the real root of the host
# (no user namespace), the worst case: the kernel would allow every attack, so only the layer stops it.
BARE = {"layers": ["pdeathsig", "rlimits"], "required_layers": ["pdeathsig", "rlimits"]}
SECCOMP_ONLY = {
    "layers": ["pdeathsig", "rlimits", "no_new_privs", "seccomp"],
    "required_layers": ["pdeathsig", "rlimits", "no_new_privs", "seccomp"],
}


def profile(dirs: Dirs, base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return make_spec(dirs, user_namespace=False, unshare_net=False, **{**base, **overrides})


# -- reaching other processes -------------------------------------------------------------------------------


@pytest.fixture
def victim() -> Iterator[int]:
    """A process of this test's own uid that the attacks aim at (and nothing else)."""
    proc = subprocess.Popen([sys.executable, "-I", "-c", "import time; time.sleep(40)"], stdin=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(5)


def victim_state(pid: int) -> dict[str, Any]:
    """What the attacks would change, read from outside."""
    ioprio = _libc.syscall(_SYS_IOPRIO_GET, _IOPRIO_WHO_PROCESS, pid)
    return {
        "nice": os.getpriority(os.PRIO_PROCESS, pid),
        "nofile": resource.prlimit(pid, resource.RLIMIT_NOFILE),
        "policy": os.sched_getscheduler(pid),
        "affinity": sorted(os.sched_getaffinity(pid)),
        "ioprio": ioprio,
        "stopped": psutil.Process(pid).status() == psutil.STATUS_STOPPED,
    }


ATTACKS = ["setpriority", "prlimit", "sched_setscheduler", "sched_setaffinity", "ioprio_set", "stop"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_calls_that_name_another_process_work_without_seccomp(dirs: Dirs, victim: int, attack: str) -> None:
    if attack == "sched_setaffinity" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: an affinity of {0} changes nothing")
    before = victim_state(victim)
    run = run_hostile("harm_neighbour", dirs, [attack, victim], spec=profile(dirs, BARE))
    assert run.result == {"done": True}, run.stderr
    assert victim_state(victim) != before  # the control: the attack reaches the victim


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("stack", ["seccomp_only", "full"])
def test_calls_that_name_another_process_are_refused(
    dirs: Dirs, victim: int, require_layers: Callable[..., None], attack: str, stack: str
) -> None:
    require_layers("seccomp")
    spec = profile(dirs, SECCOMP_ONLY) if stack == "seccomp_only" else make_spec(dirs)
    before = victim_state(victim)
    run = run_hostile("harm_neighbour", dirs, [attack, victim], spec=spec)
    assert_errno(run, errno.EPERM)
    assert victim_state(victim) == before


def test_the_worker_may_still_change_itself(dirs: Dirs, require_layers: Callable[..., None]) -> None:
    require_layers("seccomp")
    run = run_hostile("raw_syscall", dirs, [_nr("setpriority"), 0, 0, 5], spec=profile(dirs, SECCOMP_ONLY))
    assert run.result == {"returned": 0}


def _nr(name: str) -> int:
    import pyseccomp  # type: ignore[import-untyped,unused-ignore]

    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))


UNUSED_UID = 1879113727  # the last uid of the default range: no process has it while this test runs


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("setpriority", [2, UNUSED_UID, 19]),  # PRIO_USER: every process of a uid
        ("setpriority", [1, 0, 19]),  # PRIO_PGRP (its own group holds only itself)
        ("kill", [2**32 - 1, 0]),  # kill(-1, 0): may it signal every process? (signal 0 delivers nothing)
        ("kcmp", [0, 0, 0, 0, 0]),  # the kernel answers ESRCH; the filter refuses kcmp whatever it names
    ],
)
@pytest.mark.parametrize("stack", ["bare", "seccomp_only"])
def test_calls_that_reach_many_processes_are_refused(
    dirs: Dirs, require_layers: Callable[..., None], call: str, args: list[int], stack: str
) -> None:
    run = run_hostile(
        "raw_syscall", dirs, [_nr(call), *args], spec=profile(dirs, BARE if stack == "bare" else SECCOMP_ONLY)
    )
    if stack == "bare":  # the control: the kernel itself does not refuse these to root
        assert run.result.get("error", {}).get("errno") != errno.EPERM, run.result
        return
    require_layers("seccomp")
    assert_errno(run, errno.EPERM)


# PR_SET_DUMPABLE, KEEPCAPS, SECUREBITS, MM, CHILD_SUBREAPER, CAP_AMBIENT, SPECULATION_CTRL, IO_FLUSHER, PTRACER
PRCTL_OPTIONS = [4, 8, 28, 35, 36, 47, 53, 57, 0x59616D61]
# PR_SET_MM and PR_SET_IO_FLUSHER need CAP_SYS_RESOURCE, which root may lack (a container): the kernel then
# refuses them itself, so their control says nothing.
_NEED_SYS_RESOURCE = (35, 57)


@pytest.mark.parametrize("option", [o for o in PRCTL_OPTIONS if o not in _NEED_SYS_RESOURCE])
def test_prctl_options_are_not_refused_by_the_kernel_itself(dirs: Dirs, option: int) -> None:
    # Arguments that are harmless or invalid anyway: without the filter the kernel answers (0, EINVAL...).
    run = run_hostile("raw_syscall", dirs, [_nr("prctl"), option, 0, 0, 0, 0], spec=profile(dirs, BARE))
    assert run.result.get("error", {}).get("errno") != errno.EPERM, run.result


@pytest.mark.parametrize("option", PRCTL_OPTIONS)
def test_prctl_options_that_undo_confinement_are_refused(
    dirs: Dirs, require_layers: Callable[..., None], option: int
) -> None:
    require_layers("seccomp")
    spec = profile(dirs, SECCOMP_ONLY)
    assert_errno(run_hostile("raw_syscall", dirs, [_nr("prctl"), option, 0, 0, 0, 0], spec=spec), errno.EPERM)


@pytest.mark.parametrize("stack", ["bare", "seccomp_only", "full"])
def test_socket_nodes_cannot_be_made_in_the_socket_directory(
    dirs: Dirs, require_layers: Callable[..., None], stack: str
) -> None:
    # grpc may make its socket there, so Landlock allows MAKE_SOCK: without the filter a worker could fill
    # that host directory with socket inodes made by mknod, which needs no privilege.
    spec = {"bare": profile(dirs, BARE), "seccomp_only": profile(dirs, SECCOMP_ONLY), "full": make_spec(dirs)}[stack]
    node = dirs.sock / "made-by-mknod"
    run = run_hostile("make_node", dirs, [str(node), "socket"], spec=spec)
    if stack == "bare":
        assert run.result == {"made": str(node)}
        assert node.exists()  # the control, seen from outside
        return
    require_layers("seccomp")
    assert_errno(run, errno.EPERM)
    assert not node.exists()


# -- the tie to the parent ------------------------------------------------------------------------------------

# Starts the runner, then waits to be killed. With "pidns" it first makes a PID namespace and forks its init,
# which starts the runner: the runner then lives in that namespace, and the init's pid is printed.
_PARENT = """
import ctypes, json, os, subprocess, sys, time
cmd, fd, mode = json.loads(sys.argv[1])
if mode == "pidns":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x20000000) != 0:
        raise SystemExit("unshare(CLONE_NEWPID): " + os.strerror(ctypes.get_errno()))
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        time.sleep(30)
        raise SystemExit
print(os.getpid(), flush=True)
subprocess.Popen(cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL)
time.sleep(30)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survive_parent(dirs: Dirs, spec: dict[str, Any], mode: str) -> tuple[dict[str, Any], bool]:
    """Run drop_pdeathsig under an intermediate parent; kill that parent once the runner has dropped its
    death signal; return (what the runner said, whether it outlived its parent for 3 s)."""
    read_fd, write_fd = os.pipe()
    config = {"spec": spec, "action": "drop_pdeathsig", "arg": 20, "result_fd": write_fd, "sys_path": []}
    cmd = [sys.executable, "-I", "-c", _PARENT, json.dumps([runner_command(config, sys.executable), write_fd, mode])]
    parent = subprocess.Popen(cmd, pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    runner = 0
    try:
        os.close(write_fd)
        assert parent.stdout is not None
        killable = int(parent.stdout.readline())
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        buffer = b""
        while not any(line["stage"] == "dropped" for line in lines):
            assert time.monotonic() < deadline, f"the runner never dropped its death signal: {lines}"
            if select.select([read_fd], [], [], 0.5)[0]:
                chunk = os.read(read_fd, 65536)
                assert chunk, f"the runner ended early: {lines}"
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += [json.loads(line) for line in complete if line.strip()]
        confined = next(line for line in lines if line["stage"] == "confined")
        dropped = next(line for line in lines if line["stage"] == "dropped")
        runner = int(confined["host_pid"])
        os.kill(killable, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while _alive(runner) and time.monotonic() < deadline:
            time.sleep(0.02)
        return dropped, _alive(runner)
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()
        if runner and _alive(runner) and "_runner.py" in " ".join(psutil.Process(runner).cmdline()):
            os.kill(runner, signal.SIGKILL)
        os.close(read_fd)


def test_a_worker_that_drops_its_death_signal_outlives_its_parent_without_seccomp_or_pidns(dirs: Dirs) -> None:
    dropped, survived = survive_parent(dirs, profile(dirs, BARE), "plain")
    assert dropped == {"stage": "dropped", "errno": None, "pdeathsig": 0}
    assert survived  # the control: the attack works where nothing stops it


def test_seccomp_keeps_the_death_signal(dirs: Dirs, require_layers: Callable[..., None]) -> None:
    require_layers("seccomp")
    dropped, survived = survive_parent(dirs, profile(dirs, SECCOMP_ONLY), "plain")
    assert dropped == {"stage": "dropped", "errno": errno.EPERM, "pdeathsig": signal.SIGKILL}
    assert not survived


def test_a_pid_namespace_takes_the_worker_with_its_init(dirs: Dirs, require_layers: Callable[..., None]) -> None:
    require_layers("pidns")
    # No seccomp: the worker really drops its death signal, and still dies with the namespace's init.
    dropped, survived = survive_parent(dirs, profile(dirs, BARE), "pidns")
    assert dropped == {"stage": "dropped", "errno": None, "pdeathsig": 0}
    assert not survived


# -- memory outside RLIMIT_DATA, threads ---------------------------------------------------------------------


@pytest.fixture
def cgroup_tree(require_layers: Callable[..., None]) -> Iterator[cgroups.CgroupTree]:
    require_layers("cgroup")
    tree = cgroups.CgroupTree()
    tree.open()
    try:
        yield tree
    finally:
        tree.close()


def _worker_group(tree: cgroups.CgroupTree, memory_mb: int = 96, max_threads: int = 64) -> cgroups.WorkerCgroup:
    limits = cgroups.CgroupLimits(memory_mb=memory_mb, max_threads=max_threads, cpu_quota=0)
    return tree.create_worker(f"t{secrets.token_hex(3)}", limits)


@pytest.mark.parametrize("kind", ["shared", "memfd"])
def test_memory_that_rlimit_data_does_not_count_is_held_without_a_cgroup(dirs: Dirs, kind: str) -> None:
    run = run_hostile("hold_memory", dirs, [kind, 300], spec=profile(dirs, BARE, memory_mb=256, file_size_mb=1024))
    assert run.result == {"held_mb": 300, "kind": kind}  # 300 MiB with RLIMIT_DATA at 256: the control


@pytest.mark.parametrize("kind", ["shared", "memfd"])
def test_a_memory_cgroup_counts_shared_mappings_and_memfd(
    dirs: Dirs, cgroup_tree: cgroups.CgroupTree, kind: str
) -> None:
    group = _worker_group(cgroup_tree)
    try:
        spec = profile(
            dirs,
            {"layers": [*BARE["layers"], "cgroup"], "required_layers": [*BARE["layers"], "cgroup"]},
            memory_mb=256,
            file_size_mb=1024,
            cgroup_procs=list(group.procs_files),
        )
        run = run_hostile("hold_memory", dirs, [kind, 300], spec=spec)
        assert run.returncode == -signal.SIGKILL, run.lines
        assert [line["stage"] for line in run.lines] == ["confined"]
        assert group.get_oom_kills() == 1
    finally:
        group.remove()


def test_a_pids_cgroup_bounds_threads(dirs: Dirs, cgroup_tree: cgroups.CgroupTree) -> None:
    # Thread stacks count against RLIMIT_DATA: give it room, so only the cgroup can stop the threads.
    control = run_hostile("many_threads", dirs, 100, spec=profile(dirs, BARE, memory_mb=2048))
    assert control.result == {"started": 100, "error": None}
    group = _worker_group(cgroup_tree, max_threads=32)
    try:
        layers = [*BARE["layers"], "cgroup"]
        spec = profile(
            dirs, {"layers": layers, "required_layers": layers}, memory_mb=2048, cgroup_procs=list(group.procs_files)
        )
        result = run_hostile("many_threads", dirs, 100, spec=spec).result
        assert result["started"] < 32 and result["error"] == "can't start new thread", result
    finally:
        group.remove()


# -- a private root: the file system view, /tmp limits, a 0700 home --------------------------------------------


def private_root(dirs: Dirs, *, uid: int | None = None, **overrides: Any) -> dict[str, Any]:
    root = dirs.base / "root"
    root.mkdir(exist_ok=True)
    layers = [*BARE["layers"], "mountns"] + (["uid"] if uid is not None else [])
    return profile(
        dirs,
        {"layers": layers, "required_layers": layers},
        mount_namespace=True,
        root_dir=str(root),
        temp_dir="/tmp",
        uid=uid,
        **overrides,
    )


def test_the_temp_dir_holds_what_the_disk_holds_without_a_private_root(dirs: Dirs) -> None:
    fill = run_hostile("fill_tmp", dirs, 16, spec=profile(dirs, BARE, file_size_mb=64)).result
    assert fill == {"written_mb": 16, "errno": None, "where": str(dirs.temp)}
    assert (dirs.temp / "fill.bin").stat().st_size == 16 * 2**20  # on the host's disk: the control
    files = run_hostile("many_files", dirs, 300, spec=profile(dirs, BARE)).result
    assert files == {"made": 300, "errno": None}


def test_a_private_tmp_is_limited_in_size_and_files(dirs: Dirs, require_layers: Callable[..., None]) -> None:
    require_layers("mountns")
    spec = private_root(dirs, tmp_size_mb=4, tmp_max_files=64, file_size_mb=64)
    fill = run_hostile("fill_tmp", dirs, 16, spec=spec).result
    assert fill["errno"] == errno.ENOSPC and fill["written_mb"] <= 4 and fill["where"] == "/tmp", fill
    files = run_hostile("many_files", dirs, 300, spec=spec).result
    assert files["errno"] == errno.ENOSPC and files["made"] < 64, files
    assert list(dirs.temp.iterdir()) == []  # nothing reached the host


def test_a_private_root_holds_only_what_was_bound(dirs: Dirs, require_layers: Callable[..., None]) -> None:
    require_layers("mountns")
    # The control: the host's secret is readable when no layer stands in the way.
    assert run_hostile("read_file", dirs, str(dirs.secret), spec=profile(dirs, BARE)).result == {"read_bytes": 11}
    uid = UNUSED_UID - 1 - secrets.randbelow(1000)  # a uid of its own, as the pool gives every worker
    os.chown(dirs.sock, uid, uid)
    spec = private_root(dirs, uid=uid)
    for path in (str(dirs.secret), "/etc/shadow", f"/proc/{os.getpid()}/environ", str(dirs.temp)):
        assert_errno(run_hostile("read_file", dirs, path, spec=spec), errno.ENOENT)
    assert run_hostile("read_file", dirs, str(dirs.plugin / "plugin.py"), spec=spec).result == {"read_bytes": 10}
    seen = run_hostile("list_processes", dirs, spec=spec).result
    assert seen["pids"] == [seen["me"]]  # its own /proc (hidepid) shows no process of another uid


def test_a_private_root_reaches_a_runtime_below_a_0700_directory(
    dirs: Dirs, require_layers: Callable[..., None]
) -> None:
    require_layers("mountns", "uid")
    home = dirs.base / "home"
    lib = home / "lib"
    lib.mkdir(parents=True)
    home.chmod(0o700)  # like /root, or a private checkout made with mktemp -d
    (lib / "module.py").write_text("VALUE = 1\n")
    for path in (dirs.temp, dirs.sock):
        os.chown(path, NOBODY, NOBODY)
    # The control: without a private root the uid cannot pass the 0700 directory, and says so.
    paths = [*make_spec(dirs)["read_only_paths"], str(lib)]
    uid_only = {"layers": [*BARE["layers"], "uid"], "required_layers": [*BARE["layers"], "uid"]}
    refused = run_hostile(
        "read_file", dirs, str(lib / "module.py"), spec=profile(dirs, uid_only, uid=NOBODY, read_only_paths=paths)
    ).stage("refused")
    assert refused["layer"] == "uid" and f"does not let uid {NOBODY} reach" in refused["reason"], refused
    spec = private_root(dirs, uid=NOBODY, read_only_paths=paths)
    run = run_hostile("read_file", dirs, str(lib / "module.py"), spec=spec)
    assert run.result == {"read_bytes": 10}, run.stderr
    assert run.report.is_in_force("uid") and run.report.is_in_force("mountns")
