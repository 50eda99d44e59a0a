"""Benchmark discovery: 1,000 small plugin folders, cold (first scan, including hashing) and cached.

    .venv/bin/python scripts/bench_discovery.py            # print the table
    .venv/bin/python scripts/bench_discovery.py --write    # also replace the discovery section of docs/benchmarks.md

Each folder holds a plugin.toml and two small files (about 1.5 KB). "cold" is ``Discovery.get_result()`` on a
fresh Discovery (every manifest read and validated, every file hashed); "cached" is a later
``get_result()`` plus ``result.get(id)``, what the host pays to look the result up again; "rescan" walks
and hashes again. Baseline in the same run: hashing alone (``compute_content_hash`` of every folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _benchdoc import Section, Target, fmt_s, make_section, mark, measured_on, median, new_parser, run_alone

from plugin_pool.discovery import Discovery
from plugin_pool.integrity import compute_content_hash

TARGET_COLD_S = 1.0
READING = (
    "Cold means the first scan of a fresh `Discovery` (files in the OS page cache, as after the folders were written "
    "or deployed). It is dominated by hashing (every file read once) and TOML parsing; the cached result is a dict "
    "lookup, so asking again costs nothing until `rescan()`, which scans in full."
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


def measure(plugins: int, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` runs, in seconds: cold, hashing alone, cached lookup, rescan. Blocks (seconds)."""
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        root = Path(tmp)
        generate(root, plugins)
        folders = sorted(root.iterdir())
        compute_content_hash(folders[0])  # warm imports
        cold, hashing, rescan, cached = [], [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            for folder in folders:
                compute_content_hash(folder)
            hashing.append(time.perf_counter() - started)

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
    return {"cold": median(cold), "hashing": median(hashing), "cached": median(cached), "rescan": median(rescan)}


def section(args: argparse.Namespace, command: str) -> Section:
    """The discovery section of docs/benchmarks.md."""
    m = measure(args.plugins, args.repeats)
    n = args.plugins
    header = f"{measured_on()}, {n:,} plugin folders of 3 small files, median of {args.repeats} runs."
    cold, cached = m["cold"], m["cached"]
    targets = (
        Target(f"cold discovery of {n:,} plugins", fmt_s(cold), f"<= {TARGET_COLD_S:g} s", cold <= TARGET_COLD_S),
        Target("cached lookup", fmt_s(cached), "~0", cached < 10e-6),
    )
    rows = [
        "| step | time | per plugin | target | met? |",
        "|---|---:|---:|---|:---:|",
        f"| cold discovery (read, validate, hash, order) | {fmt_s(m['cold'])} | {fmt_s(m['cold'] / n)} | "
        f"{targets[0].target} | {mark(targets[0].met)} |",
        f"| baseline: hashing alone | {fmt_s(m['hashing'])} | {fmt_s(m['hashing'] / n)} |  |  |",
        f"| cached lookup (get_result().get(id)) | {fmt_s(m['cached'])} |  | {targets[1].target} | "
        f"{mark(targets[1].met)} |",
        f"| rescan (nothing changed) | {fmt_s(m['rescan'])} |  |  |  |",
    ]
    return make_section("discovery", "Discovery", command, header, "\n".join(rows), READING, targets=targets)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "discovery")
    parser.add_argument("--plugins", type=int, default=1000, help="plugin folders to generate (default 1000)")
    parser.add_argument("--repeats", type=int, help="cold scans; the median is reported (default 5, quick 2)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    return args


if __name__ == "__main__":
    sys.exit(run_alone("bench_discovery.py", parse_args, section))
