#!/usr/bin/env python3
"""Benchmark the Untrusted (sandbox) call path against baselines measured in the same run.

    .venv/bin/python scripts/bench_sandbox.py            # ~1-2 min, print the tables
    .venv/bin/python scripts/bench_sandbox.py --quick    # ~30 s
    .venv/bin/python scripts/bench_sandbox.py --write    # also replace the sandbox section of docs/benchmarks.md

What is measured (the plugin is scripts/bench_plugins/echo: an Untrusted capability returning its payload,
2 workers like the pools' 2 processes):

- latency of sequential ``host.invoke`` calls, p50/p90/p99, payloads of 200 B and 64 KiB as ``bytes`` (the
  raw path) and as ``str`` (the JSON path);
- baseline A, the main reference: a bare grpcio unary echo over a Unix socket (generic handler, identity
  serializers, server in a subprocess with ThreadPoolExecutor(4));
- baseline B: ``ProcessPoolExecutor(2).submit(echo, p).result()`` per call, and ``.map`` throughput;
- baseline C: ``multiprocessing.Pool(2).apply(echo, (p,))`` per call, and ``.imap(chunksize=64)`` throughput;
- the floor: a socketpair round trip to a forked child that echoes (length-prefixed);
- batched throughput: ``host.invoke_many`` of all the items in one call (it cuts them into two chunks per
  worker, of at least 256 items, and runs the chunks on the 2 workers in parallel), against the pools'
  ``map``/``imap`` over the same items, and against bare gRPC and the socketpair moving the same chunks;
  items of 200 B and of 64 KiB;
- the scan workload (scripts/bench_plugins/scan, a secrets scan of 4 KiB texts, distinct objects): 4 caller
  threads making one call per item (``host.invoke`` against ``ProcessPoolExecutor(2).submit().result()`` and
  ``multiprocessing.Pool(2).apply``, also from 4 threads), and the whole batch (``host.invoke_many`` against
  ``map(chunksize=256)`` and ``imap(chunksize=64)``); the same scan in a plain loop is the direct baseline;
- restart latency: SIGKILL a serving worker, time until the pool serves with its full count again (a warm
  spare takes the place) and until a call was served;
- idle worker memory (USS/PSS/RSS) after 20 calls and 0.3 s idle, of a serving worker and of a warm spare;
- the CPU placement regime: affinity, the floor pinned to one core and to two, sampled core numbers.

Every latency variant runs ROUNDS times, interleaved (the order rotates each round); the table reports the
median over rounds of each round's percentile, and the detail table the spread (min-max) of the p50s.
Ratios compare figures from the same run, so they move much less than the absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import multiprocessing
import multiprocessing.pool
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import psutil
from _benchdoc import (
    Section,
    Target,
    fmt_ratio,
    fmt_s,
    make_section,
    mark,
    measured_on,
    median,
    new_parser,
    percentile,
    run_alone,
)

if TYPE_CHECKING:
    import grpc

PLUGIN_DIR = Path(__file__).resolve().parent / "bench_plugins" / "echo"
PLUGIN_ID = "bench-echo"
SMALL, LARGE = 200, 64 * 1024
SIZES = (SMALL, LARGE)
LABEL = {SMALL: "200 B", LARGE: "64 KiB"}
WORKERS = 2
BATCH = 256
MP_CHUNK = 64
CHUNK_BYTES = 1024 * 1024
"""``sandbox.chunk_mb`` (its default, 1 MiB) in bytes."""
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_HEADER = struct.Struct(">I")

LATENCY_PATHS = {
    "ours bytes": "Untrusted invoke, bytes",
    "ours str": "Untrusted invoke, str",
    "grpc": "bare gRPC unary echo",
    "ppe": "ProcessPoolExecutor submit",
    "mp": "multiprocessing.Pool apply",
    "floor": "socketpair floor",
}
"""Latency variants: key -> the name the detail table shows (each is measured at every size)."""
BATCH_PATHS = {
    "invoke_many": "Untrusted invoke_many",
    "grpc chunks": "bare gRPC, the same chunks, all in flight",
    "floor chunks": "socketpair floor, the same chunks, one after another",
    "ppe map": f"ProcessPoolExecutor({WORKERS}).map chunksize={BATCH}",
    "ppe map default": f"ProcessPoolExecutor({WORKERS}).map (default chunksize=1)",
    "mp imap": f"multiprocessing.Pool({WORKERS}).imap chunksize={MP_CHUNK}",
}
"""Throughput variants: key -> the name the tables show (each is measured with items of every size)."""


SCAN_DIR = Path(__file__).resolve().parent / "bench_plugins" / "scan"
SCAN_ID = "bench-scan"
SCAN_BYTES = 4096
SCAN_THREADS = 4
SCAN_RULES = {
    "aws_access_key_id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private_key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "password_assignment": re.compile(r"(?i)\b(password|passwd|pwd)\s*[=:]\s*(\S+)"),
    "bearer_token": re.compile(r"(?i)\bbearer\s+[a-z0-9._~+/-]{20,}=*"),
    "github_token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}
"""The scan plugin's rules (scripts/bench_plugins/scan/scan.py), copied: the benchmark never imports the plugin."""
SCAN_PATHS = {
    "threads": f"Untrusted invoke, {SCAN_THREADS} threads",
    "ppe threads": f"ProcessPoolExecutor({WORKERS}).submit().result(), {SCAN_THREADS} threads",
    "mp threads": f"multiprocessing.Pool({WORKERS}).apply, {SCAN_THREADS} threads",
    "many": "Untrusted invoke_many",
    "ppe map": f"ProcessPoolExecutor({WORKERS}).map chunksize={BATCH}",
    "mp imap": f"multiprocessing.Pool({WORKERS}).imap chunksize={MP_CHUNK}",
    "direct": "the same scan in a loop, in this process",
}
"""Scan variants (items/s): key -> the name the tables show."""


