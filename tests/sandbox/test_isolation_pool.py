"""Isolation through the real pool: each worker its own uid, its own view, its resources counted.

One hostile plugin per behaviour (``plugins/neighbour``, ``hog``, ``survivor``, ``bad_result``), driven
through a real host: host -> zygote (init of its PID namespace) -> confined worker. Evidence comes from
outside the worker: /proc of the target, the host's counters and audit trail, the cgroup, whether a pid
still lives. Each test also shows the attack's code works where it is allowed (on the worker itself),
and that the other plugins keep serving. The layers one by one, with controls that switch each off,
are in test_isolation.py.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _hosts import close_host, is_gone, ns_pid

from plugin_pool import PluginHost, load_config
from plugin_pool.config import parse_uid_range
from plugin_pool.errors import PayloadError, PluginNotActiveError, ResourceLimitError, WorkerCrashedError

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(90)]

PLUGINS_DIR = Path(__file__).parent / "plugins"
PLUGINS = ("echo", "neighbour", "hog", "bad_result")
MEMORY_MB = 256
TMP_SIZE_MB = 8
TMP_MAX_FILES = 64
WAIT_S = 10.0


def _config(**sandbox: Any) -> Any:
    settings = {
        "memory_mb": MEMORY_MB,
        "tmp_size_mb": TMP_SIZE_MB,
        "tmp_max_files": TMP_MAX_FILES,
        "file_size_mb": 4 * MEMORY_MB,
        "max_total_workers": 32,
        "crash_limit": 50,
        "restart_backoff_s": 0.01,
        "idle_cpu_limit": 0.3,
        **sandbox,
    }
    return load_config(overrides={"sandbox": settings, "host": {"call_timeout_s": 20.0}})


def _start(host: PluginHost, *names: str) -> PluginHost:
    host.open()
    for name in names:
        host.add_plugin_dir(PLUGINS_DIR / name)
    failed = host.start_plugins().failed
    assert not failed, failed
    return host


@pytest.fixture(scope="module")
def host() -> Iterator[PluginHost]:
    made = PluginHost(_config())
    try:
        yield _start(made, *PLUGINS)
    finally:
        close_host(made)


@pytest.fixture
def require_pool(host: PluginHost, skip_or_fail: Callable[[str], None]) -> Callable[..., None]:
    """Skip (fail under CI) unless the pool applies these layers here."""

    def require(*layers: str) -> None:
        assert host.sandbox is not None
        missing = sorted(set(layers) - set(host.sandbox.get_confinement()["applied"]))
        if missing:
            skip_or_fail(f"the pool does not apply {missing} on this machine")

    return require


def only_worker(host: PluginHost, plugin_id: str) -> int:
    """The plugin's one serving worker (its warm spare, confined the same, takes no call)."""
    assert host.sandbox is not None
    pids = host.sandbox.list_worker_pids(plugin_id, spares=False)
    assert len(pids) == 1, pids
    return pids[0]


def ids_of(pid: int) -> tuple[list[int], list[int]]:
    """(real, effective, saved, fs uids), (the same gids) of a process, from /proc."""
    uids: list[int] = []
    gids: list[int] = []
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uids = [int(v) for v in line.split()[1:]]
        elif line.startswith("Gid:"):
            gids = [int(v) for v in line.split()[1:]]
    return uids, gids


def assert_others_serve(host: PluginHost) -> None:
    token = uuid.uuid4().hex
    assert host.invoke("echo", "echo", {"token": token}) == {"token": token}


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(0.02)


# -- each worker a uid of its own; nothing else reachable -------------------------------------------------


