"""Staging (plugin_pool.staging): a verified private copy, errors that name the plugin's own folder."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plugin_pool.content import FolderLimits, compute_content_hash
from plugin_pool.errors import ContentHashMismatchError, IntegrityError, IntegrityRejectedError
from plugin_pool.integrity import key_id, sign_plugin, verify_plugin
from plugin_pool.staging import (
    BytecodeCache,
    CompileReport,
    StagedPlugin,
    compile_bytecode,
    remove_staged,
    stage_plugin,
)

MANIFEST = """\
[plugin]
id = "stager"
name = "Stager"
version = "1.0.0"
trust_level = "trusted"
entry = "main:Plugin"

[capabilities.scan]
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins" / "stager"
    (folder / "pkg").mkdir(parents=True)
    (folder / "plugin.toml").write_text(MANIFEST)
    (folder / "main.py").write_text("from .pkg import VALUE\n\nclass Plugin:\n    value = VALUE\n")
    (folder / "pkg" / "__init__.py").write_text("VALUE = 'verified'\n")
    return folder


def stage(plugin: Path, tmp_path: Path, **options: object) -> StagedPlugin:
    expected = options.pop("expected", None) or compute_content_hash(plugin)
    return stage_plugin(plugin, tmp_path / "private" / "copy", plugin_id="stager", expected=expected, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def private(tmp_path: Path) -> None:
    (tmp_path / "private").mkdir(mode=0o700)


def test_a_verified_copy_is_opened_up_and_independent_of_the_folder(plugin: Path, tmp_path: Path) -> None:
    expected = compute_content_hash(plugin)
    staged = stage(plugin, tmp_path, expected=expected)
    assert staged.plugin_id == "stager" and staged.source == plugin
    assert staged.content_hash == expected and staged.path == tmp_path / "private" / "copy"
    assert stat.S_IMODE(staged.path.stat().st_mode) == 0o755
    (plugin / "main.py").write_text("EVIL = True\n")  # the folder changes after staging
    assert "VALUE" in (staged.path / "main.py").read_text()


def test_a_changed_file_is_a_hash_mismatch_naming_the_folder_not_the_copy(plugin: Path, tmp_path: Path) -> None:
    expected = compute_content_hash(plugin)
    (plugin / "pkg" / "__init__.py").write_text("VALUE = 'tampered'\n")
    (plugin / "pkg" / "extra.py").write_text("")
    with pytest.raises(ContentHashMismatchError) as info:
        stage(plugin, tmp_path, expected=expected)
    error = info.value
    assert error.kind == "hash_mismatch" and error.plugin_id == "stager" and error.path == plugin
    assert error.changes == ["changed: pkg/__init__.py", "added: pkg/extra.py"]
    assert str(plugin) in str(error) and "copy" not in str(error) and "restore them" in str(error)
    assert not (tmp_path / "private" / "copy").exists()


def test_a_sourceless_init_pyc_added_after_discovery_is_refused(plugin: Path, tmp_path: Path) -> None:
    expected = compute_content_hash(plugin)
    (plugin / "evil").mkdir()
    (plugin / "evil" / "__init__.pyc").write_bytes(b"\x00")
    with pytest.raises(IntegrityRejectedError) as info:
        stage(plugin, tmp_path, expected=expected)
    assert (info.value.kind, info.value.folder, info.value.file) == ("bytecode", plugin, "evil/__init__.pyc")
    assert not (tmp_path / "private" / "copy").exists()


def test_a_signature_made_before_a_pyc_was_added_no_longer_verifies(plugin: Path) -> None:
    # The evaluation's case: a package holding only __init__.pyc, added to a signed folder after signing.
    key = Ed25519PrivateKey.generate()
    keys = {key_id(key.public_key()): key.public_key()}
    sign_plugin(plugin, key)
    assert verify_plugin(plugin, keys)[0] == key_id(key.public_key())
    (plugin / "sneaky").mkdir()
    (plugin / "sneaky" / "__init__.pyc").write_bytes(b"\x00bytecode")
    with pytest.raises(IntegrityError, match="compiled bytecode"):
        verify_plugin(plugin, keys)


def test_a_limit_applies_at_staging_too(plugin: Path, tmp_path: Path) -> None:
    (plugin / "data.bin").write_bytes(b"x" * 4096)
    with pytest.raises(IntegrityRejectedError) as info:
        stage(plugin, tmp_path, limits=FolderLimits(max_file_bytes=4095))
    assert (info.value.kind, info.value.file) == ("file_too_large", "data.bin")


def test_precompiled_bytecode_is_made_by_the_host_from_the_verified_sources(plugin: Path, tmp_path: Path) -> None:
    staged = stage(plugin, tmp_path, precompile=True, isolated_compile=False)
    caches = sorted(p.relative_to(staged.path).as_posix() for p in staged.path.rglob("*.pyc"))
    tag = sys.implementation.cache_tag
    assert caches == [f"__pycache__/main.{tag}.pyc", f"pkg/__pycache__/__init__.{tag}.pyc"]
    for path in staged.path.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644)
    # Each cache is an unchecked hash-based pyc (PEP 552: flags 0b01) of exactly its verified source: the copy
    # never changes, so the import system uses it without reading the source, in this copy or in a later copy
    # with the same content hash (the bytecode cache), whatever the files' mtimes.
    for rel in ("main.py", "pkg/__init__.py"):
        source = staged.path / rel
        header = importlib.util.cache_from_source(str(source))
        data = Path(header).read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(data[4:8], "little") == 0b01
        assert data[8:16] == importlib.util.source_hash(source.read_bytes())