def echo(payload: Any) -> Any:
    """The pools' task: return the payload (module level, so the pools' workers can find it)."""
    return payload


def scan_text(text: str) -> dict[str, Any]:
    """The pools' scan task: what the scan plugin returns for ``text``."""
    findings = [{"rule": name, "offset": m.start()} for name, rule in SCAN_RULES.items() for m in rule.finditer(text)]
    findings.sort(key=lambda f: f["offset"])
    return {"findings": findings}


def scan_texts(count: int) -> list[str]:
    """``count`` distinct texts of 4 KiB, words with a credential here and there (a few findings each)."""
    rnd = random.Random(7)
    words = ["alpha", "config", "value", "the", "service", "request", "token", "user", "data", "deploy", "region"]
    secrets = ["password = hunter{n}", "AKIA{k}", "Authorization: Bearer {t}", "ghp_{g}"]
    texts = []
    for n in range(count):
        parts: list[str] = []
        size = 0
        while size < SCAN_BYTES:
            word = rnd.choice(words)
            if rnd.random() < 0.004:
                word = rnd.choice(secrets).format(n=n, k="ABCDEFGHIJKLMNOP", t="x" * 32, g="A" * 36)
            parts.append(word)
            size += len(word) + 1
        texts.append(" ".join(parts)[:SCAN_BYTES])
    return texts


def per_item_threads(call: Callable[[Any], Any], items: list[Any], threads: int = SCAN_THREADS) -> list[Any]:
    """``threads`` caller threads, each making one call per item of its share; the results in item order."""
    results: list[Any] = [None] * len(items)

    def work(start: int) -> None:
        for n in range(start, len(items), threads):
            results[n] = call(items[n])

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, start) for start in range(threads)]:
            future.result()
    return results


