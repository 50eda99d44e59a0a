"""Benchmark discovery (1,000 folders) and staging (100 plugin folders), each against the old way, same run.

    .venv/bin/python scripts/bench_discovery.py            # print the tables
    .venv/bin/python scripts/bench_discovery.py --write    # also replace the discovery section of docs/benchmarks.md

Discovery: 1,000 small plugin folders (a plugin.toml and two small files each). "cold" is
``Discovery.get_result()`` on a fresh Discovery (every manifest read and validated, every file hashed);
"cached" is a later ``get_result()`` plus ``result.get(id)``; "rescan" walks and hashes again. Hashing alone
is measured twice: with the fd-based reader of ``plugin_pool.content`` (``O_NOFOLLOW|O_NONBLOCK`` opens
relative to folder descriptors, the rule that refuses links, special files and bytecode) and, as the
baseline, with the path-based walker it replaced (``os.scandir`` + ``realpath`` per entry, kept below).

Staging: 100 plugin folders of 22 files (about 330 KB each: sources, a package, a 256 KiB data file).
"single pass" is ``plugin_pool.staging.stage_plugin`` (copy and hash the same bytes, verify against the
registered hash); the baseline is what staging did before: ``shutil.copytree`` (ignoring caches), a chmod
walk, then hashing the copy with the old walker and comparing. Both run on the same folders in each
repeat, in alternating order, with the copies removed between repeats (outside the timing).

Vendored dependencies: an Untrusted plugin with a 20 MiB vendored tree (examples/bandit_scanner's ``_vendor``,
made by ``plugin-pool vendor``, padded with a data file to 20 MiB), started in a real host. "first start" is
``start_plugin`` with an empty bytecode cache (copy and hash 20 MiB, compile every source in an isolated child,
boot a worker, import); "restart" is ``stop_plugin`` + ``start_plugin`` with the cache warm (copy and hash,
bytecode restored by hard links); the baseline restart compiles again (``[sandbox] bytecode_cache = "off"``).
Import time is measured inside the confined worker (bandit's manager, config and extension loader: bandit,
stevedore, PyYAML and their imports) with the host-compiled bytecode and, as the baseline, from a copy staged
without bytecode (the worker then compiles in memory at every start: its copy is read-only).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _benchdoc import Section, Target, fmt_ratio, fmt_s, make_section, mark, measured_on, median, new_parser, run_alone

from plugin_pool.content import ContentHash, canonical_manifest, compute_content_hash
from plugin_pool.discovery import Discovery
from plugin_pool.staging import compile_bytecode, stage_plugin

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VENDORED_MIB = 20
VENDORED_PLUGIN = """\
import time

_started = time.perf_counter()
from bandit.core import config, extension_loader, manager  # noqa: E402,F401  the vendored dependency

IMPORT_S = time.perf_counter() - _started

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability  # noqa: E402


