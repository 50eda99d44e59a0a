"""plugin.toml: the fields discovery relies on (priority, host_versions, [resources], [signature]), and errors
that name the file and the field."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from plugin_pool.manifest import Manifest, ManifestError, check_host_version, read_manifest
from plugin_pool.model import TrustLevel

BASE = """\
[plugin]
id = "scanner"
name = "Scanner"
version = "1.2.0"
trust_level = "untrusted"
entry = "scanner:Scanner"
{plugin_extra}

[capabilities.scan]
media_types = ["text/plain"]
{tables}
"""


def write(tmp_path: Path, *, plugin_extra: str = "", tables: str = "") -> Path:
    folder = tmp_path / "scanner"
    folder.mkdir(exist_ok=True)
    (folder / "plugin.toml").write_text(BASE.format(plugin_extra=plugin_extra, tables=textwrap.dedent(tables)))
    return folder


def read(tmp_path: Path, **kwargs: str) -> Manifest:
    return read_manifest(write(tmp_path, **kwargs))


def error(tmp_path: Path, **kwargs: str) -> ManifestError:
    folder = write(tmp_path, **kwargs)
    with pytest.raises(ManifestError) as caught:
        read_manifest(folder)
    assert str(folder / "plugin.toml") in str(caught.value)
    return caught.value


def test_optional_fields_default() -> None:
    manifest = read_manifest(Path(__file__).parents[2] / "examples" / "secrets_scanner")
    assert (manifest.priority, manifest.host_versions, dict(manifest.resources)) == (0, None, {})
    assert manifest.has_signature is False
    assert manifest.supports_host("0.1.0")


def test_all_optional_fields_are_read(tmp_path: Path) -> None:
    manifest = read(
        tmp_path,
        plugin_extra='priority = 7\nhost_versions = ">=0.1,<1"',
        tables="""
            [resources]
            memory_mb = 300
            cpu_time_s = 20
            call_timeout_s = 2

            [pool]
            min_workers = 1
            max_workers = 3

            [signature]
            key_id = "0123456789abcdef"
            algorithm = "ed25519"
            content_hash = "sha256:00"
            value = "xx"
        """,
    )
    assert manifest.priority == 7
    assert manifest.host_versions == ">=0.1,<1"
    assert dict(manifest.resources) == {"memory_mb": 300, "cpu_time_s": 20, "call_timeout_s": 2.0}
    assert isinstance(manifest.resources["call_timeout_s"], float)
    assert dict(manifest.pool) == {"min_workers": 1, "max_workers": 3}
    assert manifest.has_signature
    assert manifest.info.trust_level is TrustLevel.UNTRUSTED


def test_host_version_check(tmp_path: Path) -> None:
    manifest = read(tmp_path, plugin_extra='host_versions = ">=0.1,<1"')
    assert check_host_version(manifest, "0.1.0") is None
    assert check_host_version(manifest, "0.9.1rc1") is None
    why = check_host_version(manifest, "1.0.0")
    assert why is not None and "'>=0.1,<1'" in why and "1.0.0" in why


@pytest.mark.parametrize(
    ("plugin_extra", "tables", "field", "says"),
    [
        ('priority = "high"', "", "plugin.priority", "expected an integer"),
        ("priority = true", "", "plugin.priority", "expected an integer"),
        ("priority = 10000000", "", "plugin.priority", "between"),
        ('host_versions = "about one"', "", "plugin.host_versions", "PEP 440"),
        ("host_versions = 1", "", "plugin.host_versions", "PEP 440"),
        ("", "[resources]\nmemory_mb = 12\n", "resources.memory_mb", ">= 256"),
        ("", "[resources]\nmemory_mb = 300.5\n", "resources.memory_mb", "an integer"),
        ("", '[resources]\ncpu_time_s = "1"\n', "resources.cpu_time_s", "an integer"),
        ("", "[resources]\ncall_timeout_s = 0\n", "resources.call_timeout_s", "a number"),
        ("", "[resources]\ncall_timeout_s = nan\n", "resources.call_timeout_s", "a number"),
        ("", "[resources]\ndisk_mb = 3\n", "resources.disk_mb", "unknown key"),
        ("", "[pool]\nmin_workers = 0\n", "pool", "positive integer"),
        ("", "[extras]\na = 1\n", "extras", "unknown table"),
        ('colour = "red"', "", "plugin.colour", "unknown key"),
        ("", '[python]\npath = ["../outside"]\n', "python.path", "no '..'"),
        ("", '[python]\npath = ["/usr/lib/python3"]\n', "python.path", "inside the plugin folder"),
        ("", '[python]\npath = ["a//b"]\n', "python.path", "inside the plugin folder"),
        ("", '[python]\npath = "_vendor"\n', "python.path", "must be a list"),
        ("", '[python]\npath = ["_vendor\\nx"]\n', "python.path", "inside the plugin folder"),
        ("", '[python]\nrequirements = "requirements.txt"\n', "python.path", "needs python.path"),
        ("", '[python]\npath = ["_vendor"]\nrequirements = "../r.txt"\n', "python.requirements", "inside the plugin"),
        ("", '[python]\npath = ["_vendor"]\nrequirements = [1]\n', "python.requirements", "requirement lines"),
        ("", "[python]\nsite = true\n", "python.site", "unknown key"),
    ],
)
def test_invalid_fields_name_the_file_and_the_field(
    tmp_path: Path, plugin_extra: str, tables: str, field: str, says: str
) -> None:
    caught = error(tmp_path, plugin_extra=plugin_extra, tables=tables)
    assert caught.field == field
    assert says in str(caught)


def test_signature_must_be_a_table(tmp_path: Path) -> None:
    folder = write(tmp_path)
    path = folder / "plugin.toml"
    path.write_text('signature = "abc"\n' + path.read_text())
    with pytest.raises(ManifestError) as caught:
        read_manifest(folder)
    assert caught.value.field == "signature"


def test_builtin_is_refused_in_a_folder(tmp_path: Path) -> None:
    folder = write(tmp_path)
    path = folder / "plugin.toml"
    path.write_text(path.read_text().replace('"untrusted"', '"builtin"'))
    with pytest.raises(ManifestError, match="BuiltIn is only what the host registers in code") as caught:
        read_manifest(folder)
    assert (caught.value.field, caught.value.plugin_id) == ("plugin.trust_level", "scanner")


@pytest.mark.parametrize("key", ["id", "name", "version", "trust_level", "entry"])
def test_missing_required_fields_are_named(tmp_path: Path, key: str) -> None:
    folder = write(tmp_path)
    path = folder / "plugin.toml"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith(f"{key} =")))
    with pytest.raises(ManifestError, match=f"missing plugin.{key}") as caught:
        read_manifest(folder)
    assert caught.value.field == f"plugin.{key}"


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "plugin.toml").write_text("[plugin\nid = ")
    with pytest.raises(ManifestError, match="not valid TOML") as caught:
        read_manifest(folder)
    assert caught.value.path == folder.resolve() / "plugin.toml"


@pytest.mark.parametrize(
    "bad_id",
    ["x\n", "a/b", 'q"uote', "with space", "ctl\x07", "x" * 64],
    ids=["newline", "slash", "quote", "space", "bel", "64"],
)
def test_an_invalid_id_names_plugin_id_and_is_never_carried(tmp_path: Path, bad_id: str) -> None:
    folder = write(tmp_path)
    path = folder / "plugin.toml"
    path.write_text(path.read_text().replace('id = "scanner"', f"id = {json.dumps(bad_id)}"))
    with pytest.raises(ManifestError, match=r"plugin id .* is invalid \(plugin\.id\)") as caught:
        read_manifest(folder)
    # A host builds a Failed slot from plugin_id: an invalid id must never travel on the error.
    assert caught.value.field == "plugin.id" and caught.value.plugin_id is None


def test_an_entry_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path)
    path = folder / "plugin.toml"
    path.write_text(path.read_text().replace('entry = "scanner:Scanner"', 'entry = "scanner:Scanner\\n"'))
    with pytest.raises(ManifestError) as caught:
        read_manifest(folder)
    assert caught.value.field == "plugin.entry"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b'[plugin]\nid = "caf\xe9"\n'), "is not UTF-8"),
        (lambda p: p.write_text("x = " + "[" * 3000 + "]" * 3000), "nested too deeply"),
        (lambda p: p.write_text("# pad\n" * 200_000), "larger than 1048576 bytes"),
        (lambda p: (p.unlink(), os.mkfifo(p)), "is a fifo"),
        (lambda p: (p.rename(p.with_name("real.toml")), p.symlink_to("real.toml")), "is a symbolic link"),
    ],
    ids=["not-utf8", "deep", "huge", "fifo", "symlink"],
)
def test_an_unreadable_manifest_is_a_manifest_error_not_a_crash_or_a_hang(
    tmp_path: Path, make: object, says: str
) -> None:
    folder = write(tmp_path)
    make(folder / "plugin.toml")  # type: ignore[operator]
    with pytest.raises(ManifestError, match=says) as caught:
        read_manifest(folder)
    assert caught.value.path == folder.resolve() / "plugin.toml"


def test_python_path_and_requirements_are_read(tmp_path: Path) -> None:
    manifest = read(
        tmp_path, tables='[python]\npath = ["_vendor", "lib/extra", "_vendor"]\nrequirements = ["six==1.16.0"]\n'
    )
    assert manifest.python_path == ("_vendor", "lib/extra")
    assert manifest.requirements == ("six==1.16.0",)
    (tmp_path / "other").mkdir()
    assert read(tmp_path / "other", tables="").python_path == ()
