"""The trust chain through a real host, at both trust levels: what runs is what was verified, and one bad folder
fails only itself.

- a symlink, fifo, socket or device swapped into a folder between discovery and start fails that plugin at
  Loading, audited ``integrity_rejected`` and counted under its kind; a changed file as ``hash_mismatch``;
  every message names the plugin's folder, the file and the fix, never the private copy; the others start;
- bytecode added to a signed Trusted folder (a sourceless package, or a cache that would shadow a source)
  never runs in the host: a side effect it would have is checked;
- ten plugins, one bad: nine start;
- a file rewritten in a loop while the host stages: the plugin runs the verified code, or fails;
- an Untrusted plugin's code offering a capability its manifest lacks is reported when it loads.
"""

from __future__ import annotations

import logging
import os
import py_compile
import resource
import socket
import stat
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _hosts import close_host

from plugin_pool import PluginHost, load_config
from plugin_pool.integrity import load_private_key, sign_plugin, write_keypair
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import TrustLevel
from plugin_pool.registry import EventKind, InMemoryPluginRegistry

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(120)]

SIDE_EFFECT_VAR = "PLUGIN_POOL_TEST_TRUST_CHAIN_RAN"
VERIFIED = "VALUE = 'verified'\n" + "# padding to span more than one read\n" * 40_000
TAMPERED = "VALUE = 'tampered'\n" + "# other padding\n" * 10_000

MODULE = """\
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

from .pkg import mod

try:  # an optional extension, absent from the signed folder: what a sourceless pkg/evil would fill in
    from .pkg import evil
except ImportError:
    evil = None


class Plugin(PluginBase):
    info = PluginInfo(id="{id}", name="{id}", version="1.0.0", trust_level=TrustLevel.{level})

    @capability
    def scan(self, payload):
        return {{"by": "{id}", "value": mod.VALUE, "seen": payload}}

    @capability
    def hidden(self, payload):
        return "plugin.toml does not declare me"
"""
UNTRUSTED_MODULE = MODULE.replace("from .pkg import", "from pkg import")  # the worker: its folder on sys.path


def make_plugin(root: Path, plugin_id: str, trust: str) -> Path:
    folder = root / plugin_id
    (folder / "pkg").mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{plugin_id}"\nversion = "1.0.0"\ntrust_level = "{trust}"\n'
        f'entry = "main:Plugin"\n\n[capabilities.scan]\n\n[pool]\nmin_workers = 1\nmax_workers = 1\n'
    )
    module = MODULE if trust == "trusted" else UNTRUSTED_MODULE
    (folder / "main.py").write_text(module.format(id=plugin_id, level=trust.upper()))
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "mod.py").write_text(VERIFIED)
    return folder


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    keys = tmp_path_factory.mktemp("keys")
    write_keypair(keys / "k.key", keys / "k.pub")
    return keys / "k.key", keys / "k.pub"


class Hosts:
    """Opens hosts over discovery paths (trusting ``signing_key``) and closes them all at the end."""

    def __init__(self, public_key: Path) -> None:
        self.public_key = public_key
        self.made: list[PluginHost] = []

    def open(self, *paths: Path) -> PluginHost:
        config = load_config(
            overrides={
                "discovery": {"paths": [str(p) for p in paths], "use_entry_points": False},
                "trust": {"trusted_keys": [str(self.public_key)]},
                "sandbox": {"boot_timeout_s": 5.0, "recycle_jitter": 0.0},
            }
        )
        host = PluginHost(config, registry=InMemoryPluginRegistry()).open()
        self.made.append(host)
        return host


@pytest.fixture
def hosts(signing_key: tuple[Path, Path]) -> Iterator[Hosts]:
    made = Hosts(signing_key[1])
    yield made
    for host in reversed(made.made):
        close_host(host)


def sign(folder: Path, signing_key: tuple[Path, Path]) -> Path:
    sign_plugin(folder, load_private_key(signing_key[0]))
    return folder


def sample(host: PluginHost, name: str, **labels: str) -> float | None:
    return host.metrics_registry.get_sample_value(name, labels)


def private_copies(host: PluginHost) -> list[str]:
    """Where the host keeps private copies: Trusted copies in the temp dir, Untrusted ones in the sandbox."""
    places = [os.path.join(tempfile.gettempdir(), "plugin-pool-")]  # the host's mkdtemp prefix
    if host.sandbox is not None and host.sandbox.supervisor.base_dir is not None:
        places.append(str(host.sandbox.supervisor.base_dir))
    return places


# -- swaps between discovery and start ---------------------------------------------------------------------------