def test_every_worker_runs_as_a_uid_and_gid_of_its_own(host: PluginHost, require_pool: Callable[..., None]) -> None:
    require_pool("uid")
    first, last = parse_uid_range(load_config().sandbox.uid_range)
    seen: dict[int, str] = {}
    for plugin_id in ("echo", "neighbour", "hog", "bad-result"):
        pid = only_worker(host, plugin_id)
        uids, gids = ids_of(pid)
        assert len(set(uids)) == 1 and set(gids) == set(uids), (uids, gids)  # real, effective, saved, fs
        uid = uids[0]
        assert first <= uid <= last, uid
        assert uid not in seen, f"{plugin_id} shares uid {uid} with {seen.get(uid)}"
        seen[uid] = plugin_id
    # From inside: the ids it reports are those, and it sees no process but itself.
    inside = host.invoke("neighbour", "whoami")
    uid = ids_of(only_worker(host, "neighbour"))[0][0]
    assert inside["ids"] == [uid] * 6
    assert inside["visible"] == [inside["pid"]]


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_a_warm_spare_is_confined_like_any_worker(host: PluginHost, require_pool: Callable[..., None]) -> None:
    require_pool("uid", "cgroup", "mountns", "pidns", "seccomp")
    assert host.sandbox is not None
    first, last = parse_uid_range(load_config().sandbox.uid_range)
    zygote = host.sandbox.supervisor.zygote_pid
    spares = {p: wait_for(lambda p=p: host.sandbox.list_spare_pids(p), f"{p}'s spare") for p in ("echo", "hog")}
    uids: dict[int, int] = {}
    for plugin_id, (spare,) in spares.items():
        serving = only_worker(host, plugin_id)
        for pid in (serving, spare):
            (uid, *_), _ = ids_of(pid)
            assert first <= uid <= last and uid not in uids.values(), (plugin_id, pid, uid)
            uids[pid] = uid
            assert psutil.Process(pid).ppid() == zygote
            status = proc_status(pid)
            assert (status["NoNewPrivs"].strip(), status["Seccomp"].strip()) == ("1", "2"), status
            assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
            assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        groups = [Path(f"/proc/{pid}/cgroup").read_text() for pid in (serving, spare)]
        assert all("plugin-pool-" in g for g in groups) and groups[0] != groups[1]  # a group of its own each
        assert os.readlink(f"/proc/{spare}/ns/mnt") != os.readlink(f"/proc/{serving}/ns/mnt")


def test_a_promoted_spare_serves_confined_as_it_was() -> None:
    spared = PluginHost(_config(spare_workers=1))
    try:
        _start(spared, "neighbour", "echo")
        assert spared.sandbox is not None
        (spare,) = wait_for(lambda: spared.sandbox.list_spare_pids("neighbour"), "the spare")
        serving = only_worker(spared, "neighbour")
        os.kill(serving, signal.SIGKILL)
        wait_for(lambda: only_worker(spared, "neighbour") == spare, "the spare to take the place")
        inside = spared.invoke("neighbour", "whoami")
        assert inside["pid"] == ns_pid(spare)
        assert inside["ids"] == [ids_of(spare)[0][0]] * 6 and inside["visible"] == [inside["pid"]]
        wait_for(lambda: spared.restarts["neighbour", "crash"] == 1, "the replacement, counted once")
        assert_others_serve(spared)
    finally:
        close_host(spared)


