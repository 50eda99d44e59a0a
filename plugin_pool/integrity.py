"""Ed25519 signed manifests of plugin folders (and, re-exported, their content hashes).

The content hash (the seed's ``assembly_hash``) is computed by :mod:`plugin_pool.content`, the one reader of
a plugin folder's files; its names are re-exported here. A signature is an Ed25519 signature over
``b"plugin_pool-manifest-v1\\n" + canonical manifest + b"\\n" + content digest``, written into
``plugin.toml`` as a trailing table:

    [signature]
    key_id = "0123456789abcdef"       # first 16 hex of sha256 over the raw 32-byte public key
    algorithm = "ed25519"
    content_hash = "sha256:..."
    value = "<base64>"

So a signature covers every file that can run: a file added, changed or removed after signing (a
sourceless ``__init__.pyc`` included, which the content rule refuses outright) makes it fail to verify.
This module reads files and never imports anything from a plugin folder.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plugin_pool.content import (
    ContentHash,
    FolderLimits,
    canonical_data,
    canonical_manifest,
    compute_content_hash,
    read_manifest_bytes,
)
from plugin_pool.errors import IntegrityError, SignatureError
from plugin_pool.manifest import MANIFEST_NAME, ManifestError, parse_manifest_text

__all__ = [
    "MANIFEST_NAME",
    "SIGNATURE_ALGORITHM",
    "ContentHash",
    "FolderLimits",
    "IntegrityError",
    "Signature",
    "SignatureError",
    "canonical_manifest",
    "compute_content_hash",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "read_signature",
    "sign_plugin",
    "verify_plugin",
    "write_keypair",
]

SIGNATURE_ALGORITHM = "ed25519"
_SIGNED_PREFIX = b"plugin_pool-manifest-v1\n"
# Validation patterns are used with fullmatch only (a ``$`` anchor would accept a trailing newline).
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_SIGNATURE_KEYS = ("key_id", "algorithm", "content_hash", "value")
# Line prefixes (match, not fullmatch): a TOML table header, and the [signature] one.
_HEADER_RE = re.compile(r"[ \t]*\[")
_SIGNATURE_HEADER_RE = re.compile(r"[ \t]*\[[ \t]*signature[ \t]*[\].]")


@dataclass(frozen=True, slots=True)
class Signature:
    """The ``[signature]`` table of a manifest, as written (not yet verified)."""

    key_id: str
    algorithm: str
    content_hash: str
    value: str


def _load_toml(path: Path) -> dict[str, Any]:
    raw = read_manifest_bytes(path)
    try:
        return parse_manifest_text(raw, path)
    except ManifestError as exc:
        raise IntegrityError(exc.reason, path=path) from None


def _canonical(data: Mapping[str, Any], path: Path) -> bytes:
    return canonical_data(data, path)


# --- keys -------------------------------------------------------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private PEM PKCS8 unencrypted, public PEM SubjectPublicKeyInfo).

    Does not block (no files); each call returns a new pair.
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def write_keypair(private_path: Path | str, public_path: Path | str) -> str:
    """Generate a key pair, write the private key (mode 0600) and the public key (0644); return the key id.

    Refuses (IntegrityError) to overwrite an existing file; writes nothing then. Blocks on two small writes.
    Not idempotent by design: a second call with the same paths refuses.
    """
    private_file, public_file = Path(private_path), Path(public_path)
    if os.path.abspath(private_file) == os.path.abspath(public_file):
        raise IntegrityError("the private and the public key need two different paths", path=private_file)
    for path in (private_file, public_file):
        if os.path.lexists(path):
            raise IntegrityError(
                "already exists; refusing to overwrite a key file (move it away or choose another path)", path=path
            )
    private, public = generate_keypair()
    _write_new(private_file, private, 0o600)
    try:
        _write_new(public_file, public, 0o644)
    except BaseException:
        private_file.unlink(missing_ok=True)
        raise
    loaded = serialization.load_pem_public_key(public)
    assert isinstance(loaded, Ed25519PublicKey)
    return key_id(loaded)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise IntegrityError("already exists; refusing to overwrite a key file", path=path) from None
    except OSError as exc:
        raise IntegrityError(f"cannot create the key file ({exc.strerror})", path=path) from None
    try:
        os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise IntegrityError(f"cannot write the key file ({exc.strerror})", path=path) from None
    os.close(fd)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key (PEM, PKCS8). Blocks on reading one file; safe to call twice."""
    file = Path(path)
    data = _read_key_file(file, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError(
            f"is not an unencrypted Ed25519 private key in PEM (PKCS8) format ({exc}); make one with "
            f"plugin-pool keygen",
            path=file,
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(
            f"holds a {type(key).__name__.lstrip('_')}, expected an Ed25519 private key in PEM (PKCS8) format; make "
            f"one with plugin-pool keygen",
            path=file,
        )
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load an Ed25519 public key: PEM SubjectPublicKeyInfo (as keygen writes) or an OpenSSH ``ssh-ed25519`` line.

    Blocks on reading one file; safe to call twice. Raises IntegrityError naming the file and the format.
    """
    file = Path(path)
    data = _read_key_file(file, "public key")
    if b"PRIVATE KEY" in data:
        raise IntegrityError(
            "holds a private key; give the public key instead (the public file keygen wrote with it)", path=file
        )
    try:
        if data.lstrip().startswith(b"ssh-"):
            key: object = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError(
            f"is not an Ed25519 public key in PEM (SubjectPublicKeyInfo) or OpenSSH format ({exc}); use the "
            f"public key file written by plugin-pool keygen",
            path=file,
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError(
            f"holds a {type(key).__name__.lstrip('_')}, expected an Ed25519 public key in PEM "
            f"(SubjectPublicKeyInfo) format",
            path=file,
        )
    return key


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"cannot read the {what} file ({exc.strerror})", path=path) from None


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key id: the first 16 hex characters of sha256 over the raw 32-byte public key. Pure."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_trusted_keys(paths: Iterable[Path | str]) -> dict[str, Ed25519PublicKey]:
    """Load public keys by key id from PEM/OpenSSH files, or directories of ``*.pem`` and ``*.pub`` files.

    A directory is read one level deep, skips private keys and may be empty; a key listed twice is kept
    once. Blocks on reading the files; safe to call twice. Raises IntegrityError naming a path that is
    missing or a file that is not an Ed25519 public key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix in (".pem", ".pub") and f.is_file())
        elif path.exists():
            files = [path]
        else:
            raise IntegrityError(
                "trusted key path does not exist; give a public key file or a directory of *.pem/*.pub files",
                path=path,
            )
        for file in files:
            if path.is_dir() and b"PRIVATE KEY" in _read_key_file(file, "key"):
                continue  # keygen's private.pem next to public keys: not a trusted key, and not an error
            key = load_public_key(file)
            keys[key_id(key)] = key
    return keys


# --- signatures -------------------------------------------------------------------------------------------


def _signed_message(canonical: bytes, content_digest: str) -> bytes:
    return _SIGNED_PREFIX + canonical + b"\n" + content_digest.encode("ascii")


def _signature_of(data: Mapping[str, Any], path: Path) -> Signature | None:
    table = data.get("signature")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise SignatureError(
            "signature must be a [signature] table; remove it and sign again with plugin-pool sign",
            path=path,
            reason="malformed",
        )
    unknown = sorted(set(table) - set(_SIGNATURE_KEYS))
    if unknown:
        raise SignatureError(
            f"unknown key signature.{unknown[0]}; [signature] holds only {', '.join(_SIGNATURE_KEYS)}",
            path=path,
            reason="malformed",
        )
    for key in _SIGNATURE_KEYS:
        if not isinstance(table.get(key), str):
            raise SignatureError(
                f"signature.{key} is missing or not a string; sign again with plugin-pool sign",
                path=path,
                reason="malformed",
            )
    return Signature(table["key_id"], table["algorithm"], table["content_hash"], table["value"])


def read_signature(manifest_path: Path | str) -> Signature | None:
    """The manifest's ``[signature]`` table, or None when it has none. Does not verify anything.

    Blocks on reading one file; safe to call twice. Raises IntegrityError for an unreadable or invalid
    manifest and SignatureError (reason ``malformed``) for a signature table with missing or mistyped keys.
    """
    path = Path(manifest_path)
    return _signature_of(_load_toml(path), path)


def sign_plugin(directory: Path | str, private_key: Ed25519PrivateKey, *, limits: FolderLimits | None = None) -> str:
    """Sign the plugin folder: write a ``[signature]`` table into its ``plugin.toml``; return the key id.

    Replaces an existing ``[signature]`` table; keeps the rest of the file's text as it was. The content
    hash does not change by signing. Blocks on hashing the folder and rewriting one file (atomically, by
    rename); safe to call twice (the second call replaces the first signature). Raises IntegrityError.
    """
    folder = Path(directory)
    manifest = folder / MANIFEST_NAME
    if not os.path.isfile(manifest):
        raise IntegrityError(f"no {MANIFEST_NAME} to sign; a plugin folder needs a manifest", path=manifest)
    content = compute_content_hash(folder, limits=limits)
    data = _load_toml(manifest)
    canonical = _canonical(data, manifest)
    _check_same_manifest(canonical, content, manifest)
    kid = key_id(private_key.public_key())
    value = base64.b64encode(private_key.sign(_signed_message(canonical, content.digest))).decode("ascii")
    signature = Signature(kid, SIGNATURE_ALGORITHM, content.digest, value)
    _write_signature(manifest, signature, canonical)
    return kid


def _check_same_manifest(canonical: bytes, content: ContentHash, manifest: Path) -> None:
    if content.files.get(MANIFEST_NAME) != "sha256:" + hashlib.sha256(canonical).hexdigest():
        raise IntegrityError("the manifest changed while it was being read; try again", path=manifest)


def _strip_signature_table(text: str) -> str:
    kept = []
    in_signature = False
    for line in text.splitlines(keepends=True):
        if _HEADER_RE.match(line):
            in_signature = bool(_SIGNATURE_HEADER_RE.match(line))
        if not in_signature:
            kept.append(line)
    return "".join(kept)


def _write_signature(manifest: Path, signature: Signature, canonical: bytes) -> None:
    text = read_manifest_bytes(manifest).decode("utf-8")
    table = "[signature]\n" + "".join(f'{k} = "{getattr(signature, k)}"\n' for k in _SIGNATURE_KEYS)
    kept = _strip_signature_table(text).rstrip()
    new_text = f"{kept}\n\n{table}" if kept else table
    # The text surgery above is line based; check that it kept every value and wrote the signature whole.
    try:
        parsed = tomllib.loads(new_text)
        ok = _canonical(parsed, manifest) == canonical and _signature_of(parsed, manifest) == signature
    except (tomllib.TOMLDecodeError, IntegrityError):
        ok = False
    if not ok:
        raise IntegrityError(
            "cannot replace the existing signature in this manifest's text; remove the signature by hand "
            "(the [signature] table and any signature.* keys) and sign again",
            path=manifest,
        )
    target = Path(os.path.realpath(manifest))
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(new_text.encode("utf-8"))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise IntegrityError(f"cannot write the signed manifest ({exc.strerror})", path=manifest) from None


def verify_plugin(
    directory: Path | str,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    *,
    limits: FolderLimits | None = None,
    plugin_id: str | None = None,
) -> tuple[str, ContentHash]:
    """Verify the folder's signature; return (key id, the folder's current content hash).

    Raises SignatureError whose ``reason`` says why: ``unsigned``, ``malformed``, ``algorithm``,
    ``unknown_key`` (names the key id), ``bad_signature`` (the manifest changed after signing, or another
    key), ``content_changed`` (the folder's files changed since signing); IntegrityError when the folder
    cannot be hashed. Blocks on hashing the folder; safe to call twice.
    """
    folder = Path(directory)
    manifest = folder / MANIFEST_NAME
    data = _load_toml(manifest)
    signature = _signature_of(data, manifest)
    if signature is None:
        raise SignatureError(
            "unsigned: the manifest has no [signature] table; sign it with plugin-pool sign DIR --key KEY",
            path=manifest,
            reason="unsigned",
        )
    kid = signature.key_id
    if signature.algorithm != SIGNATURE_ALGORITHM:
        raise SignatureError(
            f"signature algorithm {signature.algorithm!r} is not supported (only {SIGNATURE_ALGORITHM!r}); "
            f"sign again with plugin-pool sign",
            path=manifest,
            reason="algorithm",
            key_id=kid,
        )
    if not _KEY_ID_RE.fullmatch(kid) or not _DIGEST_RE.fullmatch(signature.content_hash):
        raise SignatureError(
            "signature.key_id must be 16 hex characters and signature.content_hash 'sha256:' and 64 hex; "
            "sign again with plugin-pool sign",
            path=manifest,
            reason="malformed",
            key_id=kid,
        )
    key = trusted_keys.get(kid)
    if key is None:
        raise SignatureError(
            f"signed by key {kid}, which this host does not trust; if you trust its owner, add their public key "
            f"file to the trusted keys (plugin-pool verify --trusted-key FILE, or the host's trusted keys setting)",
            path=manifest,
            reason="unknown_key",
            key_id=kid,
        )
    try:
        raw = base64.b64decode(signature.value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise SignatureError(
            "signature.value is not a base64 Ed25519 signature (64 bytes); sign again with plugin-pool sign",
            path=manifest,
            reason="malformed",
            key_id=kid,
        )
    content = compute_content_hash(folder, limits=limits, plugin_id=plugin_id)
    canonical = _canonical(data, manifest)
    _check_same_manifest(canonical, content, manifest)
    try:
        key.verify(raw, _signed_message(canonical, signature.content_hash))
    except InvalidSignature:
        raise SignatureError(
            f"the signature by key {kid} does not match the manifest: the manifest was changed after it was "
            f"signed (or signed by another key); restore it or sign it again",
            path=manifest,
            reason="bad_signature",
            key_id=kid,
        ) from None
    if signature.content_hash != content.digest:
        raise SignatureError(
            f"the folder's content changed since it was signed by key {kid} (signed {signature.content_hash}, "
            f"now {content.digest}); restore the files, or sign it again if the change is intended",
            path=manifest,
            reason="content_changed",
            key_id=kid,
        )
    return kid, content