def make_socket(path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="pp-", dir="/tmp"))  # AF_UNIX paths are short: bind, then move in place
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(short / "s"))
            os.rename(short / "s", path)
    finally:
        os.rmdir(short)


def make_char_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is: read forever
    except PermissionError:
        if os.environ.get("CI"):
            pytest.fail("creating a device node needs CAP_MKNOD; the CI runner must run these tests as root")
        pytest.skip("creating a device node needs CAP_MKNOD (root)")


SWAPS: dict[str, tuple[Callable[[Path], None], str]] = {
    "symlink": (lambda p: p.symlink_to("/dev/zero"), "symlink"),
    "fifo": (lambda p: os.mkfifo(p), "special_file"),
    "socket": (make_socket, "special_file"),
    "device": (make_char_device, "special_file"),
}


@pytest.mark.parametrize("trust", ["untrusted", "trusted"])
def test_a_swap_between_discovery_and_start_fails_only_that_plugin_audited_and_counted(
    tmp_path: Path, hosts: Hosts, signing_key: tuple[Path, Path], trust: str
) -> None:
    root = tmp_path / "plugins"
    folders = {name: make_plugin(root, f"swap-{name}", trust) for name in (*SWAPS, "changed", "steady")}
    if trust == "trusted":
        for folder in folders.values():
            sign(folder, signing_key)
    host = hosts.open(root)
    assert len(host.discover().ids) == len(folders)
    for name, (make, _) in SWAPS.items():
        target = folders[name] / "pkg" / "mod.py"
        target.unlink()
        make(target)
    (folders["changed"] / "pkg" / "mod.py").write_text(TAMPERED)

    host.start_plugins()
    assert host.get_health().active == ("swap-steady",)
    assert host.invoke("swap-steady", "scan", 1) == {"by": "swap-steady", "value": "verified", "seen": 1}
    assert host.get_plugin_health("swap-steady").trust_level is TrustLevel(trust)
    for name, (_, kind) in SWAPS.items():
        plugin_id, folder = f"swap-{name}", folders[name]
        health = host.get_plugin_health(plugin_id)
        reason = health.reason or ""
        assert health.state is PluginState.FAILED, (plugin_id, reason)
        # The plugin's own folder, the file and the fix; never the private copy.
        assert reason.startswith(f"loading failed: {folder / 'pkg' / 'mod.py'}: plugin '{plugin_id}': "), reason
        assert ("remove it" if kind == "special_file" else "replace the link") in reason
        assert not any(place in reason for place in private_copies(host)), reason
        [event] = host.registry.list_events(plugin_id=plugin_id, event=EventKind.INTEGRITY_REJECTED)
        assert event.state is PluginState.LOADING
        assert {k: event.details[k] for k in ("kind", "file", "folder")} == {
            "kind": kind,
            "file": "pkg/mod.py",
            "folder": str(folder),
        }
        assert event.details["fix"] and event.details["reason"]
        assert sample(host, "plugin_integrity_rejections_total", plugin_id=plugin_id, kind=kind) == 1.0
        assert [e.event for e in host.registry.list_events(plugin_id=plugin_id)][-3:] == [
            EventKind.LOADING,
            EventKind.INTEGRITY_REJECTED,
            EventKind.FAILED,
        ]
    changed = host.get_plugin_health("swap-changed")
    assert changed.state is PluginState.FAILED and "changed: pkg/mod.py" in (changed.reason or "")
    assert str(folders["changed"]) in (changed.reason or "")
    [mismatch] = host.registry.list_events(plugin_id="swap-changed", event=EventKind.HASH_MISMATCH)
    assert mismatch.details["changes"] == ["changed: pkg/mod.py"]
    assert sample(host, "plugin_integrity_rejections_total", plugin_id="swap-changed", kind="hash_mismatch") == 1.0
    if trust == "untrusted":
        assert host.sandbox is not None
        for name in (*SWAPS, "changed"):
            assert host.sandbox.list_worker_pids(f"swap-{name}") == []  # no worker ever booted
        # Nothing is left of the copies that failed: only the running plugin's copy is in the sandbox.
        assert host.sandbox.supervisor.base_dir is not None
        assert len(list((host.sandbox.supervisor.base_dir / "plugins").iterdir())) == 1
    else:
        assert host.sandbox is None
    # A failed plugin starts again once its folder is restored (Failed -> Loading stages a fresh copy).
    target = folders["fifo"] / "pkg" / "mod.py"
    target.unlink()
    target.write_text(VERIFIED)
    assert host.start_plugin("swap-fifo") is PluginState.ACTIVE
    assert host.invoke("swap-fifo", "scan", 2)["value"] == "verified"