def as_nobody() -> list[str]:
    """A command prefix that runs the rest as uid and gid 65534 with no groups. Through setpriv, not Popen's
    ``user=``: that forks this process (many threads, gRPC streams open) and changes ids in the child before
    exec, where a fault killed the child now and then (SIGBUS/SIGSEGV before exec, also on main); setpriv is
    exec'd at once (vfork) and changes the ids itself."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        why = "setpriv (util-linux) is needed to start a process as nobody"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def nobody_victim() -> Iterator[int]:
    """A process of the shared account 'nobody', which every worker ran as before they got uids of their own."""
    # /bin/sleep, not this interpreter: nobody may not reach a checkout below a 0700 directory.
    proc = subprocess.Popen([*as_nobody(), "/bin/sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _ids_are_nobody(proc.pid), "the victim to run as nobody")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(5)


def _ids_are_nobody(pid: int) -> bool:
    status = psutil.Process(pid).status()
    assert status != psutil.STATUS_ZOMBIE, "the victim died before it ran"
    return ids_of(pid)[0] == [65534] * 4 and "sleep" in psutil.Process(pid).name()


def state_of(pid: int) -> dict[str, Any]:
    # /proc/<pid>/limits, not prlimit(2): reading another uid's limits needs CAP_SYS_RESOURCE, which root
    # may lack (a container).
    limits = Path(f"/proc/{pid}/limits").read_text()
    return {
        "nice": os.getpriority(os.PRIO_PROCESS, pid),
        "nofile": next(line for line in limits.splitlines() if line.startswith("Max open files")),
        "policy": os.sched_getscheduler(pid),
        "affinity": sorted(os.sched_getaffinity(pid)),
        "stopped": psutil.Process(pid).status() == psutil.STATUS_STOPPED,
    }


ATTACKS = ["setpriority", "prlimit", "sched_setscheduler", "sched_setaffinity", "ioprio_set", "stop"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_worker_cannot_change_another_plugins_worker_or_a_nobody_process(
    host: PluginHost, require_pool: Callable[..., None], nobody_victim: int, attack: str
) -> None:
    require_pool("uid", "pidns", "seccomp")
    sibling = only_worker(host, "echo")
    victims = {"sibling": sibling, "nobody": nobody_victim}
    before = {name: state_of(pid) for name, pid in victims.items()}
    # Every number the attacker could use: the host's pid, and the pid its own namespace gives the sibling.
    for target in (sibling, ns_pid(sibling), nobody_victim):
        result = host.invoke("neighbour", "attack", {"attack": attack, "target": target})
        assert result == {"done": False, "errno": 1}, (target, result)
    assert {name: state_of(pid) for name, pid in victims.items()} == before
    # The same code works where it is allowed: on the worker itself (pid 0 means the caller).
    if attack != "stop":
        assert host.invoke("neighbour", "attack", {"attack": attack, "target": 0}) == {"done": True, "errno": None}
    assert_others_serve(host)


@pytest.mark.parametrize("attack", ["renice_user", "stop_all"])
def test_a_worker_cannot_reach_every_process_of_a_uid(
    host: PluginHost, require_pool: Callable[..., None], nobody_victim: int, attack: str
) -> None:
    require_pool("uid", "seccomp")
    sibling = only_worker(host, "echo")
    before = {pid: state_of(pid) for pid in (sibling, nobody_victim)}
    for uid in (65534, ids_of(sibling)[0][0], ids_of(only_worker(host, "neighbour"))[0][0]):
        result = host.invoke("neighbour", "attack", {"attack": attack, "target": uid})
        assert result == {"done": False, "errno": 1}, (uid, result)
    assert {pid: state_of(pid) for pid in before} == before
    assert_others_serve(host)


# -- memory that RLIMIT_DATA does not count, and the temp dir ---------------------------------------------


@pytest.mark.parametrize("kind", ["shared", "memfd"])
def test_memory_outside_rlimit_data_is_counted_and_an_oom_kill_is_a_memory_restart(
    host: PluginHost, require_pool: Callable[..., None], kind: str
) -> None:
    require_pool("cgroup")
    assert host.invoke("hog", "hold", {"kind": kind, "mb": 32}) == {"held_mb": 32}  # under the limit: works
    pid = only_worker(host, "hog")
    before = host.restarts["hog", "memory"]
    with pytest.raises(ResourceLimitError) as caught:
        host.invoke("hog", "hold", {"kind": kind, "mb": 2 * MEMORY_MB})
    error = caught.value
    assert (error.limit, error.plugin_id, error.pid, error.capability) == ("memory", "hog", pid, "hold")
    assert "memory" in str(error)
    assert is_gone(pid)
    wait_for(lambda: host.restarts["hog", "memory"] == before + 1, "the memory restart to be counted")
    wait_for(lambda: host.sandbox is not None and host.sandbox.list_worker_pids("hog"), "a replacement")
    assert host.invoke("hog", "ping")["pid"] > 0
    assert_others_serve(host)


def test_the_temp_dir_is_a_private_tmpfs_limited_in_size_and_files(
    host: PluginHost, require_pool: Callable[..., None]
) -> None:
    require_pool("mountns")
    pid = only_worker(host, "hog")
    assert host.invoke("hog", "fill_tmp", TMP_SIZE_MB // 2) == {"written_mb": TMP_SIZE_MB // 2, "errno": None}
    full = host.invoke("hog", "fill_tmp", 10 * TMP_SIZE_MB)
    assert full["errno"] == 28 and full["written_mb"] <= TMP_SIZE_MB, full  # ENOSPC
    files = host.invoke("hog", "many_files", 10_000)
    assert files["errno"] == 28 and files["made"] < TMP_MAX_FILES, files
    assert only_worker(host, "hog") == pid  # refused, not killed: the worker serves on
    assert_others_serve(host)


def test_a_full_tmpfs_counts_in_the_memory_cgroup(require_pool: Callable[..., None]) -> None:
    require_pool("cgroup", "mountns")
    big_tmp = PluginHost(_config(tmp_size_mb=4 * MEMORY_MB))
    try:
        _start(big_tmp, "hog", "echo")
        with pytest.raises(ResourceLimitError) as caught:
            big_tmp.invoke("hog", "hold", {"kind": "tmpfs", "mb": 2 * MEMORY_MB})
        assert caught.value.limit == "memory"
        wait_for(lambda: big_tmp.restarts["hog", "memory"] == 1, "the memory restart")
        assert_others_serve(big_tmp)
    finally:
        close_host(big_tmp)


# -- CPU burned after the call returned ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_a_thread_left_spinning_is_let_be_when_the_watch_is_off() -> None:
    # The control: with idle_cpu_limit = 0 the same plugin burns CPU in an idle worker, unnoticed.
    unwatched = PluginHost(_config(idle_cpu_limit=0))
    try:
        _start(unwatched, "hog")
        assert unwatched.sandbox is not None
        pid = only_worker(unwatched, "hog")
        used = cpu_seconds(pid)
        assert unwatched.invoke("hog", "spin_after", 3.0) == {"spinning": True}
        wait_for(lambda: cpu_seconds(pid) - used > 1.0, "the idle worker to burn a second of CPU")
        assert only_worker(unwatched, "hog") == pid
        assert unwatched.restarts["hog", "cpu"] == 0
    finally:
        close_host(unwatched)


def test_a_thread_left_spinning_after_the_call_gets_the_worker_replaced(host: PluginHost) -> None:
    pid = only_worker(host, "hog")
    before = host.restarts["hog", "cpu"]
    assert host.invoke("hog", "spin_after", 30.0) == {"spinning": True}  # answers at once
    wait_for(lambda: host.restarts["hog", "cpu"] == before + 1, "the idle-CPU restart to be counted")
    # The spare took its place at once (counted then); the killed worker is reaped a moment later.
    wait_for(lambda: is_gone(pid), "the spinning worker to be killed")
    wait_for(lambda: host.sandbox is not None and host.sandbox.list_worker_pids("hog"), "a replacement")
    assert only_worker(host, "hog") != pid
    events = [e for e in host.registry.list_events(plugin_id="hog") if e.details.get("reason") == "cpu"]
    assert events, "the replacement was not audited with reason 'cpu'"
    assert_others_serve(host)


def test_idle_cpu_deaths_count_toward_the_crash_loop() -> None:
    strict = PluginHost(_config(crash_limit=2, crash_window_s=60))
    try:
        _start(strict, "hog", "echo")
        for _ in range(2):
            pid = wait_for(
                lambda: strict.sandbox is not None and strict.sandbox.list_worker_pids("hog", spares=False), "a worker"
            )
            strict.invoke("hog", "spin_after", 30.0)
            wait_for(lambda pid=pid: not strict.is_active("hog") or is_gone(pid[0]), "its death")
        health = wait_for(lambda: strict.get_health().failed.get("hog"), "the plugin to fail")
        assert "crashed 2 times" in health
        with pytest.raises(PluginNotActiveError):
            strict.invoke("hog", "ping")
        assert_others_serve(strict)
    finally:
        close_host(strict)


# -- values that would change silently, results too large for the worker ----------------------------------


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"score": math.nan}, "payload['score']"),
        ([1.0, 2.0, math.inf], "payload[2]"),
        ({"a": [{"b": -math.inf}]}, "payload['a'][0]['b']"),
    ],
)
def test_non_finite_floats_in_a_payload_are_refused_before_sending(host: PluginHost, payload: Any, where: str) -> None:
    assert host.sandbox is not None
    calls = host.sandbox.get_stats("echo").calls
    with pytest.raises(PayloadError) as caught:
        host.invoke("echo", "echo", payload)
    assert where in str(caught.value) and "NaN and Infinity" in str(caught.value)
    assert host.sandbox.get_stats("echo").calls == calls  # nothing was sent
    with pytest.raises(PayloadError) as batch:
        host.invoke_many("echo", "echo", ["fine", payload])
    assert "payloads[1]" in str(batch.value)
    assert host.invoke("echo", "echo", {"none": None}) == {"none": None}  # None itself still crosses


@pytest.mark.parametrize(("kind", "where"), [("nan", "result['score']"), ("inf_nested", "result['findings'][1]")])
def test_non_finite_floats_in_a_result_raise_payload_error(host: PluginHost, kind: str, where: str) -> None:
    with pytest.raises(PayloadError) as caught:
        host.invoke("bad-result", "result", kind)
    assert where in str(caught.value)
    with pytest.raises(PayloadError):
        host.invoke_many("bad-result", "result", ["nan"])
    assert_others_serve(host)


@pytest.mark.parametrize("kind", ["huge_string", "huge_nested"])
def test_a_result_too_large_to_send_is_a_precise_error_never_a_segfault(host: PluginHost, kind: str) -> None:
    with pytest.raises((PayloadError, ResourceLimitError)) as caught:
        host.invoke("bad-result", "result", kind)
    assert not (isinstance(caught.value, WorkerCrashedError) and caught.value.signal == signal.SIGSEGV)
    if kind == "huge_string":  # refused before encoding: the worker lives
        assert isinstance(caught.value, PayloadError) and "too large" in str(caught.value)
    wait_for(lambda: host.sandbox is not None and host.sandbox.list_worker_pids("bad-result"), "a worker")
    assert host.invoke("bad-result", "ping")["pid"] > 0
    assert_others_serve(host)


# -- surviving the host -------------------------------------------------------------------------------------

_HOST_SCRIPT = """
import json, sys
from plugin_pool import PluginHost, load_config
host = PluginHost(load_config()).open()
host.add_plugin_dir(sys.argv[1])
host.start_plugins()
pool = host.sandbox
tries = [host.invoke("survivor", "unbind") for _ in range(4)]
print(json.dumps({"zygote": pool.supervisor.zygote_pid, "workers": pool.list_worker_pids("survivor"),
                  "tries": tries}), flush=True)