def test_a_source_that_does_not_compile_is_reported_not_raised(plugin: Path, tmp_path: Path) -> None:
    (plugin / "broken.py").write_text("def (:\n")
    staged = stage(plugin, tmp_path)
    report = compile_bytecode(staged, isolated=False)
    assert isinstance(report, CompileReport) and report.compiled == 2
    [(rel, message)] = report.failed
    assert rel == "broken.py" and "SyntaxError" in message
    assert compile_bytecode(staged, isolated=False) == report  # safe to call twice


def test_remove_staged_is_idempotent(plugin: Path, tmp_path: Path) -> None:
    staged = stage(plugin, tmp_path)
    remove_staged(staged.path)
    remove_staged(staged.path)
    assert not staged.path.exists() and plugin.is_dir()


def test_staging_without_an_expected_hash_still_hashes_what_it_copied(plugin: Path, tmp_path: Path) -> None:
    staged = stage_plugin(plugin, tmp_path / "private" / "copy", plugin_id="stager", expected=None)
    assert staged.content_hash == compute_content_hash(plugin)
    assert sorted(os.listdir(staged.path)) == ["main.py", "pkg", "plugin.toml"]


# -- the bytecode cache ---------------------------------------------------------------------------------


def cache_in(tmp_path: Path) -> BytecodeCache:
    cache = BytecodeCache(tmp_path / "cache")
    assert cache.open() is True
    return cache


def copy_to(plugin: Path, tmp_path: Path, name: str, cache: BytecodeCache) -> StagedPlugin:
    return stage_plugin(
        plugin,
        tmp_path / "private" / name,
        plugin_id="stager",
        expected=compute_content_hash(plugin),
        precompile=True,
        isolated_compile=False,
        bytecode_cache=cache,
    )


def test_the_second_copy_with_one_digest_takes_its_bytecode_from_the_cache(plugin: Path, tmp_path: Path) -> None:
    (plugin / "broken.py").write_text("def (:\n")
    cache = cache_in(tmp_path)
    first = copy_to(plugin, tmp_path, "one", cache)
    assert first.bytecode is not None and not first.bytecode.from_cache
    assert first.bytecode.compiled == 2 and [rel for rel, _ in first.bytecode.failed] == ["broken.py"]
    second = copy_to(plugin, tmp_path, "two", cache)
    assert second.bytecode == CompileReport(compiled=2, failed=first.bytecode.failed, from_cache=True)
    tag = sys.implementation.cache_tag
    for rel in (f"__pycache__/main.{tag}.pyc", f"pkg/__pycache__/__init__.{tag}.pyc"):
        assert (second.path / rel).read_bytes() == (first.path / rel).read_bytes()
        assert stat.S_IMODE((second.path / rel).stat().st_mode) == 0o644
    assert not (second.path / "__pycache__" / f"broken.{tag}.pyc").exists()


def test_a_changed_source_is_a_new_digest_and_never_gets_the_old_bytecode(plugin: Path, tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    first = copy_to(plugin, tmp_path, "one", cache)
    (plugin / "pkg" / "__init__.py").write_text("VALUE = 'changed'\n")
    second = copy_to(plugin, tmp_path, "two", cache)
    assert second.content_hash.digest != first.content_hash.digest
    assert second.bytecode is not None and not second.bytecode.from_cache
    cached = importlib.util.cache_from_source(str(second.path / "pkg" / "__init__.py"))
    assert Path(cached).read_bytes()[8:16] == importlib.util.source_hash(b"VALUE = 'changed'\n")


@pytest.mark.parametrize("problem", ["others_can_write", "symlink", "not_owned"])
def test_a_cache_folder_others_could_write_is_not_used(
    plugin: Path, tmp_path: Path, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cache"
    if problem == "others_can_write":
        folder.mkdir(mode=0o700)
        folder.chmod(0o777)
    elif problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.mkdir(mode=0o700)
        os.chown(folder, 65534, 65534)
    cache = BytecodeCache(folder)
    assert cache.open() is False and cache.reason
    staged = copy_to(plugin, tmp_path, "one", cache)
    again = copy_to(plugin, tmp_path, "two", cache)
    # Compiled each time, never stored or read: bytecode from a folder someone else can write is unverified.
    assert staged.bytecode is not None and again.bytecode is not None
    assert not staged.bytecode.from_cache and not again.bytecode.from_cache
    assert any(getattr(r, "event", None) == "bytecode_cache_unusable" for r in caplog.records)


def test_the_cache_keeps_at_most_max_entries(plugin: Path, tmp_path: Path) -> None:
    cache = BytecodeCache(tmp_path / "cache", max_entries=2)
    digests = []
    for n in range(4):
        (plugin / "pkg" / "__init__.py").write_text(f"VALUE = {n}\n")
        digests.append(copy_to(plugin, tmp_path, f"c{n}", cache).content_hash.digest)
        os.utime(cache.entry_of(digests[-1]), (n, n))  # distinct, ordered use times
    assert [cache.entry_of(d).is_dir() for d in digests] == [False, False, True, True]
    cache.clear()
    assert not any(cache.entry_of(d).exists() for d in digests)
