"""Staging against a hostile folder, on real files: races, swaps at every step, special files, big folders.

No host here: these drive plugin_pool.discovery and plugin_pool.staging directly, as the host and the
sandbox supervisor call them. Every loop is bounded; every helper thread stops itself.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugin_pool._files
from plugin_pool.content import FolderLimits, compute_content_hash
from plugin_pool.discovery import discover
from plugin_pool.errors import ContentHashMismatchError, IntegrityRejectedError
from plugin_pool.staging import compile_bytecode, stage_plugin

VERIFIED = b"VALUE = 'verified'\n" + b"# padding to span more than one read\n" * 40_000
TAMPERED = b"VALUE = 'tampered'\n" + b"# other padding\n" * 10_000

MANIFEST = """\
[plugin]
id = "target"
name = "Target"
version = "1.0.0"
trust_level = "untrusted"
entry = "main:Plugin"

[capabilities.scan]
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins" / "target"
    (folder / "pkg").mkdir(parents=True)
    (folder / "plugin.toml").write_text(MANIFEST)
    (folder / "main.py").write_text("from .pkg.mod import VALUE\n\nclass Plugin:\n    pass\n")
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "mod.py").write_bytes(VERIFIED)
    return folder


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """Fresh destinations in a 0700 folder, as the host's mkdtemp and the supervisor's base directory are."""
    base = tmp_path / "private"
    base.mkdir(mode=0o700)
    counter = iter(range(1_000_000))
    yield lambda: base / f"copy-{next(counter)}"


def discovered_hash(plugin: Path) -> Any:
    result = discover([plugin.parent], use_entry_points=False)
    assert result.ids == ("target",), result.errors
    found = result.get("target")
    assert found is not None and found.content_hash is not None
    return found.content_hash


# -- special files and symlinks, at each step -----------------------------------------------------------------


def make_socket(path: Path) -> None:
    # AF_UNIX paths are short: bind in a short temp folder on the same file system, then move it in place.
    short = Path(tempfile.mkdtemp(prefix="pp-", dir="/tmp"))
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(short / "s"))
            os.rename(short / "s", path)
    finally:
        os.rmdir(short)


def make_char_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # the device /dev/zero is
    except PermissionError:
        if os.environ.get("CI"):
            pytest.fail("creating a device node needs CAP_MKNOD; the CI runner must run these tests as root")
        pytest.skip("creating a device node needs CAP_MKNOD (root)")


