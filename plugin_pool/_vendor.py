"""``plugin-pool vendor FOLDER``: install a plugin's ``[python] requirements`` into its own folder.

The dependencies then live inside the plugin folder (``[python] path``), so they are hashed, signed, copied
and bound read-only with the plugin's own code, and a sandbox worker imports them from the verified copy,
never from the host's environment. pip does the installing (``pip install --target``), with
``--require-hashes`` (every requirement pinned by hash, dependencies included: a changed or substituted
file on the index fails the install) and ``--only-binary :all:`` (no ``setup.py`` of a dependency runs on
the author's machine) unless the author lowers either explicitly.

The install goes to a fresh folder beside the target and replaces it only when pip succeeded and the
result is a valid plugin folder (no symlinks, no stray bytecode, within the folder limits), so a failed
vendor leaves the folder as it was. A stamp file records what was installed: running it again with the same
requirements and interpreter does nothing (no network needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plugin_pool.content import FolderLimits, compute_content_hash
from plugin_pool.errors import IntegrityError, VendorError
from plugin_pool.manifest import MANIFEST_NAME, Manifest, read_manifest

__all__ = ["STAMP_NAME", "VendorResult", "vendor_plugin"]

STAMP_NAME = ".plugin-pool-vendor.json"
"""The stamp ``vendor`` writes into the target folder: what was installed, by which interpreter."""
PIP_TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class VendorResult:
    """What :func:`vendor_plugin` did: the target folder, whether it installed (False: already up to date),
    the installed distributions, and the folder's content hash afterwards."""

    target: Path
    installed: bool
    distributions: tuple[str, ...]
    files: int
    size_bytes: int
    content_digest: str


def vendor_plugin(
    folder: Path | str,
    *,
    require_hashes: bool = True,
    only_binary: bool = True,
    force: bool = False,
    limits: FolderLimits | None = None,
) -> VendorResult:
    """Install the requirements of ``folder``'s manifest into its first ``[python] path`` folder.

    Blocks while pip runs (network, up to 15 minutes). Safe to call twice: a stamp that matches the
    requirements, the interpreter and the options makes it a no-op (``installed`` False) unless ``force``.
    Raises VendorError naming the folder and the fix (no requirements, pip failed, the result holds what a
    plugin folder may not); the folder is unchanged then. ManifestError for an invalid manifest.
    """
    root = Path(folder).resolve()
    manifest = read_manifest(root)
    lines = _requirement_lines(manifest, root)
    target = root.joinpath(*manifest.python_path[0].split("/"))
    stamp = {
        "requirements_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "python": _interpreter_tag(),
        "require_hashes": require_hashes,
        "only_binary": only_binary,
    }
    if not force and _read_stamp(target) == stamp:
        return _result(root, target, installed=False, limits=limits, plugin_id=manifest.info.id)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        requirements = work / ".requirements.txt"
        requirements.write_text("\n".join(lines) + "\n", encoding="utf-8")
        install = work / "tree"
        command = [
            sys.executable,  # the host's interpreter: what the workers run
            "-m",
            "pip",
            "install",
            "--target",
            str(install),
            "--no-compile",  # the host compiles bytecode itself, from the verified copy
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "-r",
            str(requirements),
        ]
        if require_hashes:
            command.append("--require-hashes")
        if only_binary:
            command += ["--only-binary", ":all:"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            hint = _hint(tail, require_hashes=require_hashes, only_binary=only_binary)
            raise VendorError(
                f"pip could not install the requirements of {root} (exit {done.returncode}): {tail}\n{hint}",
                plugin_id=manifest.info.id,
                path=root,
            )
        (install / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _make_readable(install)
        if target.exists():
            os.rename(target, old)
        os.rename(install, target)
    except subprocess.TimeoutExpired:
        raise VendorError(
            f"pip did not finish within {PIP_TIMEOUT_S:g} s installing the requirements of {root}; check the "
            f"network or the package index",
            plugin_id=manifest.info.id,
            path=root,
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        result = _result(root, target, installed=True, limits=limits, plugin_id=manifest.info.id)
    except VendorError:
        shutil.rmtree(target, ignore_errors=True)
        if old.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return result


def _requirement_lines(manifest: Manifest, root: Path) -> list[str]:
    if manifest.requirements is None or not manifest.python_path:
        raise VendorError(
            f'{root / MANIFEST_NAME} has no [python] requirements: add\n  [python]\n  path = ["_vendor"]\n'
            f'  requirements = "requirements.txt"   # pinned with --hash (pip-compile --generate-hashes)',
            plugin_id=manifest.info.id,
            path=root,
        )
    if isinstance(manifest.requirements, tuple):
        return list(manifest.requirements)
    path = root.joinpath(*manifest.requirements.split("/"))
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise VendorError(
            f"python.requirements names {path}, which cannot be read ({exc.strerror}); create it inside the "
            f"plugin folder",
            plugin_id=manifest.info.id,
            path=root,
        ) from None


def _interpreter_tag() -> str:
    """The interpreter the vendored tree is for: workers run the host's own interpreter, as this one is."""
    return f"{sys.implementation.cache_tag}-{sys.platform}-{os.uname().machine}"


def _read_stamp(target: Path) -> dict[str, object] | None:
    try:
        value = json.loads((target / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _make_readable(tree: Path) -> None:
    """Folders 0755, files 0644 whatever the umask was: a worker uid must read them (a 077 umask made the
    installed files unreadable to it, which surfaced as 'cannot open shared object file')."""
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise VendorError(f"pip left a symlink at {os.path.join(dirpath, name)}; plugin folders hold none")


def _result(root: Path, target: Path, *, installed: bool, limits: FolderLimits | None, plugin_id: str) -> VendorResult:
    try:
        content = compute_content_hash(root, limits=limits)
    except IntegrityError as exc:
        raise VendorError(
            f"the vendored folder cannot be part of a plugin folder: {exc}", plugin_id=plugin_id, path=root
        ) from None
    prefix = target.relative_to(root).as_posix() + "/"
    mine = [rel for rel in content.files if rel.startswith(prefix)]
    size = sum((root / rel).stat().st_size for rel in mine)
    distributions = tuple(
        sorted(entry.name.removesuffix(".dist-info") for entry in target.iterdir() if entry.name.endswith(".dist-info"))
    )
    return VendorResult(
        target=target,
        installed=installed,
        distributions=distributions,
        files=len(mine),
        size_bytes=size,
        content_digest=content.digest,
    )


def _hint(output: str, *, require_hashes: bool, only_binary: bool) -> str:
    text = output.lower()
    if require_hashes and ("hash" in text or "--require-hashes" in text):
        return (
            "fix: pin every requirement, dependencies included, with --hash=sha256:... (for example "
            "pip-compile --generate-hashes), or pass --no-require-hashes to accept unpinned files"
        )
    if only_binary and ("no matching distribution" in text or "could not find a version" in text):
        return (
            "fix: no wheel for this platform and Python; pick a version that ships one, or pass --allow-source "
            "to let pip build from source (running the package's build code on this machine)"
        )
    return "fix: correct the requirements, then run plugin-pool vendor again"