sys.stdin.read()
"""


def test_workers_that_try_to_outlive_the_host_die_with_it(require_layers: Callable[..., None]) -> None:
    require_layers("pidns", "seccomp")
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOST_SCRIPT, str(PLUGINS_DIR / "survivor")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    started: list[int] = []
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=30), "the host script printed nothing within 30 s"
        info = json.loads(proc.stdout.readline())
        shim = psutil.Process(info["zygote"]).ppid()
        started = [shim, info["zygote"], *info["workers"]]
        assert len(info["workers"]) == 2
        for tried in info["tries"]:
            # EPERM from seccomp. (The death signal belongs to the worker's main thread; a capability runs in
            # an executor thread, whose own reads 0 whatever happens: test_isolation clears the main one.)
            assert tried["pdeathsig"] == 1 and tried["subreaper"] == 1, tried
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_for(lambda: all(is_gone(pid) for pid in started), "the zygote and every worker to die", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        for pid in started:
            if not is_gone(pid):
                psutil.Process(pid).kill()


# -- a host whose checkout and TMPDIR live in private (0700) directories ----------------------------------

_PRIVATE_HOST = """
import json, sys
from plugin_pool import PluginHost, load_config
with PluginHost(load_config()) as host:
    host.add_plugin_dir(sys.argv[1])
    failed = host.start_plugins().failed
    print(json.dumps({"failed": failed, "echo": None if failed else host.invoke("echo", "echo", [1, "two"]),
                      "confinement": host.sandbox.get_confinement()}), flush=True)