def test_an_untrusted_copy_the_host_cannot_write_fails_only_that_plugin_without_an_integrity_audit(
    tmp_path: Path, hosts: Hosts
) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "steady", "untrusted")
    big = make_plugin(root, "big", "untrusted")
    (big / "data.bin").write_bytes(os.urandom(2 << 20))
    host = hosts.open(root)
    host.discover()
    assert host.start_plugin("steady") is PluginState.ACTIVE  # the pool and its zygote run before the limit
    # RLIMIT_FSIZE of 1 MiB in this process while "big" starts: the 2 MiB write of its private copy fails
    # with EFBIG (Python ignores SIGXFSZ), as a full disk would. Restored at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        state = host.start_plugin("big")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert state is PluginState.FAILED
    reason = host.get_plugin_health("big").reason or ""
    assert reason.startswith(f"loading failed: plugin folder {big}: cannot write the private copy of data.bin")
    assert not any(place in reason for place in private_copies(host)), reason
    events = [e.event for e in host.registry.list_events(plugin_id="big")]
    assert events[-2:] == [EventKind.LOADING, EventKind.FAILED]  # failed at Loading, no integrity event
    assert sample(host, "plugin_failures_total", plugin_id="big") == 1.0
    assert sample_sum(host, "hash_mismatch", ["big"]) == 0
    assert host.invoke("steady", "scan", 1)["value"] == "verified"
    assert host.sandbox is not None and host.sandbox.list_worker_pids("big") == []
    assert host.start_plugin("big") is PluginState.ACTIVE  # the next start, with room to write, succeeds


# -- bytecode added to a signed Trusted folder never runs in the host ---------------------------------------------

EVIL = f"import os\nos.environ['{SIDE_EFFECT_VAR}'] = 'ran'\nVALUE = 'evil'\n"


def compile_evil(target: Path, mode: py_compile.PycInvalidationMode) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "evil_source.py"
        source.write_text(EVIL)
        py_compile.compile(str(source), cfile=str(target), doraise=True, invalidation_mode=mode)


@pytest.mark.parametrize("when", ["before_discovery", "after_discovery"])
@pytest.mark.parametrize("how", ["sourceless_package", "shadowing_cache"])
def test_bytecode_added_after_signing_a_trusted_folder_never_runs_in_the_host(
    tmp_path: Path, hosts: Hosts, signing_key: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, when: str, how: str
) -> None:
    monkeypatch.delenv(SIDE_EFFECT_VAR, raising=False)
    root = tmp_path / "plugins"
    folder = sign(make_plugin(root, "vetted", "trusted"), signing_key)

    def add_bytecode() -> None:
        if how == "sourceless_package":
            # pkg/evil/__init__.pyc with no source: the signed main.py tries `from .pkg import evil`, and Python
            # imports a sourceless package, so a copy holding it would run it in the host.
            (folder / "pkg" / "evil").mkdir()
            compile_evil(folder / "pkg" / "evil" / "__init__.pyc", py_compile.PycInvalidationMode.TIMESTAMP)
        else:
            # An unchecked-hash cache of pkg/mod.py: Python would run it without ever looking at the source.
            compile_evil(
                folder / "pkg" / "__pycache__" / f"mod.{sys.implementation.cache_tag}.pyc",
                py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )

    if when == "before_discovery":
        add_bytecode()
    host = hosts.open(root)
    host.discover()
    if when == "after_discovery":
        add_bytecode()
    host.start_plugins()

    health = host.get_plugin_health("vetted")
    if how == "sourceless_package":
        # Refused whole: at discovery (the hash refuses it), or at staging (the copy refuses it).
        assert health.state is PluginState.FAILED, health
        assert "pkg/evil/__init__.pyc" in (health.reason or "") and "bytecode" in (health.reason or "")
        assert "ship the source (.py) instead" in (health.reason or "")
        kinds = [e.details.get("kind") for e in host.registry.list_events(event=EventKind.INTEGRITY_REJECTED)]
        assert kinds == ["bytecode"]
    else:
        # __pycache__ is neither hashed nor copied: the host compiled the verified source itself.
        assert health.state is PluginState.ACTIVE, health.reason
        assert host.invoke("vetted", "scan", 0)["value"] == "verified"
    assert SIDE_EFFECT_VAR not in os.environ  # the bytecode never ran in this process
    assert not [m for m in sys.modules.values() if getattr(m, "VALUE", None) == "evil"]


# -- ten plugins, one bad ---------------------------------------------------------------------------------------


