"""The keygen, sign, hash and verify commands end to end, through plugin_pool.cli.main."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from plugin_pool.cli import main
from plugin_pool.integrity import compute_content_hash, key_id, load_public_key

MANIFEST = """\
[plugin]
id = "demo"
name = "Demo"
version = "1.0.0"
trust_level = "trusted"
entry = "scanner:Scanner"

[capabilities.scan]
"""


def run(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--log-format", "none", *map(str, argv)], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "plugin.toml").write_text(MANIFEST)
    (folder / "scanner.py").write_text("class Scanner:\n    pass\n")
    return folder


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "signing.pem", tmp_path / "keys" / "signing.pub"
    private.parent.mkdir()
    code, out, err = run("keygen", "--private", private, "--public", public)
    assert (code, err) == (0, "")
    assert f"key id {key_id(load_public_key(public))}" in out
    return private, public


def test_keygen_writes_a_0600_private_key_and_refuses_to_overwrite(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    code, out, err = run("keygen", "--private", private, "--public", public.with_suffix(".new"))
    assert code == 2 and out == ""
    assert str(private) in err and "refusing to overwrite" in err
    assert private.read_bytes() == before


def test_hash_prints_the_digest_and_with_files_each_file(plugin: Path) -> None:
    expected = compute_content_hash(plugin)
    assert run("hash", plugin) == (0, expected.digest + "\n", "")
    code, out, _ = run("hash", plugin, "--files")
    assert code == 0
    assert out.splitlines() == [
        expected.digest,
        f"{expected.files['plugin.toml']}  plugin.toml",
        f"{expected.files['scanner.py']}  scanner.py",
    ]


def test_hash_of_a_missing_folder_exits_2(tmp_path: Path) -> None:
    code, out, err = run("hash", tmp_path / "missing")
    assert code == 2 and out == "" and "not a directory" in err


def test_hash_of_a_folder_with_a_symlink_exits_1_naming_it(plugin: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path, plugin / "escape")
    code, out, err = run("hash", plugin)
    assert code == 1 and out == ""
    assert f"{plugin / 'escape'}: is a symbolic link" in err and "replace the link" in err


def test_sign_then_verify_with_a_key_file_and_a_key_directory(plugin: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    code, out, err = run("sign", plugin, "--key", private)
    kid = key_id(load_public_key(public))
    digest = compute_content_hash(plugin).digest
    assert (code, err) == (0, "")
    assert out == f"signed {plugin} with key {kid}\ncontent hash {digest}\n"
    for trusted in (public, public.parent):
        code, out, err = run("verify", plugin, "--trusted-key", trusted)
        assert (code, err) == (0, "")
        assert out == f"{plugin}: valid signature by key {kid}\ncontent hash {digest}\n"


def test_verify_reports_why_a_plugin_is_invalid_with_exit_1(
    plugin: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    code, _, err = run("verify", plugin, "--trusted-key", public)
    assert code == 1 and "INVALID" in err and "unsigned" in err
    run("sign", plugin, "--key", private)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    assert run("keygen", "--private", stranger / "s.key", "--public", stranger / "s.pem")[0] == 0
    code, _, err = run("verify", plugin, "--trusted-key", stranger)
    assert code == 1 and f"signed by key {key_id(load_public_key(public))}" in err
    (plugin / "scanner.py").write_text("changed\n")
    code, _, err = run("verify", plugin, "--trusted-key", stranger, "--trusted-key", public)
    assert code == 1 and "content changed since it was signed" in err


def test_bad_input_exits_2_with_a_clear_message(plugin: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    code, _, err = run("sign", plugin, "--key", junk)
    assert code == 2 and str(junk) in err and "Ed25519 private key" in err
    code, _, err = run("sign", tmp_path / "missing", "--key", private)
    assert code == 2 and "no plugin.toml" in err
    code, _, err = run("verify", plugin, "--trusted-key", junk)
    assert code == 2 and "Ed25519 public key" in err
    code, _, err = run("verify", plugin, "--trusted-key", tmp_path / "nope")
    assert code == 2 and "does not exist" in err
    code, _, err = run("verify", tmp_path / "missing", "--trusted-key", public)
    assert code == 2 and "not a directory" in err
    assert "[signature]" not in (plugin / "plugin.toml").read_text()


def test_verify_requires_a_trusted_key(plugin: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run("verify", plugin)
    assert info.value.code == 2


def test_a_pyc_added_after_signing_makes_verify_invalid_and_hash_and_sign_refuse(
    plugin: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    assert run("sign", plugin, "--key", private)[0] == 0
    assert run("verify", plugin, "--trusted-key", public)[0] == 0
    (plugin / "sneaky").mkdir()
    (plugin / "sneaky" / "__init__.pyc").write_bytes(b"\x00bytecode")
    code, out, err = run("verify", plugin, "--trusted-key", public)
    assert code == 1 and out == "" and "INVALID" in err and str(plugin / "sneaky" / "__init__.pyc") in err
    code, out, err = run("hash", plugin)
    assert code == 1 and out == "" and "compiled bytecode" in err
    code, out, err = run("sign", plugin, "--key", private)
    assert code == 1 and out == "" and "not signed" in err and "compiled bytecode" in err


def test_hash_sign_and_verify_read_the_limits_of_a_config_file(plugin: Path, tmp_path: Path) -> None:
    (plugin / "data.bin").write_bytes(b"x" * 5000)
    config = tmp_path / "limits.toml"
    config.write_text("[discovery]\nmax_file_bytes = 4096\n")
    assert run("hash", plugin)[0] == 0
    code, _, err = run("hash", plugin, "--config", config)
    assert code == 1 and "larger than the limit of 4096 bytes" in err and "max_file_bytes" in err
