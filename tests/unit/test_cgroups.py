"""Finding the host's own cgroup in v1 and v2 layouts, and the limit files a worker's group gets.

The files here are real files laid out like /proc/self/cgroup, mountinfo and a cgroup tree; the kernel's
side (joining, OOM kills) is tested for real in tests/sandbox/test_isolation.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from plugin_pool.sandbox import cgroups


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_v1_hierarchies_are_found_below_a_nested_memory_group(tmp_path: Path) -> None:
    proc = _write(
        tmp_path / "cgroup",
        "8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n",
    )
    info = _write(
        tmp_path / "mountinfo",
        "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "31 25 0:27 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n"
        "32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "33 25 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "34 25 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    )
    version, dirs = cgroups.find_cgroup_dirs(proc, info)
    assert version == 1
    assert dirs == {
        "memory": Path("/sys/fs/cgroup/memory/process_api/abc"),
        "pids": Path("/sys/fs/cgroup/pids"),
        "cpu": Path("/sys/fs/cgroup/cpu"),
        "cpuacct": Path("/sys/fs/cgroup/cpuacct"),
    }


def test_v2_is_used_when_its_root_offers_the_controllers(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    proc = _write(tmp_path / "cgroup", "0::/system.slice/scanner.service\n")
    info = _write(tmp_path / "mountinfo", f"25 1 0:24 / {root} rw - cgroup2 cgroup2 rw\n")
    version, dirs = cgroups.find_cgroup_dirs(proc, info)
    assert version == 2
    assert set(dirs) == {"memory", "pids", "cpu"}
    assert set(dirs.values()) == {root / "system.slice/scanner.service"}


def test_no_usable_hierarchy_says_what_is_missing(tmp_path: Path) -> None:
    proc = _write(tmp_path / "cgroup", "4:memory:/\n0::/\n")
    info = _write(tmp_path / "mountinfo", "32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    with pytest.raises(OSError, match="no cgroup v1 hierarchy for pids, cpu, cpuacct"):
        cgroups.find_cgroup_dirs(proc, info)


def test_a_v2_worker_group_gets_memory_swap_pids_and_cpu_limits(tmp_path: Path) -> None:
    group = tmp_path / "w1"
    group.mkdir()
    for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.max"):
        (group / name).write_text("max\n")
    worker = cgroups.WorkerCgroup(2, dict.fromkeys(("memory", "pids", "cpu"), group))
    cgroups._apply_limits(worker, cgroups.CgroupLimits(memory_mb=256, max_threads=96, cpu_quota=0.5))
    assert (group / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "pids.max").read_text() == "96"
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert worker.procs_files == (str(group / "cgroup.procs"),)
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (group / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert worker.get_oom_kills() == 1
    assert worker.get_cpu_seconds() == 2.5


def _report() -> Any:
    from plugin_pool.sandbox import _confine

    layers = {name: _confine.LayerOutcome("not_requested", "") for name in _confine.ALL_LAYERS}
    return _confine.ConfinementReport(layers=layers, landlock_abi=0, uid=0, gid=0)


def test_a_worker_checks_the_host_moved_it_before_its_plugin_is_imported(tmp_path: Path) -> None:
    from plugin_pool.sandbox import _confine

    dirs = (
        "/sys/fs/cgroup/memory/process_api/abc/plugin-pool-7-beef/w3",
        "/sys/fs/cgroup/pids/plugin-pool-7-beef/w3",
    )
    spec = _confine.ConfinementSpec(temp_dir="/tmp", cgroup_dirs=dirs)
    moved = tmp_path / "moved"
    moved.write_text("8:pids:/plugin-pool-7-beef/w3\n4:memory:/process_api/abc/plugin-pool-7-beef/w3\n0::/\n")
    stayed = tmp_path / "stayed"
    stayed.write_text("8:pids:/plugin-pool-7-beef/w3\n4:memory:/process_api/abc\n0::/\n")
    for path, state in ((moved, "in_force"), (stayed, "skipped")):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert _confine.check_cgroups(spec, _report(), fd).layers["cgroup"].state == state
        finally:
            os.close(fd)
    required = _confine.ConfinementSpec(
        temp_dir="/tmp", cgroup_dirs=dirs, required_layers=frozenset({"cgroup"}) | _confine.DEFAULT_REQUIRED_LAYERS
    )
    fd = os.open(stayed, os.O_RDONLY)
    try:
        with pytest.raises(_confine.ConfinementError, match="not in its groups"):
            _confine.check_cgroups(required, _report(), fd)
    finally:
        os.close(fd)