class Vendored(PluginBase):
    info = PluginInfo(id="bench-vendored", name="V", version="1", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def import_s(self, payload):
        return IMPORT_S
"""

TARGET_COLD_S = 1.0
TARGET_RATIO = 1.10
READING = (
    "Cold means the first scan of a fresh `Discovery` (files in the OS page cache, as after the folders were written "
    "or deployed). It is dominated by hashing (every file read once) and TOML parsing; the cached result is a dict "
    "lookup, so asking again costs nothing until `rescan()`, which scans in full. The fd-based reader opens every "
    "folder and file relative to its parent's descriptor and checks each file with `fstat` before reading it; the old "
    "walker resolved every entry's real path instead. Single-pass staging reads each file once and writes the same "
    "bytes while hashing them, where the old way copied the folder (`copytree`: a stat, copy and copystat per file) "
    "and then read the copy again to hash it."
)

MODULE = "from plugin_pool.sdk import PluginBase\n\n\nclass Plugin(PluginBase):\n    pass\n" + "# padding\n" * 80


def generate(root: Path, count: int) -> None:
    """``count`` plugin folders under ``root``: a manifest, a module and a rules file each."""
    for i in range(count):
        folder = root / f"plugin-{i:05d}"
        folder.mkdir()
        (folder / "plugin.toml").write_text(
            f'[plugin]\nid = "plugin-{i:05d}"\nname = "Plugin {i}"\nversion = "1.0.{i}"\n'
            f'trust_level = "untrusted"\nentry = "mod:Plugin"\npriority = {i % 7}\n\n'
            f'[capabilities.scan]\nmedia_types = ["text/plain"]\n'
        )
        (folder / "mod.py").write_text(MODULE)
        (folder / "rules.txt").write_text(f"rule {i}\n" * 20)


def generate_staged(root: Path, count: int) -> list[Path]:
    """``count`` larger plugin folders: 10 modules, a package of 10 modules, a 256 KiB data file, a manifest."""
    folders = []
    source = "def scan(payload):\n    return payload\n" + "# a line of a plugin's source code\n" * 400
    for i in range(count):
        folder = root / f"staged-{i:03d}"
        (folder / "pkg").mkdir(parents=True)
        (folder / "plugin.toml").write_text(
            f'[plugin]\nid = "staged-{i:03d}"\nname = "S"\nversion = "1.0"\ntrust_level = "untrusted"\n'
            f'entry = "m0:Plugin"\n\n[capabilities.scan]\n'
        )
        for j in range(10):
            (folder / f"m{j}.py").write_text(source)
            (folder / "pkg" / f"p{j}.py").write_text(source)
        (folder / "data.bin").write_bytes(os.urandom(256 * 1024))
        folders.append(folder)
    return folders


# -- the baseline: the path-based walker and copy-then-hash that single-pass staging replaced --------------


def old_content_hash(directory: Path) -> ContentHash:
    """The content hash as the old walker computed it (scandir, realpath per entry); the same digest."""
    real_root = os.path.realpath(directory, strict=True)
    files: dict[str, str] = {}
    stack: list[tuple[str, str, frozenset[str]]] = [(real_root, "", frozenset({real_root}))]
    while stack:
        real_dir, prefix, ancestors = stack.pop()
        with os.scandir(real_dir) as it:
            entries = list(it)
        for entry in entries:
            name = entry.name
            if name in ("__pycache__", ".git") or name.endswith((".pyc", ".pyo")):
                continue
            rel = prefix + name
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if stat.S_ISDIR(os.stat(target).st_mode):
                    stack.append((target, rel + "/", ancestors | {target}))
                else:
                    files[rel] = _old_digest(target, directory, rel)
            elif entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel + "/", ancestors | {entry.path}))
            elif entry.is_file(follow_symlinks=False):
                files[rel] = _old_digest(entry.path, directory, rel)
    return ContentHash.of_files(files)


def _old_digest(real_path: str, root: Path, rel: str) -> str:
    if rel == "plugin.toml":
        return "sha256:" + hashlib.sha256(canonical_manifest(root / rel)).hexdigest()
    fd = os.open(real_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{real_path} is not a regular file")
        want = min(st.st_size + 1, 1 << 20)
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, want)
            h.update(chunk)
            if len(chunk) < want:
                break
            want = 1 << 20
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def old_stage(source: Path, target: Path, expected: ContentHash) -> None:
    """Copy, open up the modes, hash the copy, compare: the old staging of an Untrusted folder."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dirpath, _, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    if old_content_hash(target).digest != expected.digest:
        raise AssertionError(f"{target}: the copy does not match")


def new_stage(source: Path, target: Path, expected: ContentHash) -> None:
    stage_plugin(source, target, plugin_id=source.name, expected=expected)


# -- measuring ----------------------------------------------------------------------------------------------


def measure_discovery(plugins: int, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` runs, in seconds: cold, hashing (new, old), cached lookup, rescan. Blocks."""
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        root = Path(tmp)
        generate(root, plugins)
        folders = sorted(root.iterdir())
        assert compute_content_hash(folders[0]) == old_content_hash(folders[0])  # one digest, two walkers
        cold, hashing, old_hashing, rescan, cached = [], [], [], [], []
        for repeat in range(repeats):
            order: list[tuple[list[float], Callable[[Path], ContentHash]]] = [
                (hashing, compute_content_hash),
                (old_hashing, old_content_hash),
            ]
            for times, hasher in order if repeat % 2 == 0 else reversed(order):
                started = time.perf_counter()
                for folder in folders:
                    hasher(folder)
                times.append(time.perf_counter() - started)

            discovery = Discovery([root], use_entry_points=False)
            started = time.perf_counter()
            result = discovery.get_result()
            cold.append(time.perf_counter() - started)
            assert len(result.plugins) == plugins and not result.errors, result.errors[:3]

            lookups = 100_000
            last = result.plugins[-1].plugin_id or ""
            started = time.perf_counter()
            for _ in range(lookups):
                discovery.get_result().get(last)
            cached.append((time.perf_counter() - started) / lookups)

            started = time.perf_counter()
            report = discovery.rescan()
            rescan.append(time.perf_counter() - started)
            assert report.added == report.changed == report.removed == ()
    return {
        "cold": median(cold),
        "hashing": median(hashing),
        "old_hashing": median(old_hashing),
        "cached": median(cached),
        "rescan": median(rescan),
    }


def measure_staging(plugins: int, repeats: int, compile_plugins: int) -> dict[str, float]:
    """Medians over ``repeats`` runs, in seconds, of staging ``plugins`` folders the new and the old way."""
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as tmp:
        root = Path(tmp)
        folders = generate_staged(root / "plugins", plugins)
        expected = {folder: compute_content_hash(folder) for folder in folders}
        private = root / "private"
        private.mkdir(mode=0o700)
        new_stage(folders[0], private / "warm", expected[folders[0]])  # warm imports and caches
        shutil.rmtree(private / "warm")
        new_times, old_times = [], []
        for repeat in range(repeats):
            order: list[tuple[str, list[float], Callable[[Path, Path, ContentHash], None]]] = [
                ("new", new_times, new_stage),
                ("old", old_times, old_stage),
            ]
            for name, times, stage in order if repeat % 2 == 0 else reversed(order):
                started = time.perf_counter()
                for folder in folders:
                    stage(folder, private / f"{name}-{folder.name}", expected[folder])
                times.append(time.perf_counter() - started)
                for folder in folders:
                    shutil.rmtree(private / f"{name}-{folder.name}")
        compiled: dict[str, float] = {}
        for isolated in (True, False):
            staged = [
                stage_plugin(f, private / f"c{int(isolated)}-{f.name}", plugin_id=f.name, expected=expected[f])
                for f in folders[:compile_plugins]
            ]
            started = time.perf_counter()
            for item in staged:
                report = compile_bytecode(item, isolated=isolated)
                assert report.compiled == 20 and not report.failed, report
            compiled["isolated" if isolated else "in_process"] = (time.perf_counter() - started) / len(staged)
    return {"new": median(new_times), "old": median(old_times), **compiled}


def make_vendored(root: Path) -> Path:
    """A plugin folder whose ``_vendor`` is examples/bandit_scanner's, padded to VENDORED_MIB."""
    source = EXAMPLES / "bandit_scanner" / "_vendor"
    if not source.is_dir():
        raise SystemExit(f"{source} is missing: run plugin-pool vendor {source.parent} (scripts/test does)")
    folder = root / "vendored"
    shutil.copytree(source, folder / "_vendor", ignore=shutil.ignore_patterns("__pycache__"))
    size = sum(f.stat().st_size for f in (folder / "_vendor").rglob("*") if f.is_file())
    (folder / "_vendor" / "padding.bin").write_bytes(os.urandom(max(0, VENDORED_MIB * 1048576 - size)))
    (folder / "vendored.py").write_text(VENDORED_PLUGIN)
    (folder / "plugin.toml").write_text(
        '[plugin]\nid = "bench-vendored"\nname = "V"\nversion = "1"\ntrust_level = "untrusted"\n'
        'entry = "vendored:Vendored"\n\n[capabilities.import_s]\n\n[python]\npath = ["_vendor"]\n\n'
        "[pool]\nmin_workers = 1\nmax_workers = 1\n"
    )
    return folder


def measure_vendored(repeats: int) -> dict[str, float]:
    """Medians, in seconds: first start (cold cache), restart (warm cache), restart compiling again, and the
    import inside the worker with and without host-compiled bytecode."""
    from plugin_pool import PluginHost, load_config
    from plugin_pool.lifecycle import PluginState
    from plugin_pool.sandbox.worker_client import WorkerPlan
    from plugin_pool.staging import stage_plugin as stage

    times: dict[str, list[float]] = {k: [] for k in ("first", "restart", "restart_off", "import", "import_none")}
    with tempfile.TemporaryDirectory(prefix="bench-vendored-") as tmp:
        root = Path(tmp)
        folder = make_vendored(root)
        for repeat in range(repeats):
            cache = root / f"cache-{repeat}"
            cache.mkdir(mode=0o700)
            for mode, key in ((str(cache), "restart"), ("off", "restart_off")):
                with PluginHost(load_config(overrides={"sandbox": {"bytecode_cache": mode}})) as host:
                    host.add_plugin_dir(EXAMPLES / "secrets_scanner")
                    host.start_plugin("secrets-scanner")  # the pool and its zygote are up before the timing
                    host.add_plugin_dir(folder)
                    started = time.perf_counter()
                    assert host.start_plugin("bench-vendored") is PluginState.ACTIVE, host.get_plugin_health(
                        "bench-vendored"
                    ).reason
                    if mode != "off":
                        times["first"].append(time.perf_counter() - started)
                        times["import"].append(host.invoke("bench-vendored", "import_s"))
                    host.stop_plugin("bench-vendored")
                    started = time.perf_counter()
                    assert host.start_plugin("bench-vendored") is PluginState.ACTIVE
                    times[key].append(time.perf_counter() - started)
            # The baseline import: the same copy without bytecode (a bench-only stand-in for the staging step).
            with PluginHost(load_config(overrides={"sandbox": {"bytecode_cache": "off"}})) as host:
                host.add_plugin_dir(folder)
                host.start_plugin("bench-vendored")  # opens the pool
                host.stop_plugin("bench-vendored")
                supervisor = host.sandbox.supervisor if host.sandbox is not None else None
                assert supervisor is not None and supervisor.base_dir is not None
                staged_root = supervisor.base_dir / "plugins"

                def without_bytecode(plan: WorkerPlan, staged_root: Path = staged_root) -> Path:
                    target = staged_root / f"plain-{time.monotonic_ns()}"
                    stage(plan.plugin_dir, target, plugin_id=plan.plugin_id, expected=None)
                    return target

                supervisor.stage_plugin = without_bytecode  # type: ignore[method-assign]
                assert host.start_plugin("bench-vendored") is PluginState.ACTIVE
                times["import_none"].append(host.invoke("bench-vendored", "import_s"))
    return {key: median(values) for key, values in times.items()}


def section(args: argparse.Namespace, command: str) -> Section:
    """The discovery section of docs/benchmarks.md."""
    d = measure_discovery(args.plugins, args.repeats)
    s = measure_staging(args.staged, args.repeats, args.compile_plugins)
    v = measure_vendored(max(2, args.repeats - 2))
    n, k = args.plugins, args.staged
    header = (
        f"{measured_on()}, {n:,} plugin folders of 3 small files for discovery, {k} folders of 22 files "
        f"(330 KB) for staging, median of {args.repeats} runs."
    )
    hash_ratio = d["hashing"] / d["old_hashing"]
    stage_ratio = s["new"] / s["old"]
    targets = (
        Target(
            f"cold discovery of {n:,} plugins", fmt_s(d["cold"]), f"<= {TARGET_COLD_S:g} s", d["cold"] <= TARGET_COLD_S
        ),
        Target("cached lookup", fmt_s(d["cached"]), "~0", d["cached"] < 10e-6),
        Target(
            "hashing: fd-based reader vs the old walker",
            fmt_ratio(hash_ratio),
            f"<= {TARGET_RATIO:.2f}x",
            hash_ratio <= TARGET_RATIO,
        ),
        Target(
            f"staging {k} folders: single pass vs copy-then-hash",
            fmt_ratio(stage_ratio),
            f"<= {TARGET_RATIO:.2f}x",
            stage_ratio <= TARGET_RATIO,
        ),
    )
    discovery_rows = [
        "| step | time | per plugin | target | met? |",
        "|---|---:|---:|---|:---:|",
        f"| cold discovery (read, validate, hash, order) | {fmt_s(d['cold'])} | {fmt_s(d['cold'] / n)} | "
        f"{targets[0].target} | {mark(targets[0].met)} |",
        f"| hashing alone, fd-based reader (plugin_pool.content) | {fmt_s(d['hashing'])} | {fmt_s(d['hashing'] / n)} | "
        f"{targets[2].target} of the old walker: {fmt_ratio(hash_ratio)} | {mark(targets[2].met)} |",
        f"| baseline: hashing alone, the old path-based walker | {fmt_s(d['old_hashing'])} | "
        f"{fmt_s(d['old_hashing'] / n)} |  |  |",
        f"| cached lookup (get_result().get(id)) | {fmt_s(d['cached'])} |  | {targets[1].target} | "
        f"{mark(targets[1].met)} |",
        f"| rescan (nothing changed) | {fmt_s(d['rescan'])} |  |  |  |",
    ]
    staging_rows = [
        "| staging | time | per plugin | target | met? |",
        "|---|---:|---:|---|:---:|",
        f"| single pass: stage_plugin (copy and hash the same bytes, verify) | {fmt_s(s['new'])} | "
        f"{fmt_s(s['new'] / k)} | {targets[3].target} of the old way: {fmt_ratio(stage_ratio)} | "
        f"{mark(targets[3].met)} |",
        f"| baseline: copytree, chmod walk, hash the copy, compare | {fmt_s(s['old'])} | {fmt_s(s['old'] / k)} |  |  |",
        f"| then compile_bytecode, isolated child (the default) | | {fmt_s(s['isolated'])} |  |  |",
        f"| then compile_bytecode, in-process | | {fmt_s(s['in_process'])} |  |  |",
    ]
    restart_ratio = v["restart"] / v["restart_off"]
    import_ratio = v["import"] / v["import_none"]
    targets += (
        Target(
            f"restart with a {VENDORED_MIB} MiB vendored tree: bytecode cache vs compiling again",
            fmt_ratio(restart_ratio),
            "< 1.00x",
            restart_ratio < 1.0,
        ),
        Target(
            "import in the worker: host-compiled bytecode vs none",
            fmt_ratio(import_ratio),
            "< 1.00x",
            import_ratio < 1.0,
        ),
    )
    vendored_rows = [
        f"| {VENDORED_MIB} MiB vendored tree (bandit + dependencies), Untrusted | time | target | met? |",
        "|---|---:|---|:---:|",
        f"| first start (copy and hash, compile in an isolated child, boot, import) | {fmt_s(v['first'])} |  |  |",
        f"| restart, bytecode from the cache (hard links) | {fmt_s(v['restart'])} | {targets[4].target} of "
        f"compiling again: {fmt_ratio(restart_ratio)} | {mark(targets[4].met)} |",
        f'| baseline: restart compiling again (bytecode_cache = "off") | {fmt_s(v["restart_off"])} |  |  |',
        f"| import in the confined worker, host-compiled bytecode | {fmt_s(v['import'])} | {targets[5].target} of "
        f"none: {fmt_ratio(import_ratio)} | {mark(targets[5].met)} |",
        f"| baseline: import without bytecode (compiled in memory) | {fmt_s(v['import_none'])} |  |  |",
    ]
    return make_section(
        "discovery",
        "Discovery and staging",
        command,
        header,
        "\n".join(discovery_rows),
        "\n".join(staging_rows),
        "\n".join(vendored_rows),
        READING,
        targets=targets,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "discovery")
    parser.add_argument("--plugins", type=int, default=1000, help="plugin folders to discover (default 1000)")
    parser.add_argument("--staged", type=int, default=100, help="plugin folders to stage (default 100)")
    parser.add_argument(
        "--compile-plugins", type=int, default=10, help="staged folders whose bytecode is compiled (default 10)"
    )
    parser.add_argument("--repeats", type=int, help="runs; the median is reported (default 5, quick 2)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    return args


if __name__ == "__main__":
    sys.exit(run_alone("bench_discovery.py", parse_args, section))
