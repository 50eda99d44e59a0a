"""The one reader of plugin folders (plugin_pool.content): what is hashed is exactly what a copy holds."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from plugin_pool.content import (
    ContentHash,
    FolderLimits,
    compute_content_hash,
    hash_and_copy,
)
from plugin_pool.errors import REJECTION_KINDS, IntegrityRejectedError, StagingError

MANIFEST = """\
[plugin]
id = "demo"
name = "Demo"
version = "1.0.0"
trust_level = "untrusted"
entry = "scanner:Scanner"

[capabilities.scan]
"""


def make_plugin(folder: Path) -> Path:
    (folder / "pkg" / "sub").mkdir(parents=True)
    (folder / "plugin.toml").write_text(MANIFEST)
    (folder / "scanner.py").write_text("class Scanner:\n    pass\n")
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "big.bin").write_bytes(os.urandom(3 << 20))  # several read chunks
    return folder


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return make_plugin(tmp_path / "plugin")


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under ``root``: relative path -> (kind, permission bits)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = ("dir" if stat.S_ISDIR(st.st_mode) else "file", stat.S_IMODE(st.st_mode))
    return out


def test_the_copy_holds_exactly_the_hashed_files_with_host_modes(plugin: Path, tmp_path: Path) -> None:
    (plugin / "scanner.py").chmod(0o700)
    (plugin / "pkg").chmod(0o700)
    copy = tmp_path / "copy"
    copied = hash_and_copy(plugin, copy)
    assert copied == compute_content_hash(plugin)
    entries = tree(copy)
    files = {rel for rel, (kind, _) in entries.items() if kind == "file"}
    assert files == set(copied.files) == {"plugin.toml", "scanner.py", "pkg/__init__.py", "pkg/sub/data.bin", "big.bin"}
    assert all(mode == (0o755 if kind == "dir" else 0o644) for kind, mode in entries.values())
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700  # opened up by staging once verified
    for rel in files:
        assert (copy / rel).read_bytes() == (plugin / rel).read_bytes()
        assert (copy / rel).stat().st_uid == os.geteuid()
    # Hashing the copy gives the same hash: the copy is the hashed bytes.
    assert compute_content_hash(copy) == copied


def test_caches_git_and_empty_folders_never_reach_the_copy(plugin: Path, tmp_path: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "__pycache__").mkdir()
    (plugin / "__pycache__" / "scanner.cpython-311.pyc").write_bytes(b"foreign bytecode")
    (plugin / "pkg" / "__pycache__").mkdir()
    (plugin / "pkg" / "__pycache__" / "evil.py").write_text("import os\n")
    (plugin / ".git").mkdir()
    (plugin / ".git" / "config").write_text("[core]\n")
    (plugin / "only_caches" / "__pycache__").mkdir(parents=True)
    (plugin / "empty" / "deeper").mkdir(parents=True)
    # An empty folder would shadow a missing import as a namespace package; it is not copied.
    copy = tmp_path / "copy"
    assert hash_and_copy(plugin, copy) == before
    names = set(tree(copy))
    assert not {n for n in names if "__pycache__" in n or ".git" in n or "empty" in n or "only_caches" in n}


@pytest.mark.parametrize(
    "rel", ["__init__.pyc", "pkg/__init__.pyc", "pkg/sub/mod.pyc", "pkg/mod.cpython-311.pyc"], ids=str
)
def test_bytecode_outside_pycache_is_refused_and_nothing_is_left(plugin: Path, tmp_path: Path, rel: str) -> None:
    (plugin / rel).write_bytes(b"\x00bytecode")
    copy = tmp_path / "copy"
    with pytest.raises(IntegrityRejectedError) as info:
        hash_and_copy(plugin, copy, plugin_id="demo")
    error = info.value
    assert (error.kind, error.file, error.folder, error.plugin_id) == ("bytecode", rel, plugin, "demo")
    assert str(plugin / rel) in str(error) and "plugin 'demo'" in str(error) and "ship the source" in str(error)
    assert str(copy) not in str(error)
    assert not copy.exists()


@pytest.mark.parametrize("where", ["file", "folder", "nested"])
def test_symlinks_are_refused_in_the_copy_too(plugin: Path, tmp_path: Path, where: str) -> None:
    link = {"file": plugin / "alias.py", "folder": plugin / "pkg_alias", "nested": plugin / "pkg" / "sub" / "x"}[where]
    os.symlink({"file": "scanner.py", "folder": "pkg", "nested": "/etc/passwd"}[where], link)
    copy = tmp_path / "copy"
    with pytest.raises(IntegrityRejectedError, match="symbolic link") as info:
        hash_and_copy(plugin, copy)
    assert info.value.kind == "symlink" and info.value.path == link
    assert not copy.exists()


def test_a_fifo_is_refused_without_blocking_or_reading(plugin: Path, tmp_path: Path) -> None:
    os.mkfifo(plugin / "pkg" / "pipe.py")
    with pytest.raises(IntegrityRejectedError, match=r"special file \(fifo\)") as info:
        hash_and_copy(plugin, tmp_path / "copy")
    assert info.value.kind == "special_file" and info.value.file == "pkg/pipe.py"


def test_the_plugin_folder_itself_must_not_be_a_symlink_when_staged(plugin: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(plugin, alias)
    with pytest.raises(IntegrityRejectedError, match="symbolic link") as info:
        hash_and_copy(alias, tmp_path / "copy")
    assert info.value.kind == "symlink" and info.value.path == alias and info.value.file == ""


def test_a_file_over_the_per_file_limit_is_refused_before_it_is_read(plugin: Path, tmp_path: Path) -> None:
    limits = FolderLimits(max_file_bytes=(3 << 20) - 1)
    with pytest.raises(IntegrityRejectedError, match="larger than the limit") as info:
        hash_and_copy(plugin, tmp_path / "copy", limits=limits)
    assert info.value.kind == "file_too_large" and info.value.file == "big.bin"
    assert "max_file_bytes" in info.value.fix
    assert compute_content_hash(plugin, limits=FolderLimits(max_file_bytes=3 << 20)).files["big.bin"]


def test_a_sparse_file_claiming_more_than_the_default_limit_is_refused_at_once(plugin: Path) -> None:
    with (plugin / "huge.bin").open("wb") as fh:
        fh.truncate(FolderLimits().max_file_bytes + 1)  # sparse: nothing to read, only the size counts
    with pytest.raises(IntegrityRejectedError) as info:
        compute_content_hash(plugin)
    assert info.value.kind == "file_too_large" and info.value.file == "huge.bin"


def test_the_folder_total_limit_counts_every_file(plugin: Path, tmp_path: Path) -> None:
    total = sum(p.stat().st_size for p in plugin.rglob("*") if p.is_file())
    with pytest.raises(IntegrityRejectedError, match="past the limit") as info:
        hash_and_copy(plugin, tmp_path / "copy", limits=FolderLimits(max_total_bytes=total - 1))
    assert info.value.kind == "folder_too_large" and "max_plugin_bytes" in info.value.fix
    assert not (tmp_path / "copy").exists()
    assert hash_and_copy(plugin, tmp_path / "copy2", limits=FolderLimits(max_total_bytes=total))


def test_the_entry_count_and_depth_limits(plugin: Path, tmp_path: Path) -> None:
    # 5 files and 2 folders below the root.
    assert compute_content_hash(plugin, limits=FolderLimits(max_files=7))
    with pytest.raises(IntegrityRejectedError) as info:
        compute_content_hash(plugin, limits=FolderLimits(max_files=6))
    assert info.value.kind == "too_many_files" and "max_plugin_files" in info.value.fix
    deep = plugin / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "x.py").write_text("")
    assert compute_content_hash(plugin, limits=FolderLimits(max_depth=3))
    with pytest.raises(IntegrityRejectedError) as info:
        compute_content_hash(plugin, limits=FolderLimits(max_depth=2))
    assert (info.value.kind, info.value.file) == ("too_deep", "a/b/c")


def test_a_manifest_over_one_mebibyte_is_refused_even_under_a_larger_file_limit(plugin: Path) -> None:
    (plugin / "plugin.toml").write_text(MANIFEST + "# padding\n" * 120_000)
    with pytest.raises(IntegrityRejectedError, match="manifest is too large") as info:
        compute_content_hash(plugin)
    assert (info.value.kind, info.value.file) == ("manifest", "plugin.toml")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'[plugin]\nid = "\xff"\n', "not UTF-8"),
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"x = nan\n", "inf and nan"),
    ],
    ids=["not-utf8", "deep-nesting", "nan"],
)
def test_a_manifest_that_cannot_be_canonicalized_is_refused(plugin: Path, text: bytes, says: str) -> None:
    (plugin / "plugin.toml").write_bytes(text)
    with pytest.raises(IntegrityRejectedError, match=says) as info:
        compute_content_hash(plugin)
    assert (info.value.kind, info.value.file) == ("manifest", "plugin.toml")


def test_the_destination_must_not_exist(plugin: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep").write_text("mine")
    with pytest.raises(StagingError, match="cannot write the private copy") as info:
        hash_and_copy(plugin, taken, plugin_id="demo")
    assert info.value.plugin_id == "demo" and str(plugin) in str(info.value)
    assert (taken / "keep").read_text() == "mine"


def test_a_missing_source_leaves_no_destination(tmp_path: Path) -> None:
    with pytest.raises(IntegrityRejectedError, match="does not exist") as info:
        hash_and_copy(tmp_path / "nope", tmp_path / "copy")
    assert info.value.kind == "unreadable" and not (tmp_path / "copy").exists()


def test_every_rejection_kind_is_known_and_an_unknown_one_is_a_bug() -> None:
    assert len(set(REJECTION_KINDS)) == len(REJECTION_KINDS)
    with pytest.raises(ValueError, match="unknown integrity rejection kind"):
        IntegrityRejectedError(folder="/x", file="", kind="nope", reason="r", fix="f")


def test_folder_limits_refuse_nonsense() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            FolderLimits(max_files=bad)  # type: ignore[arg-type]


def test_of_files_is_the_digest_over_sorted_lines() -> None:
    a = ContentHash.of_files({"b": "sha256:" + "1" * 64, "a": "sha256:" + "2" * 64})
    b = ContentHash.of_files({"a": "sha256:" + "2" * 64, "b": "sha256:" + "1" * 64})
    assert a == b and list(a.files) == ["a", "b"]