def test_ten_untrusted_plugins_with_one_bad_folder_start_the_other_nine(tmp_path: Path, hosts: Hosts) -> None:
    root = tmp_path / "plugins"
    folders = [make_plugin(root, f"p{n:02d}", "untrusted") for n in range(10)]
    host = hosts.open(root)
    assert len(host.discover().ids) == 10
    bad = folders[4] / "pkg" / "mod.py"
    bad.unlink()
    os.mkfifo(bad)  # swapped in after discovery: a reader that opened it would wait forever
    health = host.start_plugins()
    assert set(health.active) == {f"p{n:02d}" for n in range(10)} - {"p04"}
    assert set(health.failed) == {"p04"} and "is a special file (fifo)" in (health.failed["p04"] or "")
    for n in range(10):
        if n != 4:
            assert host.invoke(f"p{n:02d}", "scan", n) == {"by": f"p{n:02d}", "value": "verified", "seen": n}


# -- a file rewritten in a loop while the host stages it ---------------------------------------------------------


def _rewriter(target: Path, stop: threading.Event, errors: list[BaseException]) -> threading.Thread:
    """Rewrite ``target`` in place, alternating verified and tampered bytes, until ``stop`` (bounded)."""
    verified, tampered = VERIFIED.encode(), TAMPERED.encode()

    def loop() -> None:
        try:
            for i in range(1_000_000):
                if stop.is_set():
                    return
                with open(target, "r+b") as fh:
                    fh.write(tampered if i % 2 else verified)
                    fh.truncate()
        except BaseException as exc:
            errors.append(exc)

    return threading.Thread(target=loop, daemon=True)


@pytest.mark.parametrize("trust", ["untrusted", "trusted"])
def test_a_copy_raced_by_a_rewriting_thread_runs_the_verified_code_or_fails(
    tmp_path: Path, hosts: Hosts, signing_key: tuple[Path, Path], trust: str
) -> None:
    rounds = 8 if trust == "untrusted" else 24
    root = tmp_path / "plugins"
    # A Trusted plugin is imported once per host, an Untrusted one staged at every start: one folder each.
    plugin_ids = [f"raced-{n:02d}" for n in range(rounds if trust == "trusted" else 1)]
    folders = [make_plugin(root, plugin_id, trust) for plugin_id in plugin_ids]
    if trust == "trusted":
        for folder in folders:
            sign(folder, signing_key)
    host = hosts.open(root)
    host.discover()
    outcomes: Counter[str] = Counter()
    for n in range(rounds):
        plugin_id = plugin_ids[n % len(plugin_ids)]
        stop, errors = threading.Event(), []
        thread = _rewriter(folders[n % len(folders)] / "pkg" / "mod.py", stop, errors)
        thread.start()
        try:
            state = host.start_plugin(plugin_id)
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive() and not errors, errors
        (folders[n % len(folders)] / "pkg" / "mod.py").write_text(VERIFIED)
        if state is PluginState.ACTIVE:
            assert host.invoke(plugin_id, "scan", n)["value"] == "verified"  # exactly the verified bytes run
            outcomes["verified"] += 1
            if trust == "untrusted":
                host.stop_plugin(plugin_id)
        else:
            reason = host.get_plugin_health(plugin_id).reason or ""
            assert state is PluginState.FAILED and "content hash mismatch" in reason, reason
            assert "changed: pkg/mod.py" in reason and str(folders[n % len(folders)]) in reason
            outcomes["hash_mismatch"] += 1
    assert sum(outcomes.values()) == rounds
    assert outcomes["hash_mismatch"] == sample_sum(host, "hash_mismatch", plugin_ids)


def sample_sum(host: PluginHost, kind: str, plugin_ids: list[str]) -> int:
    return int(
        sum(sample(host, "plugin_integrity_rejections_total", plugin_id=p, kind=kind) or 0.0 for p in plugin_ids)
    )


# -- an undeclared capability of an Untrusted plugin is reported -------------------------------------------------


def test_an_untrusted_plugins_undeclared_capability_is_reported_when_it_loads(
    tmp_path: Path, hosts: Hosts, caplog: pytest.LogCaptureFixture
) -> None:
    make_plugin(tmp_path / "plugins", "sandboxed", "untrusted")
    host = hosts.open(tmp_path / "plugins")
    host.discover()
    caplog.set_level(logging.WARNING, logger="plugin_pool.host")
    host.start_plugins()
    assert host.is_active("sandboxed"), host.get_health().failed
    found = [r for r in caplog.records if getattr(r, "event", None) == "capability_undeclared"]
    assert [(r.pluginId, r.trustLevel, r.capability) for r in found] == [  # type: ignore[attr-defined]
        ("sandboxed", "untrusted", "hidden")
    ]
    assert host.get_plugin_health("sandboxed").capabilities == ("scan",)  # never routed
    with pytest.raises(Exception, match="did not declare capability 'hidden'"):
        host.invoke("sandboxed", "hidden", None)