"""


def test_a_plugin_and_tmpdir_below_0700_directories_run_fully_confined(
    tmp_path: Path, require_layers: Callable[..., None]
) -> None:
    require_layers("uid", "mountns")
    home = tmp_path / "home"  # like /root, or a checkout made with mktemp -d
    private_tmp = home / "tmp"
    private_tmp.mkdir(parents=True)
    plugin = home / "plugins" / "echo"
    shutil.copytree(PLUGINS_DIR / "echo", plugin, ignore=shutil.ignore_patterns("__pycache__"))
    home.chmod(0o700)
    private_tmp.chmod(0o700)
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    done = subprocess.run(
        [sys.executable, "-c", _PRIVATE_HOST, str(plugin)], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = json.loads(done.stdout)
    assert out["failed"] == {} and out["echo"] == [1, "two"]
    applied = set(out["confinement"]["applied"])
    assert {"uid", "mountns", "pidns", "landlock", "seccomp"} <= applied, applied
    assert not out["confinement"]["user_namespace"]  # no fallback to the weaker mode


# -- an unprivileged host ---------------------------------------------------------------------------------


def _reachable_by(uid: int, *paths: str) -> bool:
    from plugin_pool.sandbox._confine import _find_inaccessible_path

    return all(_find_inaccessible_path(p, uid, uid, os.R_OK) is None for p in paths)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can read (pytest's tmp_path lies below a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="plugin-pool-unprivileged-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_an_unprivileged_host_confines_its_workers_in_namespaces_of_their_own(open_dir: Path) -> None:
    import plugin_pool

    runtime = (sys.prefix, sys.base_prefix, str(Path(plugin_pool.__file__).parent))
    if os.geteuid() != 0 or not _reachable_by(65534, *runtime):
        # Needs a root test process to become nobody, and a runtime nobody can read (not a 0700 checkout).
        pytest.skip("the runtime is not readable by uid 65534 here (a checkout below a 0700 directory)")
    plugin = open_dir / "echo"
    shutil.copytree(PLUGINS_DIR / "echo", plugin, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (plugin, *plugin.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    done = subprocess.run(
        [*as_nobody(), sys.executable, "-c", _PRIVATE_HOST, str(plugin)],
        env={**os.environ, "TMPDIR": "/tmp", "HOME": "/tmp"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = json.loads(done.stdout)
    assert out["failed"] == {} and out["echo"] == [1, "two"]
    confinement = out["confinement"]
    # No uid of its own and no cgroup without root; namespaces, Landlock and seccomp all the same.
    assert {"userns", "pidns", "mountns", "netns", "landlock", "seccomp", "seccomp_sockets"} <= set(
        confinement["applied"]
    ), confinement["applied"]
    assert confinement["user_namespace"] and confinement["worker_uids"] is None
