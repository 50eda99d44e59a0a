"""Content hashes and signed manifests (plugin_pool.integrity) on real folders with real Ed25519 keys."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plugin_pool.errors import IntegrityRejectedError, InvalidPluginError
from plugin_pool.integrity import (
    ContentHash,
    IntegrityError,
    Signature,
    SignatureError,
    canonical_manifest,
    compute_content_hash,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    read_signature,
    sign_plugin,
    verify_plugin,
    write_keypair,
)

MANIFEST = """\
# a comment
[plugin]
id = "demo"
name = "Demo"
version = "1.0.0"
trust_level = "trusted"
entry = "scanner:Scanner"
released = 2024-05-01T12:30:00Z

[capabilities.scan]
media_types = ["text/plain"]
"""


def make_plugin(folder: Path, manifest: str = MANIFEST) -> Path:
    (folder / "pkg").mkdir(parents=True)
    (folder / "plugin.toml").write_text(manifest)
    (folder / "scanner.py").write_text("class Scanner:\n    pass\n")
    (folder / "util.py").write_text("X = 1\n")
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 10)
    return folder


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return make_plugin(tmp_path / "plugin")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trusted(key: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    return {key_id(key.public_key()): key.public_key()}


# --- content hash -----------------------------------------------------------------------------------------


def test_hash_lists_every_file_with_its_digest(plugin: Path) -> None:
    h = compute_content_hash(plugin)
    assert h.digest.startswith("sha256:") and len(h.digest) == 7 + 64
    assert list(h.files) == ["pkg/__init__.py", "pkg/data.bin", "plugin.toml", "scanner.py", "util.py"]
    assert all(v.startswith("sha256:") and len(v) == 71 for v in h.files.values())


def test_two_copies_in_different_places_created_in_different_order_hash_the_same(tmp_path: Path) -> None:
    first = make_plugin(tmp_path / "a" / "plugin")
    second = tmp_path / "elsewhere" / "deeper" / "other-name"
    second.mkdir(parents=True)
    for rel in reversed(["pkg/__init__.py", "pkg/data.bin", "plugin.toml", "scanner.py", "util.py"]):
        (second / rel).parent.mkdir(exist_ok=True)
        shutil.copyfile(first / rel, second / rel)
    assert compute_content_hash(first) == compute_content_hash(second)
    assert compute_content_hash(str(first)).digest == compute_content_hash(second).digest


def test_a_changed_file_changes_the_digest_and_diff_names_it(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "scanner.py").write_text("class Scanner:\n    evil = True\n")
    after = compute_content_hash(plugin)
    assert after.digest != before.digest
    assert before.diff(after) == ["changed: scanner.py"]


def test_an_added_file_changes_the_digest_and_diff_names_it(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "pkg" / "evil.py").write_text("import os\n")
    after = compute_content_hash(plugin)
    assert after.digest != before.digest
    assert before.diff(after) == ["added: pkg/evil.py"]


def test_a_removed_file_changes_the_digest_and_diff_names_it(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "util.py").unlink()
    after = compute_content_hash(plugin)
    assert after.digest != before.digest
    assert before.diff(after) == ["removed: util.py"]


def test_diff_lists_several_changes_sorted_by_path(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "util.py").unlink()
    (plugin / "scanner.py").write_text("changed\n")
    (plugin / "aaa.py").write_text("new\n")
    assert before.diff(compute_content_hash(plugin)) == ["added: aaa.py", "changed: scanner.py", "removed: util.py"]
    assert before.diff(before) == []


def test_a_renamed_file_changes_the_digest(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "util.py").rename(plugin / "util2.py")
    assert compute_content_hash(plugin).digest != before.digest


def test_caches_and_git_are_ignored(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    (plugin / "__pycache__").mkdir()
    (plugin / "__pycache__" / "scanner.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (plugin / "pkg" / "__pycache__").mkdir()
    (plugin / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (plugin / ".git").mkdir()
    (plugin / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    after = compute_content_hash(plugin)
    assert after == before


def test_sourceless_bytecode_is_refused_wherever_python_could_import_it(plugin: Path) -> None:
    # Python imports pkg/__init__.pyc (or x.pyc) without any source: no hash may skip it.
    (plugin / "evil").mkdir()
    (plugin / "evil" / "__init__.pyc").write_bytes(b"\x00bytecode")
    with pytest.raises(IntegrityRejectedError, match="compiled bytecode") as info:
        compute_content_hash(plugin)
    assert info.value.kind == "bytecode" and info.value.file == "evil/__init__.pyc"
    assert info.value.path == plugin / "evil" / "__init__.pyc"


def test_a_pyo_file_is_data_and_is_hashed(plugin: Path) -> None:
    # Python 3 never imports .pyo, so it is hashed like any other file rather than skipped.
    before = compute_content_hash(plugin)
    (plugin / "stray.pyo").write_bytes(b"junk")
    assert before.diff(compute_content_hash(plugin)) == ["added: stray.pyo"]


@pytest.mark.parametrize("target", ["util.py", "pkg", "../secret.txt", "missing.py", "."])
def test_any_symlink_in_the_folder_is_refused(plugin: Path, tmp_path: Path, target: str) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(target, plugin / "pkg" / "link")
    with pytest.raises(IntegrityRejectedError, match="symbolic link") as info:
        compute_content_hash(plugin)
    assert info.value.kind == "symlink" and info.value.path == plugin / "pkg" / "link"
    assert isinstance(info.value, InvalidPluginError)
    assert "replace the link with a copy" in str(info.value)


def test_a_symlinked_plugin_folder_path_is_followed_but_nothing_inside_it(plugin: Path, tmp_path: Path) -> None:
    # The path to the folder is the operator's (it may hold symlinks); the folder's content follows the rule.
    os.symlink(plugin, tmp_path / "alias")
    assert compute_content_hash(tmp_path / "alias") == compute_content_hash(plugin)


def test_a_fifo_is_refused_without_blocking(plugin: Path) -> None:
    os.mkfifo(plugin / "pkg" / "pipe")
    with pytest.raises(IntegrityError, match=r"special file \(fifo\)") as info:
        compute_content_hash(plugin)
    assert info.value.path == plugin / "pkg" / "pipe"


def test_a_symlink_to_a_fifo_inside_is_refused(plugin: Path) -> None:
    os.mkfifo(plugin / "pipe")
    os.symlink("pipe", plugin / "pipe.py")
    with pytest.raises(IntegrityRejectedError, match=r"special file|symbolic link"):
        compute_content_hash(plugin)


def test_a_socket_is_refused(tmp_path: Path) -> None:
    # AF_UNIX paths are short; keep the folder name short.
    folder = make_plugin(tmp_path / "p")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "s"))
        with pytest.raises(IntegrityError, match=r"special file \(socket\)"):
            compute_content_hash(folder)


def test_a_missing_folder_or_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="cannot open the plugin folder"):
        compute_content_hash(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IntegrityError, match="is not a directory"):
        compute_content_hash(tmp_path / "file")


def test_content_hash_is_frozen_and_its_files_read_only(plugin: Path) -> None:
    h = compute_content_hash(plugin)
    with pytest.raises(TypeError):
        h.files["x"] = "y"  # type: ignore[index]
    assert hash(h) == hash(ContentHash(h.digest, dict(h.files)))


# --- canonical manifest -----------------------------------------------------------------------------------


def test_adding_a_signature_table_leaves_the_hash_unchanged(plugin: Path) -> None:
    before = compute_content_hash(plugin)
    with (plugin / "plugin.toml").open("a") as fh:
        fh.write('\n[signature]\nkey_id = "0000000000000000"\nalgorithm = "ed25519"\n')
    assert compute_content_hash(plugin) == before


def test_whitespace_comments_and_key_order_do_not_change_the_canonical_form(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(MANIFEST)
    b.write_text(
        '[capabilities.scan]\nmedia_types = [ "text/plain" ]   # why\n\n\n'
        '[plugin]\nversion="1.0.0"\nid="demo"\n  name = "Demo"\ntrust_level = "trusted"\n'
        'entry = "scanner:Scanner"\nreleased = 2024-05-01T12:30:00Z\n'
    )
    assert canonical_manifest(a) == canonical_manifest(b)
    assert b'"released":"2024-05-01T12:30:00+00:00"' in canonical_manifest(a)


def test_a_value_change_changes_the_canonical_form(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(MANIFEST)
    b.write_text(MANIFEST.replace('version = "1.0.0"', 'version = "1.0.1"'))
    assert canonical_manifest(a) != canonical_manifest(b)


def test_invalid_manifests_are_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "plugin.toml"
    bad.write_text("[plugin\nid = 1\n")
    with pytest.raises(IntegrityError, match="not valid TOML") as info:
        canonical_manifest(bad)
    assert info.value.path == bad and str(bad) in str(info.value)
    bad.write_bytes(b'x = "\xff"\n')
    with pytest.raises(IntegrityError, match="not UTF-8"):
        canonical_manifest(bad)
    bad.write_text("x = nan\n")
    with pytest.raises(IntegrityError, match="inf and nan"):
        canonical_manifest(bad)
    with pytest.raises(IntegrityError, match="cannot open"):
        canonical_manifest(tmp_path / "missing.toml")


def test_an_invalid_manifest_fails_the_folder_hash(plugin: Path) -> None:
    (plugin / "plugin.toml").write_text("not = [valid\n")
    with pytest.raises(IntegrityError, match="not valid TOML"):
        compute_content_hash(plugin)


# --- keys -------------------------------------------------------------------------------------------------


def test_write_keypair_writes_0600_and_0644_and_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub"
    kid = write_keypair(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert key_id(load_public_key(public)) == kid == key_id(load_private_key(private).public_key())
    content = private.read_bytes()
    with pytest.raises(IntegrityError, match="refusing to overwrite") as info:
        write_keypair(private, tmp_path / "other.pub")
    assert info.value.path == private
    assert not (tmp_path / "other.pub").exists()
    with pytest.raises(IntegrityError, match="refusing to overwrite"):
        write_keypair(tmp_path / "other.pem", public)
    assert not (tmp_path / "other.pem").exists()
    assert private.read_bytes() == content


def test_generate_keypair_is_pem_pkcs8_and_spki(tmp_path: Path) -> None:
    private, public = generate_keypair()
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert generate_keypair()[0] != private


def test_key_id_is_sha256_of_the_raw_public_key(key: Ed25519PrivateKey) -> None:
    import hashlib

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]


def test_bad_key_files_are_refused_naming_the_file_and_format(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(IntegrityError, match="Ed25519 private key in PEM") as info:
        load_private_key(junk)
    assert info.value.path == junk
    with pytest.raises(IntegrityError, match="Ed25519 public key in PEM"):
        load_public_key(junk)
    private = tmp_path / "private.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(IntegrityError, match="holds a private key"):
        load_public_key(private)
    with pytest.raises(IntegrityError, match="cannot read the private key file"):
        load_private_key(tmp_path / "missing.pem")


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "ec.pem", tmp_path / "ec.pub"
    private.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(IntegrityError, match="expected an Ed25519 private key"):
        load_private_key(private)
    with pytest.raises(IntegrityError, match="expected an Ed25519 public key"):
        load_public_key(public)


def test_load_trusted_keys_from_files_and_directories(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    kid_a = write_keypair(tmp_path / "a.key", keys_dir / "a.pem")
    kid_b = write_keypair(tmp_path / "b.key", keys_dir / "b.pub")
    (keys_dir / "README").write_text("ignored")
    write_keypair(keys_dir / "private.pem", tmp_path / "c.pem")  # a private key in the directory is skipped
    ssh = tmp_path / "c.pub"
    ssh.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    keys = load_trusted_keys([keys_dir, keys_dir / "a.pem", str(ssh)])
    assert set(keys) == {kid_a, kid_b, key_id(key.public_key())}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_trusted_keys([empty]) == {}
    with pytest.raises(IntegrityError, match="trusted key path does not exist"):
        load_trusted_keys([tmp_path / "missing"])


# --- signing ----------------------------------------------------------------------------------------------


def test_sign_then_verify(plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]) -> None:
    before = compute_content_hash(plugin)
    kid = sign_plugin(plugin, key)
    assert kid == key_id(key.public_key())
    text = (plugin / "plugin.toml").read_text()
    assert text.startswith(MANIFEST.rstrip())
    assert text.rstrip().splitlines()[-5] == "[signature]"
    signature = read_signature(plugin / "plugin.toml")
    assert signature is not None
    assert (signature.key_id, signature.algorithm, signature.content_hash) == (kid, "ed25519", before.digest)
    assert verify_plugin(plugin, trusted) == (kid, before)


def test_signing_twice_replaces_the_signature(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, Ed25519PrivateKey.generate())
    manifest = plugin / "plugin.toml"
    manifest.write_text(manifest.read_text() + "\n[pool]\nmax_workers = 2\n")
    kid = sign_plugin(plugin, key)
    text = manifest.read_text()
    assert text.count("[signature]") == 1
    assert "[pool]\nmax_workers = 2" in text
    assert verify_plugin(plugin, trusted)[0] == kid


def test_signing_keeps_the_file_mode_and_a_signature_in_the_middle_is_moved_to_the_end(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    manifest = plugin / "plugin.toml"
    manifest.write_text(
        MANIFEST.replace("[capabilities.scan]", '[signature]\nkey_id = "old"\nvalue = "x"\n\n[capabilities.scan]')
    )
    manifest.chmod(0o640)
    sign_plugin(plugin, key)
    text = manifest.read_text()
    assert 'key_id = "old"' not in text and "[capabilities.scan]" in text
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o640
    verify_plugin(plugin, trusted)


def test_a_signature_that_cannot_be_replaced_by_text_is_refused(plugin: Path, key: Ed25519PrivateKey) -> None:
    manifest = plugin / "plugin.toml"
    manifest.write_text('signature = { key_id = "x" }\n' + MANIFEST)
    with pytest.raises(IntegrityError, match="remove the signature by hand"):
        sign_plugin(plugin, key)
    assert manifest.read_text().startswith("signature = ")


def test_sign_a_folder_without_manifest_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(IntegrityError, match=r"no plugin\.toml to sign"):
        sign_plugin(tmp_path, key)


def test_verify_with_an_unknown_key_names_the_key_id(plugin: Path, key: Ed25519PrivateKey) -> None:
    kid = sign_plugin(plugin, key)
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(SignatureError, match=f"signed by key {kid}, which this host does not trust") as info:
        verify_plugin(plugin, {key_id(stranger): stranger})
    assert (info.value.reason, info.value.key_id) == ("unknown_key", kid)
    assert "trusted keys" in str(info.value)


def test_a_code_change_after_signing_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    (plugin / "scanner.py").write_text("import os; os.system('id')\n")
    with pytest.raises(SignatureError, match="content changed since it was signed") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "content_changed"


def test_an_added_file_after_signing_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    (plugin / "evil.py").write_text("x = 1\n")
    with pytest.raises(SignatureError) as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "content_changed"


def test_a_signature_over_a_different_hash_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    (plugin / "scanner.py").write_text("changed\n")
    manifest = plugin / "plugin.toml"
    signature = read_signature(manifest)
    assert signature is not None
    current = compute_content_hash(plugin).digest
    manifest.write_text(manifest.read_text().replace(signature.content_hash, current))
    with pytest.raises(SignatureError, match="does not match the manifest") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "bad_signature"


def test_a_tampered_manifest_value_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    manifest = plugin / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "6.6.6"'))
    with pytest.raises(SignatureError, match="manifest was changed after it was signed") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "bad_signature"


def test_a_comment_added_to_a_signed_manifest_still_verifies(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    manifest = plugin / "plugin.toml"
    manifest.write_text("# reviewed\n\n" + manifest.read_text())
    verify_plugin(plugin, trusted)


def test_a_signature_by_another_key_with_a_forged_key_id_is_refused(
    plugin: Path, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, Ed25519PrivateKey.generate())
    manifest = plugin / "plugin.toml"
    signature = read_signature(manifest)
    assert signature is not None
    manifest.write_text(manifest.read_text().replace(signature.key_id, next(iter(trusted))))
    with pytest.raises(SignatureError) as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "bad_signature"


def test_an_unsigned_manifest_is_refused(plugin: Path, trusted: dict[str, Ed25519PublicKey]) -> None:
    assert read_signature(plugin / "plugin.toml") is None
    with pytest.raises(SignatureError, match="unsigned") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "unsigned" and info.value.key_id is None
    assert info.value.path == plugin / "plugin.toml"


def test_another_algorithm_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    manifest = plugin / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('algorithm = "ed25519"', 'algorithm = "rsa"'))
    with pytest.raises(SignatureError, match="'rsa' is not supported") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "algorithm"


@pytest.mark.parametrize("value", ["not base64!", "", base64.b64encode(b"short").decode()])
def test_a_malformed_signature_value_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey], value: str
) -> None:
    sign_plugin(plugin, key)
    manifest = plugin / "plugin.toml"
    signature = read_signature(manifest)
    assert signature is not None
    manifest.write_text(manifest.read_text().replace(signature.value, value))
    with pytest.raises(SignatureError, match="not a base64 Ed25519 signature") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "malformed"


def test_a_flipped_signature_byte_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    manifest = plugin / "plugin.toml"
    signature = read_signature(manifest)
    assert signature is not None
    raw = bytearray(base64.b64decode(signature.value))
    raw[10] ^= 1
    manifest.write_text(manifest.read_text().replace(signature.value, base64.b64encode(raw).decode()))
    with pytest.raises(SignatureError) as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ('signature = "x"\n', "must be a \\[signature\\] table"),
        ('[signature]\nkey_id = "0123456789abcdef"\n', "signature.algorithm is missing"),
        ('[signature]\nkey_id = 5\nalgorithm = "ed25519"\ncontent_hash = "x"\nvalue = "x"\n', "signature.key_id"),
        ('[signature]\nkey_id = "a"\nalgorithm = "b"\ncontent_hash = "c"\nvalue = "d"\nextra = "e"\n', "extra"),
    ],
)
def test_a_malformed_signature_table_is_refused(tmp_path: Path, table: str, match: str) -> None:
    manifest = tmp_path / "plugin.toml"
    manifest.write_text(table + MANIFEST if table.startswith("signature =") else MANIFEST + table)
    with pytest.raises(SignatureError, match=match) as info:
        read_signature(manifest)
    assert info.value.reason == "malformed"


def test_read_signature_returns_the_table(tmp_path: Path) -> None:
    manifest = tmp_path / "plugin.toml"
    manifest.write_text(MANIFEST + '[signature]\nkey_id = "a"\nalgorithm = "b"\ncontent_hash = "c"\nvalue = "d"\n')
    assert read_signature(manifest) == Signature("a", "b", "c", "d")


def test_a_malformed_key_id_or_hash_in_the_signature_is_refused(
    plugin: Path, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey]
) -> None:
    sign_plugin(plugin, key)
    manifest = plugin / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('content_hash = "sha256:', 'content_hash = "md5:'))
    with pytest.raises(SignatureError, match="content_hash") as info:
        verify_plugin(plugin, trusted)
    assert info.value.reason == "malformed"
