"""The ``plugin-pool`` command: run a workload through plugins, list them, check a configuration file.

This is the only module that reads ``os.environ`` (it passes it to load_config).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from plugin_pool.config import Config, PluginSettings, list_settings, load_config
from plugin_pool.discovery import Discovery, format_discovery_report
from plugin_pool.errors import ConfigError, PluginPoolError
from plugin_pool.host import HostHealth, PluginHost
from plugin_pool.logs import configure_json_logging

__all__ = ["main"]

SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "user=admin password=hunter2 # do not commit this line",
    "Quarterly report, confidential until release; the token rotates weekly.",
    "",
    "def scan(payload):\n    return {'findings': []}\n",
    "A longer paragraph of ordinary prose, the kind of text a scanner sees most of the time, with nothing "
    "secret in it at all, only words that go on for a while so that the payload is a few hundred bytes long "
    "and the work per call is not entirely trivial for the plugins that count or search its words.",
)


@dataclass
class _PluginRun:
    plugin_id: str
    latencies_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, latencies: list[int], errors: dict[str, int]) -> None:
        with self.lock:
            self.latencies_ns.extend(latencies)
            for k, v in errors.items():
                self.errors[k] = self.errors.get(k, 0) + v


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    index = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[index] / 1000.0


def _build_host(config: Config, entries: Sequence[str], plugin_dirs: Sequence[str] = ()) -> PluginHost:
    """An open host with the configured entries, the ``--plugin`` entries and the ``--plugin-dir`` folders."""
    plugins = dict(config.plugins)
    for raw in entries:
        plugin_id, sep, rest = raw.partition("=")
        entry, _, trust = rest.rpartition("@")
        if not sep or not entry or trust not in {"builtin", "trusted"}:
            raise ConfigError(
                f"--plugin {raw!r} is invalid: expected ID=ENTRY@LEVEL with LEVEL builtin or trusted, e.g. "
                f"hello=examples/hello_world/plugin.py:HelloWorld@builtin",
                key="--plugin",
            )
        target, _, attr = entry.rpartition(":")
        if target.endswith(".py"):
            entry = f"{os.path.abspath(target)}:{attr}"
        plugins[plugin_id] = PluginSettings(entry=entry, trust_level=trust)
    host = PluginHost(replace(config, plugins=plugins))
    host.open()
    host.add_configured_plugins()
    host.discover()  # [discovery] paths and entry points; plugins configured by id above come first
    for directory in plugin_dirs:
        host.add_plugin_dir(directory)
    return host


def _print_health(health: HostHealth, out: TextIO) -> None:
    rows = [("PLUGIN", "TRUST", "STATE", "CAPABILITIES", "REASON")]
    for p in health.plugins:
        rows.append((p.plugin_id, p.trust_level.value, p.state.value, ",".join(p.capabilities) or "-", p.reason or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4] + "\n")


def _progress(done: list[int], total: int, stop: threading.Event, out: TextIO) -> None:
    tty = out.isatty()
    started = time.monotonic()
    while not stop.wait(0.5 if tty else 2.0):
        rate = done[0] / max(time.monotonic() - started, 1e-9)
        line = f"[run] {done[0]:,}/{total:,} calls ({rate:,.0f}/s)"
        out.write(("\r" + line) if tty else (line + "\n"))
        out.flush()
    if tty:
        out.write("\r" + " " * 60 + "\r")


def _kill_workers(
    host: PluginHost, count: int, done: list[int], total: int, err: TextIO, stop: threading.Event
) -> None:
    """Kill ``count`` sandbox workers with SIGKILL at even points of the workload, to show recovery."""
    for n in range(1, count + 1):
        while done[0] < total * n / (count + 1) and not stop.wait(0.01):
            pass
        if stop.is_set():
            return
        pool = host.sandbox
        victims = [
            (plugin_id, pid)
            for plugin_id in host.get_health().active
            for pid in (pool.list_worker_pids(plugin_id) if pool is not None else [])
        ]
        if not victims:
            return
        plugin_id, pid = random.choice(victims)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        err.write(f"[run] killed worker pid {pid} of plugin {plugin_id!r} on purpose (SIGKILL)\n")


def _run_workload(
    host: PluginHost, config: Config, out: TextIO, err: TextIO, quiet: bool, kill_workers: int = 0
) -> dict[str, Any]:
    work = config.workload
    providers = host.list_providers(work.capability)
    runs = {pid: _PluginRun(pid) for pid in providers}
    total = work.calls * len(providers)
    done = [0]
    done_lock = threading.Lock()

    def drive(plugin_id: str, start: int, count: int) -> None:
        latencies: list[int] = []
        errors: dict[str, int] = {}
        clock = time.perf_counter_ns
        invoke = host.invoke
        cap = work.capability
        for i in range(start, start + count):
            payload = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
            t0 = clock()
            try:
                invoke(plugin_id, cap, payload)
            except PluginPoolError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            latencies.append(clock() - t0)
            if len(latencies) % 100 == 0:
                with done_lock:
                    done[0] += 100
        runs[plugin_id].add(latencies, errors)

    stop = threading.Event()
    progress = None
    if not quiet and total:
        progress = threading.Thread(target=_progress, args=(done, total, stop, err), daemon=True)
        progress.start()
    killer = None
    if kill_workers:
        killer = threading.Thread(target=_kill_workers, args=(host, kill_workers, done, total, err, stop), daemon=True)
        killer.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=work.threads, thread_name_prefix="plugin-pool-run") as pool:
        futures = []
        for pid in providers:
            share, extra = divmod(work.calls, work.threads)
            offset = 0
            for t in range(work.threads):
                count = share + (1 if t < extra else 0)
                futures.append(pool.submit(drive, pid, offset, count))
                offset += count
        for f in futures:
            f.result()
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in (progress, killer):
        if thread is not None:
            thread.join(2.0)
    summary: dict[str, Any] = {
        "capability": work.capability,
        "threads": work.threads,
        "elapsed_s": round(elapsed, 3),
        "plugins": [],
    }
    for p in host.get_health().plugins:
        run = runs.get(p.plugin_id)
        lat = sorted(run.latencies_ns) if run else []
        summary["plugins"].append(
            {
                "plugin_id": p.plugin_id,
                "trust_level": p.trust_level.value,
                "state": p.state.value,
                "reason": p.reason,
                "calls": len(lat),
                "errors": sum(run.errors.values()) if run else 0,
                "errors_by_type": dict(run.errors) if run else {},
                "p50_us": round(_percentile(lat, 0.50), 2),
                "p99_us": round(_percentile(lat, 0.99), 2),
                "restarts": dict(p.workers.restarts) if p.workers is not None else {},
            }
        )
    return summary


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"\nworkload: capability {summary['capability']!r}, {summary['threads']} threads, {summary['elapsed_s']} s\n"
    )
    header = ("PLUGIN", "TRUST", "STATE", "CALLS", "ERRORS", "P50 µs", "P99 µs", "WORKER RESTARTS")
    rows = [header] + [
        (
            p["plugin_id"],
            p["trust_level"],
            p["state"],
            f"{p['calls']:,}",
            f"{p['errors']:,}",
            f"{p['p50_us']:.1f}",
            f"{p['p99_us']:.1f}",
            ", ".join(f"{reason} {n}" for reason, n in sorted(p["restarts"].items()))
            or ("0" if p["trust_level"] == "untrusted" else "-"),
        )
        for p in summary["plugins"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    for p in summary["plugins"]:
        if p["reason"]:
            out.write(f"  {p['plugin_id']}: {p['reason']}\n")
        for kind, n in sorted(p["errors_by_type"].items()):
            out.write(f"  {p['plugin_id']}: {n:,} calls failed with {kind}\n")


def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    overrides: dict[str, dict[str, Any]] = {"workload": {}}
    for key in ("calls", "threads", "capability"):
        if getattr(args, key) is not None:
            overrides["workload"][key] = getattr(args, key)
    config = load_config(args.config, env=os.environ, overrides=overrides)
    with _build_host(config, args.plugin) as host:
        health = host.start_plugins()
        if not args.json:
            _print_health(health, out)
        summary = _run_workload(host, config, out, err, quiet=args.quiet or args.json, kill_workers=args.kill_workers)
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_summary(summary, out)
    failed = [p for p in summary["plugins"] if p["state"] == "failed" or p["errors"]]
    return 1 if failed and args.strict else 0


def _cmd_discover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load_config(args.config, env=os.environ)
    overrides: dict[str, Any] = {}
    if args.path:
        overrides["discovery"] = replace(
            config.discovery, paths=(*config.discovery.paths, *map(os.path.abspath, args.path))
        )
    if args.trusted_key or args.unsigned_trusted:
        overrides["trust"] = replace(
            config.trust,
            trusted_keys=(*config.trust.trusted_keys, *map(os.path.abspath, args.trusted_key)),
            unsigned_trusted=args.unsigned_trusted or config.trust.unsigned_trusted,
        )
    result = Discovery.from_config(replace(config, **overrides)).get_result()
    out.write(format_discovery_report(result))
    return 1 if result.errors else 0


def _cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load_config(args.config, env=os.environ)
    with _build_host(config, args.plugin) as host:
        health = host.start_plugins()
        if args.json:
            out.write(json.dumps(health.to_dict(), indent=2) + "\n")
        else:
            _print_health(health, out)
    return 1 if health.failed else 0


def _cmd_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.action == "check":
        config = load_config(args.file, env=os.environ)
        out.write(f"{args.file}: OK ({len(config.plugins)} plugins configured)\n")
        return 0
    rows = list_settings()
    out.write("| key | type | unit | default | variable | meaning |\n|---|---|---|---|---|---|\n")
    for r in rows:
        out.write(
            f"| `{r['key']}` | {r['type']} | {r['unit'] or '-'} | `{r['default']!r}` | `{r['env']}` | {r['doc']} |\n"
        )
    return 0


def _cmd_keygen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from plugin_pool.integrity import IntegrityError, write_keypair

    try:
        kid = write_keypair(args.private, args.public)
    except IntegrityError as exc:
        err.write(f"plugin-pool keygen: {exc}\n")
        return 2
    out.write(f"key id {kid}\nprivate key: {args.private} (mode 0600; keep it secret)\npublic key: {args.public}\n")
    return 0


def _cmd_sign(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from plugin_pool.integrity import MANIFEST_NAME, IntegrityError, load_private_key, read_signature, sign_plugin

    manifest = os.path.join(args.dir, MANIFEST_NAME)
    try:
        if not os.path.isfile(manifest):
            raise IntegrityError(f"no {MANIFEST_NAME} here; give a plugin folder", path=args.dir)
        key = load_private_key(args.key)
    except IntegrityError as exc:
        err.write(f"plugin-pool sign: {exc}\n")
        return 2
    kid = sign_plugin(args.dir, key)
    signature = read_signature(manifest)
    out.write(f"signed {args.dir} with key {kid}\ncontent hash {signature.content_hash if signature else '?'}\n")
    return 0


def _cmd_hash(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from plugin_pool.integrity import compute_content_hash

    if not os.path.isdir(args.dir):
        err.write(f"plugin-pool hash: {args.dir}: not a directory; give a plugin folder\n")
        return 2
    content = compute_content_hash(args.dir)
    out.write(content.digest + "\n")
    if args.files:
        for path, digest in content.files.items():
            out.write(f"{digest}  {path}\n")
    return 0


def _cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from plugin_pool.integrity import IntegrityError, load_trusted_keys, verify_plugin

    try:
        if not os.path.isdir(args.dir):
            raise IntegrityError("not a directory; give a plugin folder", path=args.dir)
        keys = load_trusted_keys(args.trusted_key)
    except IntegrityError as exc:
        err.write(f"plugin-pool verify: {exc}\n")
        return 2
    try:
        kid, content = verify_plugin(args.dir, keys)
    except IntegrityError as exc:
        err.write(f"plugin-pool verify: INVALID: {exc}\n")
        return 1
    out.write(f"{args.dir}: valid signature by key {kid}\ncontent hash {content.digest}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``plugin-pool``."""
    parser = argparse.ArgumentParser(prog="plugin-pool", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-format",
        choices=("json", "none"),
        default="json",
        help="log records to stderr as JSON lines (default) or not at all",
    )
    parser.add_argument("--log-level", default="WARNING", help="minimum log level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    plugin_help = "add a plugin: ID=ENTRY@LEVEL, ENTRY is module:attr or file.py:attr, LEVEL builtin|trusted"
    run = sub.add_parser("run", help="load and start plugins, push a workload through them, print a summary")
    run.add_argument("config", nargs="?", help="configuration file (TOML)")
    run.add_argument("--plugin", action="append", default=[], help=plugin_help)
    run.add_argument("--calls", type=int, help="calls per plugin (overrides [workload] calls)")
    run.add_argument("--threads", type=int, help="caller threads (overrides [workload] threads)")
    run.add_argument("--capability", help="capability to call (overrides [workload] capability)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument(
        "--kill-workers", type=int, default=0, metavar="N", help="SIGKILL N sandbox workers during the run (a demo)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed or any call failed")
    run.set_defaults(func=_cmd_run)

    for name in ("list", "status"):
        cmd = sub.add_parser(name, help="load and start the configured plugins and show their states")
        cmd.add_argument("config", nargs="?", help="configuration file (TOML)")
        cmd.add_argument("--plugin", action="append", default=[], help=plugin_help)
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.set_defaults(func=_cmd_list)

    keygen = sub.add_parser("keygen", help="generate an Ed25519 key pair for signing plugin manifests")
    keygen.add_argument("--private", required=True, metavar="PATH", help="where to write the private key (0600)")
    keygen.add_argument("--public", required=True, metavar="PATH", help="where to write the public key")
    keygen.set_defaults(func=_cmd_keygen)
    sign = sub.add_parser("sign", help="sign a plugin folder: write a [signature] table into its plugin.toml")
    sign.add_argument("dir", help="the plugin folder")
    sign.add_argument("--key", required=True, metavar="PRIVATE.pem", help="the private key (from keygen)")
    sign.set_defaults(func=_cmd_sign)
    hash_cmd = sub.add_parser("hash", help="print the content hash of a plugin folder")
    hash_cmd.add_argument("dir", help="the plugin folder")
    hash_cmd.add_argument("--files", action="store_true", help="also print each file's hash")
    hash_cmd.set_defaults(func=_cmd_hash)
    verify = sub.add_parser("verify", help="verify a plugin folder's signature (exit 0 valid, 1 invalid)")
    verify.add_argument("dir", help="the plugin folder")
    verify.add_argument(
        "--trusted-key",
        action="append",
        required=True,
        metavar="PATH",
        help="a trusted public key file, or a directory of *.pem/*.pub files (repeatable)",
    )
    verify.set_defaults(func=_cmd_verify)

    disc = sub.add_parser("discover", help="show what would load from the discovery paths, and why anything would not")
    disc.add_argument("config", nargs="?", help="configuration file (TOML) with [discovery] and [trust]")
    disc.add_argument("--path", action="append", default=[], help="a folder of plugin folders (repeatable)")
    disc.add_argument("--trusted-key", action="append", default=[], help="a trusted public key file or folder")
    disc.add_argument("--unsigned-trusted", choices=("reject", "downgrade"), help="policy for unsigned Trusted")
    disc.set_defaults(func=_cmd_discover)

    cfg = sub.add_parser("config", help="check a configuration file, or list every setting")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    check = cfg_sub.add_parser("check", help="validate FILE and report the first error")
    check.add_argument("file")
    cfg_sub.add_parser("settings", help="print every setting as a Markdown table")
    cfg.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 plugins failed, 2 usage or configuration error)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    if args.log_format == "json":
        configure_json_logging(args.log_level.upper(), err)
    try:
        code: int = args.func(args, out, err)
        return code
    except ConfigError as exc:
        err.write(f"plugin-pool: configuration error: {exc}\n")
        return 2
    except PluginPoolError as exc:
        err.write(f"plugin-pool: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