def chunk_items(count: int, item_bytes: int) -> int:
    """Items per chunk that ``invoke_many`` picks for ``count`` items of ``item_bytes`` and 2 workers (two
    chunks per worker, 256 to 4096 items, at most ``sandbox.chunk_mb``); the bare transports use it too."""
    by_count = min(4096, max(BATCH, -(-count // (2 * WORKERS))))
    return max(1, min(by_count, CHUNK_BYTES // (item_bytes + 2)))


def split(blob: bytes | memoryview, size: int) -> list[bytes]:
    """Items of ``size`` bytes from a blob of them laid end to end (what the bare transports carry)."""
    return [bytes(blob[start : start + size]) for start in range(0, len(blob), size)]


# -- the floor: a forked child echoing length-prefixed frames over a socketpair -----------------------------


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _echo_frames(sock: socket.socket) -> NoReturn:
    """The floor child: echo every frame until end of file, then leave without running any atexit handler."""
    buf = bytearray(_HEADER.size + LARGE)
    try:
        while _recv_exact(sock, memoryview(buf)[: _HEADER.size]):
            (size,) = _HEADER.unpack_from(buf)
            if _HEADER.size + size > len(buf):
                buf = buf[: _HEADER.size] + bytearray(size)
            frame = memoryview(buf)[: _HEADER.size + size]
            if not _recv_exact(sock, frame[_HEADER.size :]):
                break
            sock.sendall(frame)
    finally:
        os._exit(0)


class Floor:
    """A forked child that echoes frames over a socketpair: the least a cross-process round trip costs.

    Create it before gRPC is initialised (gRPC is not fork-safe once started). ``call`` is not thread-safe.
    """

    def __init__(self) -> None:
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            _echo_frames(child)
        child.close()
        self._buf = bytearray(_HEADER.size + LARGE)

    @staticmethod
    def frame(data: bytes) -> bytes:
        return _HEADER.pack(len(data)) + data

    def call(self, frame: bytes) -> memoryview:
        """Send one frame, wait for its echo; the reply is valid until the next call."""
        if len(frame) > len(self._buf):
            self._buf = bytearray(len(frame))
        view = memoryview(self._buf)[: len(frame)]
        self.sock.sendall(frame)
        _recv_exact(self.sock, view)
        return view

    def echo_chunks(self, chunks: list[list[bytes]], size: int) -> list[bytes]:
        """Every chunk as one frame, one after another; the items back."""
        out: list[bytes] = []
        for chunk in chunks:
            out.extend(split(self.call(self.frame(b"".join(chunk)))[_HEADER.size :], size))
        return out

    def close(self) -> None:
        self.sock.close()
        os.waitpid(self.pid, 0)


# -- baseline A: a bare grpcio unary echo ----------------------------------------------------------------


def serve_grpc(path: str) -> None:
    """The bare gRPC echo server (run as a subprocess of this script with --serve-grpc PATH)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0), *GRPC_OPTIONS])
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"unix:{path}") == 0:
        sys.exit(f"cannot bind unix:{path}")
    server.start()
    server.wait_for_termination()


def grpc_chunks(bare: grpc.UnaryUnaryMultiCallable[bytes, bytes], chunks: list[list[bytes]], size: int) -> list[bytes]:
    """Every chunk as one unary call, all in flight at once (as invoke_many's chunks); the items back."""
    futures = [bare.future(b"".join(chunk)) for chunk in chunks]
    out: list[bytes] = []
    for future in futures:
        out.extend(split(future.result(), size))
    return out


# -- the pools' single calls -----------------------------------------------------------------------------


def ppe_submit(ppe: ProcessPoolExecutor, payload: bytes) -> Any:
    return ppe.submit(echo, payload).result()


def mp_apply(pool: multiprocessing.pool.Pool, payload: bytes) -> Any:
    return pool.apply(echo, (payload,))


# -- measuring helpers ------------------------------------------------------------------------------------


def latencies(call: Callable[[], Any], n: int) -> list[int]:
    """ns of each of n sequential calls."""
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        call()
        out[i] = clock() - t0
    return out


def thread_ids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads created later inherit the creator's mask)."""
    for tid in thread_ids(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def thread_cpus(pid: int) -> dict[int, tuple[int, int]]:
    """tid -> (ns run so far, last cpu) for every thread of ``pid``."""
    out = {}
    for tid in thread_ids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                run_ns = int(fh.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (run_ns, int(fields[36]))
    return out


def active_cpus(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> set[int]:
    """Cores of the threads that used CPU between two thread_cpus snapshots."""
    return {cpu for tid, (ran, cpu) in after.items() if ran - before.get(tid, (0, cpu))[0] > 20_000}


def sample_placement(call: Callable[[], Any], peer: int, windows: int) -> dict[str, list[float]]:
    """Per 5 ms window of calls: where the peer's active threads ran relative to the calling thread's core.

    Returns class -> the windows' median latency (µs); classes: "same" (the peer ran only on the caller's
    core), "other" (only on other cores), "mixed".
    """
    out: dict[str, list[float]] = {"same": [], "other": [], "mixed": []}
    me = os.getpid()
    clock = time.perf_counter_ns
    for _ in range(windows):
        before = thread_cpus(peer)
        lat_ns: list[int] = []
        stop = clock() + 5_000_000
        while (t0 := clock()) < stop:
            call()
            lat_ns.append(clock() - t0)
        theirs = active_cpus(before, thread_cpus(peer))
        mine = thread_cpus(me).get(threading.get_native_id(), (0, -1))[1]
        if not theirs:
            continue
        kind = "same" if theirs == {mine} else ("other" if mine not in theirs else "mixed")
        out[kind].append(statistics.median(lat_ns) / 1000)
    return out


@dataclass(frozen=True)
class Memory:
    """A process's memory in bytes: unique (USS), proportional (PSS) and resident (RSS)."""

    uss: int
    pss: int
    rss: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        info = psutil.Process(pid).memory_full_info()
        return cls(info.uss, info.pss, info.rss)

    def __str__(self) -> str:
        mib = 1024 * 1024
        return f"{self.uss / mib:.1f} MiB ({self.pss / mib:.1f} / {self.rss / mib:.1f})"


# -- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxRun:
    """Every figure of one run. Latencies in µs, throughputs in items/s, per round; keys are (variant, size)."""

    rounds: int
    calls: int
    kills: int
    pin: str
    cpus: list[int]
    grpc_version: str
    latency: dict[tuple[str, int], list[tuple[float, float, float]]]
    throughput: dict[tuple[str, int], list[float]]
    items: dict[int, int]
    chunk: dict[int, int]
    place: dict[str, dict[str, list[float]]]
    floor_pinned_us: tuple[float, float]
    scan: dict[str, list[float]]
    """Scan variants (SCAN_PATHS): items/s per round."""
    scan_items: int
    restart_ms: list[float]
    listed_ms: list[float]
    restarts_counted: int
    worker_mem: Memory
    spare_mem: Memory | None
    ppe_mem: Memory
    zygote_mem: Memory | None
    grpc_mem: Memory
    applied: list[str]
    elapsed_s: float

    def lat(self, path: str, size: int, q: int = 0) -> float:
        """The median over rounds of a latency variant's p50 (q=0), p90 (1) or p99 (2), in µs."""
        return median([x[q] for x in self.latency[path, size]])

    def items_per_s(self, path: str, size: int) -> float:
        return median(self.throughput[path, size])

    def scan_per_s(self, path: str) -> float:
        """The median over rounds of a scan variant's items/s."""
        return median(self.scan[path])

    def regime(self) -> str:
        """The CPU placement regime of the run in one sentence, read off the socketpair floor."""
        floor = self.lat("floor", SMALL)
        same, cross = self.floor_pinned_us
        windows = self.place.get("socketpair floor", {})
        total = sum(map(len, windows.values()))
        sampled = (
            f"; sampled afterwards, its child ran on the caller's core in {len(windows.get('same', []))} of "
            f"{total} windows of 5 ms"
            if total
            else ""
        )
        if self.pin != "none":
            return f"pinned by --pin {self.pin}: socketpair floor 200 B p50 {fmt_s(floor * 1e-6)}{sampled}."
        if math.isnan(same):
            return f"one CPU: socketpair floor 200 B p50 {fmt_s(floor * 1e-6)}{sampled}."
        if cross / same < 1.5:
            kind = "flat (one core or two cost about the same in this run)"
        else:  # where the rounds' floor lies between the two pinned floors, on a log scale
            where = math.log(floor / same) / math.log(cross / same)
            kind = "same-core" if where < 1 / 3 else ("cross-core" if where > 2 / 3 else "mixed")
        return (
            f"{kind}: the socketpair floor's 200 B p50 in the rounds (no pinning, {len(self.cpus)} CPUs) was "
            f"{fmt_s(floor * 1e-6)}, against {fmt_s(same * 1e-6)} with both ends pinned to one core and "
            f"{fmt_s(cross * 1e-6)} pinned to two{sampled}."
        )


def measure(rounds: int, calls: int, kills: int, pin_mode: str, quick: bool) -> SandboxRun:
    """Run every variant; blocks for the run (a minute or two). Forks before gRPC is initialised."""
    started = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    if pin_mode == "split" and len(cpus) < 2:
        raise SystemExit("--pin split needs two CPUs")
    caller_cpus = {cpus[0]}
    server_cpus = {cpus[0]} if pin_mode == "same" else {cpus[1 % len(cpus)]}
    counts = {SMALL: BATCH * (16 if quick else 40), LARGE: BATCH * (2 if quick else 4)}
    scan_count = 1024 if quick else 2048

    with contextlib.ExitStack() as stack:
        # Fork everything that is forked (the floor child, the pools' workers) before gRPC is initialised.
        floor = Floor()
        stack.callback(floor.close)
        fork = multiprocessing.get_context("fork")
        ppe = ProcessPoolExecutor(WORKERS, mp_context=fork)
        stack.callback(ppe.shutdown)
        for f in [ppe.submit(time.sleep, 0.05) for _ in range(2 * WORKERS)]:
            f.result()
        mp_pool = fork.Pool(WORKERS)
        stack.callback(mp_pool.terminate)
        mp_pool.map(echo, range(8))
        # A pool worker's idle memory, before the batches of 64 KiB items leave their heap grown (ours is taken
        # on a fresh worker, so both are "idle after 20 small calls").
        for _ in range(20):
            ppe_submit(ppe, b"x" * SMALL)
        time.sleep(0.3)
        ppe_mem = Memory.of(next(iter(ppe._processes)))

        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sandbox-"))
        grpc_path = os.path.join(tmp, "echo.sock")
        server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-grpc", grpc_path])
        stack.callback(server.wait)
        stack.callback(server.terminate)

        import grpc

        from plugin_pool import PluginHost, load_config

        deadline = time.monotonic() + 10
        while not os.path.exists(grpc_path):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the bare gRPC server did not start")
            time.sleep(0.01)
        channel = stack.enter_context(grpc.insecure_channel(f"unix:{grpc_path}", options=GRPC_OPTIONS))
        bare: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.Echo/Echo")  # bytes in/out
        grpc.channel_ready_future(channel).result(timeout=10)

        # Batches of 64 KiB items travel in chunks of 256 (16 MiB): above the default message limit.
        overrides = {"sandbox": {"crash_limit": 1_000_000, "restart_backoff_s": 0.0, "max_message_mb": 64}}
        host = stack.enter_context(PluginHost(load_config(overrides=overrides)))  # one warm spare each (default)
        host.add_plugin_dir(PLUGIN_DIR)
        host.add_plugin_dir(SCAN_DIR)
        host.start_plugins()
        for plugin_id in (PLUGIN_ID, SCAN_ID):
            if not host.get_health().is_active(plugin_id):
                raise SystemExit(f"the benchmark plugin {plugin_id} did not start: {host.get_health().failed}")
        assert host.sandbox is not None
        sandbox = host.sandbox
        applied = sorted(sandbox.get_confinement()["applied"])
        invoke, invoke_many = host.invoke, host.invoke_many

        def pin_servers() -> None:
            if pin_mode == "none":
                return
            pin(os.getpid(), caller_cpus)
            workers = [*sandbox.list_worker_pids(PLUGIN_ID), *sandbox.list_worker_pids(SCAN_ID)]
            for pid in [floor.pid, server.pid, *workers, *ppe._processes]:
                pin(pid, server_cpus)
            for proc in mp_pool._pool:  # type: ignore[attr-defined]
                pin(proc.pid, server_cpus)

        pin_servers()

        def latency_variants(size: int) -> dict[tuple[str, int], tuple[Callable[[], Any], Callable[[Any], bool]]]:
            """(path, size) -> (the call, a check of its result)."""
            data, text, frame = b"x" * size, "x" * size, Floor.frame(b"x" * size)

            def is_data(result: Any) -> bool:
                return type(result) is bytes and result == data

            return {
                ("ours bytes", size): (partial(invoke, PLUGIN_ID, "echo", data), is_data),
                ("ours str", size): (partial(invoke, PLUGIN_ID, "echo", text), lambda result: result == text),
                ("grpc", size): (partial(bare, data), is_data),
                ("ppe", size): (partial(ppe_submit, ppe, data), is_data),
                ("mp", size): (partial(mp_apply, mp_pool, data), is_data),
                ("floor", size): (partial(floor.call, frame), lambda reply: bytes(reply) == frame),
            }

        def batch_variants(items: list[bytes]) -> dict[tuple[str, int], Callable[[], list[Any]]]:
            size, chunk = len(items[0]), chunk_items(len(items), len(items[0]))
            chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
            return {
                # All items in one call, as with pool.map: invoke_many cuts them into chunks (chunk_items) and
                # spreads the chunks over the plugin's workers.
                ("invoke_many", size): partial(invoke_many, PLUGIN_ID, "echo", items),
                ("grpc chunks", size): partial(grpc_chunks, bare, chunks, size),
                ("floor chunks", size): partial(floor.echo_chunks, chunks, size),
                ("ppe map", size): lambda: list(ppe.map(echo, items, chunksize=BATCH)),
                ("ppe map default", size): lambda: list(ppe.map(echo, items)),
                ("mp imap", size): lambda: list(mp_pool.imap(echo, items, chunksize=MP_CHUNK)),
            }

        # -- latency rounds, interleaved --
        variants: dict[tuple[str, int], Callable[[], Any]] = {}
        for size in SIZES:
            for key, (call, check) in latency_variants(size).items():
                assert check(call()), key  # the path really echoes
                latencies(call, max(100, calls // 5))  # warm-up
                variants[key] = call
        per_round: dict[tuple[str, int], list[tuple[float, float, float]]] = {key: [] for key in variants}
        keys = list(variants)
        for r in range(rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                gc.collect()
                ns = sorted(latencies(variants[key], calls))
                p50, p90, p99 = (percentile(ns, q) / 1000 for q in (0.50, 0.90, 0.99))
                per_round[key].append((p50, p90, p99))

        # -- throughput rounds (items/s), interleaved --
        # Distinct objects: a list of one repeated object would be pickled once per chunk (memoised).
        item_sets = {size: [b"%08d" % i + b"x" * (size - 8) for i in range(n)] for size, n in counts.items()}
        batches: dict[tuple[str, int], Callable[[], list[Any]]] = {}
        for items in item_sets.values():
            for key, run_batch in batch_variants(items).items():
                assert run_batch() == items, key  # also the warm-up
                batches[key] = run_batch
        tput: dict[tuple[str, int], list[float]] = {key: [] for key in batches}
        bkeys = list(batches)
        for r in range(rounds):
            for key in bkeys[r % len(bkeys) :] + bkeys[: r % len(bkeys)]:
                gc.collect()
                t0 = time.perf_counter()
                batches[key]()
                tput[key].append(counts[key[1]] / (time.perf_counter() - t0))

        # -- the scan workload (items/s), interleaved: per-item calls from 4 threads, and whole batches --
        texts = scan_texts(scan_count)
        expected = [scan_text(text) for text in texts]
        scan_variants: dict[str, Callable[[], list[Any]]] = {
            "threads": partial(per_item_threads, partial(invoke, SCAN_ID, "scan"), texts),
            "ppe threads": partial(per_item_threads, lambda text: ppe.submit(scan_text, text).result(), texts),
            "mp threads": partial(per_item_threads, lambda text: mp_pool.apply(scan_text, (text,)), texts),
            "many": partial(invoke_many, SCAN_ID, "scan", texts),
            "ppe map": lambda: list(ppe.map(scan_text, texts, chunksize=BATCH)),
            "mp imap": lambda: list(mp_pool.imap(scan_text, texts, chunksize=MP_CHUNK)),
            "direct": lambda: [scan_text(text) for text in texts],
        }
        for key, run_scan in scan_variants.items():
            assert run_scan() == expected, key  # every path finds the same, also the warm-up
        scan_tput: dict[str, list[float]] = {key: [] for key in scan_variants}
        skeys = list(scan_variants)
        for r in range(rounds):
            for key in skeys[r % len(skeys) :] + skeys[: r % len(skeys)]:
                gc.collect()
                t0 = time.perf_counter()
                scan_variants[key]()
                scan_tput[key].append(scan_count / (time.perf_counter() - t0))

        # -- CPU placement: where peers ran per window of calls, then the floor pinned (pinning is sticky) --
        n_windows = 20 if quick else 60
        place = {
            "socketpair floor": sample_placement(variants["floor", SMALL], floor.pid, n_windows),
            "bare gRPC": sample_placement(variants["grpc", SMALL], server.pid, n_windows),
            "Untrusted invoke": sample_placement(
                variants["ours bytes", SMALL], sandbox.list_worker_pids(PLUGIN_ID, spares=False)[0], n_windows
            ),
        }
        floor_pinned = [float("nan"), float("nan")]
        if len(cpus) >= 2 and pin_mode == "none":
            for i, theirs in enumerate(({cpus[0]}, {cpus[1]})):
                os.sched_setaffinity(0, {cpus[0]})
                os.sched_setaffinity(floor.pid, theirs)
                latencies(variants["floor", SMALL], 200)
                floor_pinned[i] = median(
                    [percentile(sorted(latencies(variants["floor", SMALL], calls)), 0.5) / 1000 for _ in range(3)]
                )
            os.sched_setaffinity(0, set(cpus))
            os.sched_setaffinity(floor.pid, set(cpus))

        # -- restart latency: SIGKILL a serving worker; until the pool serves with its two again (a warm spare
        # takes the place at once), then until a call was served --
        restart_ms: list[float] = []
        listed_ms: list[float] = []

        def counted() -> int:
            return sum(n for (plugin_id, _), n in host.restarts.items() if plugin_id == PLUGIN_ID)

        def serving() -> list[int]:
            return sandbox.list_worker_pids(PLUGIN_ID, spares=False)

        restarts_before = counted()
        for _ in range(kills):
            deadline = time.perf_counter() + 10
            while len(serving()) < WORKERS or not sandbox.list_spare_pids(PLUGIN_ID):  # settled, spare ready
                if time.perf_counter() > deadline:
                    raise SystemExit("the pool did not settle within 10 s")
                time.sleep(0.001)
            old = serving()
            t0 = time.perf_counter()
            os.kill(old[0], 9)
            while True:
                pids = serving()
                if old[0] not in pids and len(pids) == WORKERS:
                    break
                if time.perf_counter() - t0 > 10:
                    raise SystemExit("no replacement worker within 10 s")
                time.sleep(0.0002)
            t_listed = time.perf_counter()
            invoke(PLUGIN_ID, "echo", b"x")
            t_served = time.perf_counter()
            listed_ms.append((t_listed - t0) * 1000)
            restart_ms.append((t_served - t0) * 1000)
        restarts_counted = counted() - restarts_before
        pin_servers()

        # -- idle worker memory, on the fresh worker left by the restarts, and of a warm spare --
        worker_pid = sandbox.list_worker_pids(PLUGIN_ID, spares=False)[0]
        for _ in range(20):
            invoke(PLUGIN_ID, "echo", b"x" * SMALL)
        time.sleep(0.3)
        zygote_pid = psutil.Process(worker_pid).ppid()
        spares = sandbox.list_spare_pids(SCAN_ID)
        return SandboxRun(
            rounds=rounds,
            calls=calls,
            kills=kills,
            pin=pin_mode,
            cpus=cpus,
            grpc_version=grpc.__version__,
            latency=per_round,
            throughput=tput,
            items=counts,
            chunk={size: chunk_items(n, size) for size, n in counts.items()},
            place=place,
            floor_pinned_us=(floor_pinned[0], floor_pinned[1]),
            scan=scan_tput,
            scan_items=scan_count,
            restart_ms=restart_ms,
            listed_ms=listed_ms,
            restarts_counted=restarts_counted,
            worker_mem=Memory.of(worker_pid),
            spare_mem=Memory.of(spares[0]) if spares else None,
            ppe_mem=ppe_mem,
            zygote_mem=Memory.of(zygote_pid) if zygote_pid > 1 else None,
            grpc_mem=Memory.of(server.pid),
            applied=applied,
            elapsed_s=time.monotonic() - started,
        )


# -- the report ------------------------------------------------------------------------------------------


def render(run: SandboxRun, command: str) -> Section:
    """The sandbox section of docs/benchmarks.md."""
    rows: list[str] = []
    targets: list[Target] = []

    def row(metric: str, ours: str, base: str, ratio: float | None, target: str = "", met: bool | None = None) -> None:
        ratio_s = "" if ratio is None else fmt_ratio(ratio)
        rows.append(f"| {metric} | {ours} | {base} | {ratio_s} | {target} | {'' if met is None else mark(met)} |")
        if met is not None:  # the figure the target is about: the ratio, unless it names a unit
            targets.append(
                Target(metric, ours.split(" (")[0] if target.endswith(("ms", "MiB")) else ratio_s, target, met)
            )

    def us(x: float) -> str:
        return fmt_s(x * 1e-6)

    for size in SIZES:
        label = LABEL[size]
        grpc_goal = 0.7 if size == SMALL else 1.0  # a frame on an open stream against a whole unary call
        for q, qname in ((0, "p50"), (1, "p90"), (2, "p99")):
            ours, base = run.lat("ours bytes", size, q), run.lat("grpc", size, q)
            met = ours / base <= grpc_goal if q == 0 else None
            row(f"Untrusted invoke {label} bytes {qname} vs bare gRPC", us(ours), us(base), ours / base,
                f"<= {grpc_goal}x" if q == 0 else "", met)  # fmt: skip
        ours_str, ours = run.lat("ours str", size), run.lat("ours bytes", size)
        base = run.lat("grpc", size)
        row(f"Untrusted invoke {label} str p50 vs bare gRPC (bytes)", us(ours_str), us(base), ours_str / base)
        for path in ("ppe", "mp", "floor"):
            base = run.lat(path, size)
            goal = "<= 1.5x" if path == "ppe" and size == SMALL else ""
            row(f"Untrusted invoke {label} bytes p50 vs {LATENCY_PATHS[path]}", us(ours), us(base), ours / base,
                goal, ours / base <= 1.5 if goal else None)  # fmt: skip
    for mode, ours_key, bases in (
        (f"{SCAN_THREADS} caller threads, one call per item", "threads", ("ppe threads", "mp threads", "direct")),
        ("a batch, invoke_many", "many", ("ppe map", "mp imap", "direct")),
    ):
        ours_t = run.scan_per_s(ours_key)
        for path in bases:
            base_t = run.scan_per_s(path)
            goal = ">= 1.0x" if path.startswith("ppe") else ""
            row(
                f"4 KiB scan, {run.scan_items:,} texts, {mode}: items/s vs {SCAN_PATHS[path]}",
                f"{ours_t:,.0f}/s",
                f"{base_t:,.0f}/s",
                ours_t / base_t,
                goal,
                ours_t / base_t >= 1.0 if goal else None,
            )
    for size in SIZES:
        ours_t = run.items_per_s("invoke_many", size)
        for path in ("ppe map default", "ppe map", "mp imap", "grpc chunks", "floor chunks"):
            base_t = run.items_per_s(path, size)
            target = {"ppe map": ">= 1.0x", "mp imap": ">= 1.0x (stretch)"}.get(path, "") if size == SMALL else ""
            row(
                f"invoke_many of {run.items[size]:,} x {LABEL[size]} items/s vs {BATCH_PATHS[path]}",
                f"{ours_t:,.0f}/s",
                f"{base_t:,.0f}/s",
                ours_t / base_t,
                target,
                ours_t / base_t >= 1.0 if target else None,
            )
    r50 = median(run.restart_ms)
    row("restart after SIGKILL p50 (kill -> replacement served)", f"{r50:.1f} ms", "", None, "<= 5 ms", r50 <= 5)
    mib = 1024 * 1024
    row("idle worker memory USS (PSS / RSS) vs a ProcessPoolExecutor worker", str(run.worker_mem), str(run.ppe_mem),
        run.worker_mem.uss / run.ppe_mem.uss, "USS <= 8 MiB", run.worker_mem.uss <= 8 * mib)  # fmt: skip
    if run.spare_mem is not None:
        spare = run.spare_mem
        row("idle warm spare memory USS (PSS / RSS) vs a ProcessPoolExecutor worker", str(spare), str(run.ppe_mem),
            spare.uss / run.ppe_mem.uss, "USS <= 8 MiB", spare.uss <= 8 * mib)  # fmt: skip
    table = ["| metric | ours | baseline | ratio | target | met? |", "|---|---:|---:|---:|---|:---:|", *rows]

    detail = [
        "| variant (µs; items/s for batches) | median of rounds | p50 min-max over rounds | p90 | p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for (path, size), per_round in run.latency.items():
        p50s = [x[0] for x in per_round]
        detail.append(
            f"| {LATENCY_PATHS[path]} {LABEL[size]} | {run.lat(path, size):,.1f} | {min(p50s):,.1f}-{max(p50s):,.1f} "
            f"| {run.lat(path, size, 1):,.1f} | {run.lat(path, size, 2):,.1f} |"
        )
    for path, xs in run.scan.items():
        detail.append(
            f"| 4 KiB scan: {SCAN_PATHS[path]}, {run.scan_items:,} texts | {median(xs):,.0f} | "
            f"{min(xs):,.0f}-{max(xs):,.0f} | | |"
        )
    for (path, size), xs in run.throughput.items():
        detail.append(
            f"| {BATCH_PATHS[path]}, {run.items[size]:,} x {LABEL[size]} | {median(xs):,.0f} | "
            f"{min(xs):,.0f}-{max(xs):,.0f} | | |"
        )
    detail.append(
        f"| restart ms: listed / served | {median(run.listed_ms):.1f} / {r50:.1f} | "
        f"{min(run.restart_ms):.1f}-{max(run.restart_ms):.1f} | | max {max(run.restart_ms):.1f} |"
    )

    def share(classes: dict[str, list[float]]) -> str:
        total = sum(map(len, classes.values()))
        parts = [
            f"{kind} core {len(xs)}/{total} windows (p50 {median(xs):.0f} µs)" for kind, xs in classes.items() if xs
        ]
        return ", ".join(parts) or "no samples"

    zygote = f"{run.zygote_mem.uss / mib:.1f} MiB" if run.zygote_mem else "n/a"
    regime = [
        f"- regime: {run.regime()}",
        f"- CPUs: {len(run.cpus)} allowed ({run.cpus}), os.cpu_count()={os.cpu_count()}, pinning: {run.pin}.",
        "- where the peer ran, per 5 ms window of 200 B calls, relative to the calling thread's core: "
        + "; ".join(f"{name}: {share(classes)}" for name, classes in run.place.items())
        + ".",
        f"- worker confinement applied: {', '.join(run.applied)}; zygote USS {zygote}; bare gRPC server process "
        f"USS {run.grpc_mem.uss / mib:.1f} MiB (not forked, so not comparable); restarts counted by the host: "
        f"{run.restarts_counted}/{run.kills}.",
    ]
    header = (
        f"{measured_on(f'grpcio {run.grpc_version}')}, {run.rounds} interleaved rounds x {run.calls:,} sequential "
        f"calls per latency variant, {run.items[SMALL]:,} x 200 B and {run.items[LARGE]:,} x 64 KiB items per "
        f"throughput round, {run.kills} kills; {run.elapsed_s:.0f} s. Payloads are `bytes` (the raw path) unless "
        "marked `str` (the JSON path); ratios are ours / baseline (times for single calls, items/s for batches)."
    )
    return make_section(
        "sandbox",
        "Untrusted (sandbox) call path",
        command,
        header,
        "\n".join(table),
        "\n".join(detail),
        "CPU placement regime:\n\n" + "\n".join(regime),
        reading(run),
        targets=targets,
    )


def reading(run: SandboxRun) -> str:
    """How to read the section, with the run's own figures (so the prose cannot drift from the tables)."""
    single = " and ".join(
        f"{fmt_ratio(run.lat('ours bytes', size) / run.lat('grpc', size))} ({LABEL[size]})" for size in SIZES
    )
    ours, grpc_t = run.items_per_s("invoke_many", SMALL), run.items_per_s("grpc chunks", SMALL)
    ppe_t = run.items_per_s("ppe map", SMALL)

    def against(path: str) -> str:
        ratio = ours / run.items_per_s(path, SMALL)
        return f"{'beat' if ratio >= 1 else 'fall short of'} {BATCH_PATHS[path]} ({fmt_ratio(ratio)})"

    chunk = run.chunk[SMALL]
    if grpc_t < ppe_t:
        bound = (
            f"The bound is the transport: bare gRPC moving the same {chunk:,}-item chunks (no encoding, all in "
            f"flight) manages {grpc_t:,.0f} items/s, {fmt_s(1 / grpc_t)} per 200-byte item, where the executor "
            f"moves pickles over a pipe at {fmt_s(1 / ppe_t)} per item."
        )
    else:
        bound = (
            f"Bare gRPC moving the same {chunk:,}-item chunks manages {grpc_t:,.0f} items/s, faster than the "
            f"executor's {ppe_t:,.0f}/s: in this run the gap is in our encoding and dispatch, not only the transport."
        )
    threads = run.scan_per_s("threads") / run.scan_per_s("ppe threads")
    many = run.scan_per_s("many") / run.scan_per_s("ppe map")
    direct = run.scan_per_s("many") / run.scan_per_s("direct")
    bullets = [
        f"**Single calls** cost {single} what a bare gRPC unary echo costs: each call is one hand-framed `Frame` "
        "each way on a stream the worker opened when it started (`plugin_pool/sandbox/_codec.py`), so a call "
        "costs no new HTTP/2 stream, no headers and no server-side dispatch; the host adds a dictionary lookup, "
        "a lock and the deadline. The pools' single calls (`submit`, `apply`) send pickles over a pipe.",
        f"**Per-item calls from {SCAN_THREADS} threads** (the 4 KiB scan) ran at {fmt_ratio(threads)} the "
        "executor's rate: calls that wait for a busy worker ride together in one frame (dynamic batching), which "
        "halves the transport's work at best with 4 callers and 2 workers; the rest is gRPC's per-message cost in "
        "Python on both sides of a 2-core machine, against the executor's pickles over a pipe.",
        f"**Batches** of 200 B items {against('ppe map default')}, {against('mp imap')}, and {against('ppe map')} "
        f"(target >= 1.0x: {'met' if ours >= ppe_t else '**not met**'}); the 4 KiB scan through `invoke_many` "
        f"ran at {fmt_ratio(many)} `map(chunksize={BATCH})` and at {fmt_ratio(direct)} the same scan in a loop in "
        f"this process (the scan itself is the work). {bound} We do not send pickles (a pickle from a worker would "
        "run code in the host).",
        "Absolute numbers move with the CPU placement regime (above): compare ratios within one run.",
    ]
    return "How to read it:\n\n" + "\n".join(f"- {b}" for b in bullets)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "sandbox")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of every variant (default 7, quick 3)")
    parser.add_argument("--calls", type=int, help="sequential calls per variant per round (default 2000, quick 800)")
    parser.add_argument("--kills", type=int, help="worker kills for the restart latency (default 15, quick 6)")
    parser.add_argument(
        "--pin",
        choices=("none", "same", "split"),
        default="none",
        help="CPU regime: none (the scheduler decides), same (everything on CPU 0), split (callers on CPU 0, "
        "servers/workers on CPU 1)",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.calls = args.calls or (800 if args.quick else 2000)
    args.kills = args.kills or (6 if args.quick else 15)
    return args


def section(args: argparse.Namespace, command: str) -> Section:
    return render(measure(args.rounds, args.calls, args.kills, args.pin, args.quick), command)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-grpc"]:
        serve_grpc(sys.argv[2])
        raise SystemExit(0)
    raise SystemExit(run_alone("bench_sandbox.py", parse_args, section))