SWAPS: dict[str, tuple[Callable[[Path], None], str]] = {
    "symlink-to-dev-zero": (lambda p: p.symlink_to("/dev/zero"), "symlink"),
    "symlink-inside": (lambda p: p.symlink_to("__init__.py"), "symlink"),
    "fifo": (lambda p: os.mkfifo(p), "special_file"),
    "socket": (make_socket, "special_file"),
    "char-device": (make_char_device, "special_file"),
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_special_file_is_refused_at_discovery(plugin: Path, swap: str) -> None:
    make, kind = SWAPS[swap]
    (plugin / "pkg" / "mod.py").unlink()
    make(plugin / "pkg" / "mod.py")
    result = discover([plugin.parent], use_entry_points=False)
    [error] = result.errors
    assert (error.plugin_id, error.error_kind, error.integrity_kind) == ("target", "integrity", kind)
    assert str(plugin / "pkg" / "mod.py") in (error.error or "")


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_special_file_swapped_in_after_discovery_is_refused_at_staging(
    plugin: Path, private: Callable[[], Path], swap: str
) -> None:
    expected = discovered_hash(plugin)
    make, kind = SWAPS[swap]
    (plugin / "pkg" / "mod.py").unlink()
    make(plugin / "pkg" / "mod.py")
    destination = private()
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(plugin, destination, plugin_id="target", expected=expected)
    error = info.value
    assert (error.kind, error.folder, error.file, error.plugin_id) == (kind, plugin, "pkg/mod.py", "target")
    assert str(plugin / "pkg" / "mod.py") in str(error) and str(destination) not in str(error)
    assert not destination.exists()


class SwapOnOpen:
    """Stands in for ``os`` inside plugin_pool._files: just before ``name`` is opened (after the folder was
    listed and the entry seen as what it was), run ``swap`` once: the race an attacker would aim for."""

    def __init__(self, name: str, swap: Callable[[], None]) -> None:
        self.name = name
        self.swap = swap
        self.swapped = False

    def __getattr__(self, attr: str) -> Any:
        return getattr(os, attr)

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if not self.swapped and os.fspath(path) == self.name:
            self.swapped = True
            self.swap()
        return os.open(path, flags, mode, dir_fd=dir_fd)


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_file_swapped_between_listing_and_open_is_refused_without_reading_it(
    plugin: Path, private: Callable[[], Path], monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    expected = discovered_hash(plugin)
    make, kind = SWAPS[swap]
    target = plugin / "pkg" / "mod.py"

    def replace() -> None:
        target.unlink()
        make(target)

    spy = SwapOnOpen("mod.py", replace)
    monkeypatch.setattr(plugin_pool._files, "os", spy)
    destination = private()
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(plugin, destination, plugin_id="target", expected=expected)
    assert spy.swapped
    assert (info.value.kind, info.value.folder, info.value.file) == (kind, plugin, "pkg/mod.py")
    assert not destination.exists()


@pytest.mark.parametrize(
    ("swap", "kind"),
    [
        (lambda pkg: (pkg.rename(pkg.with_name("real")), pkg.symlink_to("real")), "symlink"),
        (lambda pkg: (pkg.rename(pkg.with_name("real")), pkg.symlink_to("/dev")), "symlink"),
        (lambda pkg: (pkg.rename(pkg.with_name("real")), os.mkfifo(pkg)), "special_file"),
        (lambda pkg: (pkg.rename(pkg.with_name("real")), pkg.write_text("now a file")), "unreadable"),
    ],
    ids=["symlink-inside", "symlink-to-dev", "fifo", "regular-file"],
)
def test_a_folder_swapped_between_listing_and_open_is_refused(
    plugin: Path, private: Callable[[], Path], monkeypatch: pytest.MonkeyPatch, swap: Any, kind: str
) -> None:
    expected = discovered_hash(plugin)
    spy = SwapOnOpen("pkg", lambda: swap(plugin / "pkg"))
    monkeypatch.setattr(plugin_pool._files, "os", spy)
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(plugin, private(), plugin_id="target", expected=expected)
    assert spy.swapped and (info.value.kind, info.value.file) == (kind, "pkg")


def test_the_plugin_folder_replaced_by_a_symlink_after_discovery_is_refused(
    plugin: Path, private: Callable[[], Path], tmp_path: Path
) -> None:
    expected = discovered_hash(plugin)
    plugin.rename(tmp_path / "moved")
    plugin.symlink_to(tmp_path / "moved")  # the same bytes, behind a link: refused all the same
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(plugin, private(), plugin_id="target", expected=expected)
    assert (info.value.kind, info.value.folder, info.value.file) == ("symlink", plugin, "")


# -- races: what is copied is what is verified, or the staging fails -------------------------------------------


def _run_against(
    plugin: Path, private: Callable[[], Path], expected: Any, rounds: int, mess: Callable[[], None]
) -> Counter[str]:
    """Stage ``rounds`` times while a thread runs ``mess`` in a loop; check every outcome; count them."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for _ in range(1_000_000):  # bounded; stops at once when the stagings are done
                if stop.is_set():
                    return
                mess()
        except BaseException as exc:
            errors.append(exc)

    outcomes: Counter[str] = Counter()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        for _ in range(rounds):
            destination = private()
            try:
                staged = stage_plugin(plugin, destination, plugin_id="target", expected=expected)
            except ContentHashMismatchError as exc:
                assert exc.path == plugin and exc.expected == expected
                assert not destination.exists()
                outcomes["hash_mismatch"] += 1
            except IntegrityRejectedError as exc:
                assert exc.folder == plugin and exc.kind in ("symlink", "special_file", "unreadable"), exc
                assert not destination.exists()
                outcomes[exc.kind] += 1
            else:
                # A copy that passed holds exactly the verified bytes, every one of them.
                assert (staged.path / "pkg" / "mod.py").read_bytes() == VERIFIED
                assert compute_content_hash(staged.path) == expected == staged.content_hash
                outcomes["verified"] += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors
    assert sum(outcomes.values()) == rounds
    return outcomes


def test_a_file_rewritten_in_place_in_a_loop_is_copied_verified_or_not_at_all(
    plugin: Path, private: Callable[[], Path]
) -> None:
    expected = discovered_hash(plugin)
    target = plugin / "pkg" / "mod.py"
    state = {"flip": False}

    def rewrite() -> None:
        # In place (no rename): a reader can see a torn mix of the two contents, or a short file.
        state["flip"] = not state["flip"]
        with target.open("r+b") as fh:
            data = TAMPERED if state["flip"] else VERIFIED
            fh.write(data)
            fh.truncate(len(data))

    outcomes = _run_against(plugin, private, expected, 150, rewrite)
    print("in-place rewrite race:", dict(outcomes))
    assert set(outcomes) <= {"verified", "hash_mismatch"}


def test_a_file_swapped_for_links_and_fifos_in_a_loop_is_copied_verified_or_refused(
    plugin: Path, private: Callable[[], Path], tmp_path: Path
) -> None:
    expected = discovered_hash(plugin)
    target = plugin / "pkg" / "mod.py"
    spare = tmp_path / "spares"
    spare.mkdir()
    (spare / "good").write_bytes(VERIFIED)
    os.symlink("/dev/zero", spare / "link")
    os.mkfifo(spare / "fifo")
    cycle = iter(range(1_000_000))

    def swap() -> None:
        # Atomic renames over the file: the name always exists, as a file, a link or a fifo; the good file
        # stays a little longer so that some stagings find it.
        step = next(cycle) % 3
        if step == 0:
            os.link(spare / "fifo", spare / "fifo.tmp")
            os.rename(spare / "fifo.tmp", target)
        elif step == 1:
            os.symlink("/dev/zero", spare / "link.tmp")
            os.rename(spare / "link.tmp", target)
        else:
            (spare / "good.tmp").write_bytes(VERIFIED)
            os.rename(spare / "good.tmp", target)
            time.sleep(0.002)

    outcomes = _run_against(plugin, private, expected, 150, swap)
    print("swap race:", dict(outcomes))
    assert set(outcomes) <= {"verified", "hash_mismatch", "symlink", "special_file", "unreadable"}


# -- size: many files, large files -------------------------------------------------------------------------------


def test_a_folder_of_ten_thousand_small_files_is_discovered_and_staged(
    plugin: Path, private: Callable[[], Path]
) -> None:
    data = plugin / "data"
    for i in range(100):
        sub = data / f"d{i:02d}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"f{j:02d}.txt").write_bytes(b"%d/%d\n" % (i, j))
    expected = discovered_hash(plugin)
    assert len(expected.files) == 10_004
    staged = stage_plugin(plugin, private(), plugin_id="target", expected=expected)
    copied = [p for p in staged.path.rglob("*") if p.is_file()]
    assert len(copied) == 10_004 and (staged.path / "data" / "d42" / "f07.txt").read_bytes() == b"42/7\n"
    # One entry over the count limit is refused, naming the limit to raise.
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(plugin, private(), plugin_id="target", expected=expected, limits=FolderLimits(max_files=10_000))
    assert info.value.kind == "too_many_files" and "max_plugin_files" in str(info.value)


def test_a_file_larger_than_the_default_limit_is_refused_at_staging(plugin: Path, private: Callable[[], Path]) -> None:
    expected = discovered_hash(plugin)
    with (plugin / "model.bin").open("wb") as fh:
        fh.truncate(FolderLimits().max_file_bytes + 1)
    destination = private()
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(plugin, destination, plugin_id="target", expected=expected)
    assert (info.value.kind, info.value.file) == ("file_too_large", "model.bin")
    assert "max_file_bytes" in str(info.value) and not destination.exists()


def test_a_folder_past_the_total_limit_fails_partway_and_leaves_nothing(
    plugin: Path, private: Callable[[], Path]
) -> None:
    for i in range(8):
        (plugin / f"chunk{i}.bin").write_bytes(os.urandom(512 * 1024))
    expected = discovered_hash(plugin)
    destination = private()
    with pytest.raises(IntegrityRejectedError) as info:
        stage_plugin(
            plugin, destination, plugin_id="target", expected=expected, limits=FolderLimits(max_total_bytes=3 << 20)
        )
    assert info.value.kind == "folder_too_large" and not destination.exists()


# -- bytecode compiled by the host, in a child ---------------------------------------------------------------------


def test_the_isolated_compiler_writes_caches_the_workers_can_use(plugin: Path, private: Callable[[], Path]) -> None:
    (plugin / "broken.py").write_text("def (:\n")
    expected = discovered_hash(plugin)
    staged = stage_plugin(plugin, private(), plugin_id="target", expected=expected, precompile=True)
    tag = sys.implementation.cache_tag
    for rel in ("main.py", "pkg/__init__.py", "pkg/mod.py"):
        cache = Path(os.path.dirname(staged.path / rel)) / "__pycache__" / f"{Path(rel).stem}.{tag}.pyc"
        assert cache.is_file() and stat.S_IMODE(cache.stat().st_mode) == 0o644
        assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o755
    assert not (staged.path / "__pycache__" / f"broken.{tag}.pyc").exists()
    report = compile_bytecode(staged)
    assert report.compiled == 3 and [rel for rel, _ in report.failed] == ["broken.py"]
    assert "SyntaxError" in report.failed[0][1] or "invalid syntax" in report.failed[0][1]
