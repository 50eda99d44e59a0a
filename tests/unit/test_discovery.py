"""Discovery without processes: folders read as data, trust decided by signatures, errors that fail only their
plugin, deterministic order, entry points listed but not imported, the cache and rescans."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from plugin_pool.discovery import DiscoveredPlugin, Discovery, DiscoveryResult, discover, format_discovery_report
from plugin_pool.integrity import load_private_key, load_trusted_keys, sign_plugin, write_keypair
from plugin_pool.model import TrustLevel

SIDE_EFFECT_VAR = "PLUGIN_POOL_TEST_DISCOVERY_IMPORTED"

MODULE = """\
import os
import pathlib
os.environ["{var}"] = "1"
pathlib.Path(__file__).with_name("imported_marker").write_text("imported")

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Plugin(PluginBase):
    info = PluginInfo(id="{id}", name="{id}", version="{version}", trust_level=TrustLevel.{level})

    @capability
    def scan(self, payload):
        return {{"seen": payload, "by": "{id}"}}
"""


def make_plugin(
    root: Path,
    plugin_id: str,
    *,
    folder: str | None = None,
    trust: str = "untrusted",
    priority: int | None = None,
    extra: str = "",
    version: str = "1.0.0",
) -> Path:
    """A plugin folder ``root/folder`` whose module has import-time side effects (marker file, env var)."""
    path = root / (folder or plugin_id)
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        "[plugin]",
        f'id = "{plugin_id}"',
        f'name = "{plugin_id}"',
        f'version = "{version}"',
        f'trust_level = "{trust}"',
        f'entry = "{plugin_id.replace("-", "_")}:Plugin"',
    ]
    if priority is not None:
        lines.append(f"priority = {priority}")
    lines += [extra, "", "[capabilities.scan]", ""]
    (path / "plugin.toml").write_text("\n".join(lines))
    level = trust.upper() if trust in ("untrusted", "trusted") else "UNTRUSTED"
    (path / f"{plugin_id.replace('-', '_')}.py").write_text(
        MODULE.format(var=SIDE_EFFECT_VAR, id=plugin_id, version=version, level=level)
    )
    return path


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A trusted key pair and an unknown one: ``trusted``, ``trusted_pub``, ``stranger``."""
    out = tmp_path / "keys"
    out.mkdir()
    write_keypair(out / "trusted.key", out / "trusted.pub")
    write_keypair(out / "stranger.key", out / "stranger.pub")
    return {"trusted": out / "trusted.key", "trusted_pub": out / "trusted.pub", "stranger": out / "stranger.key"}


def by_id(result: DiscoveryResult) -> dict[str, DiscoveredPlugin]:
    return {p.plugin_id: p for p in (*result.plugins, *result.errors) if p.plugin_id}


def test_untrusted_folders_are_found_hashed_and_ordered_by_priority_then_id(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "zeta", priority=5)
    make_plugin(root, "alpha")
    make_plugin(root, "beta")
    make_plugin(root, "omega", priority=-1)
    (root / "not-a-plugin").mkdir()
    result = discover([root], use_entry_points=False)
    assert result.ids == ("zeta", "alpha", "beta", "omega")
    assert result.errors == () and result.skipped_paths == ()
    alpha = result.plugins[1]
    assert alpha.trust_level is TrustLevel.UNTRUSTED and alpha.kind == "folder"
    assert alpha.decision.startswith("untrusted")
    assert alpha.content_hash is not None and alpha.content_hash.digest.startswith("sha256:")
    assert set(alpha.content_hash.files) == {"plugin.toml", "alpha.py"}
    assert result.get("beta") is result.plugins[2] and result.get("nope") is None


def test_a_path_that_is_itself_a_plugin_folder_counts_as_one(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "single")
    assert discover([folder], use_entry_points=False).ids == ("single",)


def test_discovery_imports_nothing_from_a_plugin_folder(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path / "plugins", "sidefx")
    before = set(sys.modules)
    result = discover([tmp_path / "plugins"], use_entry_points=False)
    assert result.ids == ("sidefx",)
    assert SIDE_EFFECT_VAR not in os.environ
    assert not (folder / "imported_marker").exists()
    assert not [m for m in set(sys.modules) - before if "sidefx" in m]


def test_a_missing_path_is_skipped_logged_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_plugin(tmp_path / "plugins", "present")
    result = discover([tmp_path / "absent", tmp_path / "plugins"], use_entry_points=False)
    assert result.ids == ("present",)
    assert result.skipped_paths == (str(tmp_path / "absent"),)
    assert any("absent" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("breakage", "field", "says"),
    [
        (lambda p: p.write_text("[plugin\nid = "), None, "not valid TOML"),
        (lambda p: p.write_text(p.read_text().replace('name = "bad"\n', "")), "plugin.name", "missing plugin.name"),
        (lambda p: p.write_text(p.read_text() + "\n[resources]\nmemory_mb = 'lots'\n"), "resources.memory_mb", ""),
        (
            lambda p: p.write_text(p.read_text().replace("[plugin]", "[plugin]\npriority = 'top'")),
            "plugin.priority",
            "",
        ),
        (lambda p: p.write_text(p.read_text().replace('"untrusted"', '"builtin"')), "plugin.trust_level", "BuiltIn"),
    ],
    ids=["malformed-toml", "missing-field", "mistyped-resource", "mistyped-priority", "builtin-folder"],
)
def test_a_bad_manifest_fails_only_its_plugin(tmp_path: Path, breakage: object, field: str | None, says: str) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "good")
    bad = make_plugin(root, "bad")
    breakage(bad / "plugin.toml")  # type: ignore[operator]
    result = discover([root], use_entry_points=False)
    assert result.ids == ("good",)
    [error] = result.errors
    assert error.plugin_id == "bad"  # read from the manifest, else the folder's name
    assert error.error_kind == "manifest" and error.error is not None
    assert str(bad.resolve() / "plugin.toml") in error.error and says in error.error
    if field:
        assert field in error.error
    assert error.decision.startswith("error: ")


def test_duplicate_ids_the_first_source_wins(tmp_path: Path) -> None:
    make_plugin(tmp_path / "a", "twin", version="1.0.0")
    make_plugin(tmp_path / "b", "twin", version="2.0.0")
    make_plugin(tmp_path / "b", "twin", folder="another-twin", version="3.0.0")
    result = discover([tmp_path / "a", tmp_path / "b"], use_entry_points=False)
    assert result.ids == ("twin",)
    winner = result.plugins[0]
    assert winner.manifest is not None and str(winner.manifest.info.version) == "1.0.0"
    assert [e.error_kind for e in result.errors] == ["duplicate", "duplicate"]
    assert all(f"already discovered from {winner.source}" in (e.error or "") for e in result.errors)


def test_an_incompatible_host_version_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "future", extra='host_versions = ">=2"')
    make_plugin(root, "current", extra='host_versions = ">=0.1,<1"')
    result = discover([root], use_entry_points=False, host_version="0.1.0")
    assert result.ids == ("current",)
    [error] = result.errors
    assert error.error_kind == "host_version" and "'>=2'" in (error.error or "") and "0.1.0" in (error.error or "")
    assert error.decision.startswith("rejected: ")


def test_a_symlink_out_of_the_folder_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    leaky = make_plugin(root, "leaky")
    (leaky / "data.txt").symlink_to(secret)
    make_plugin(root, "fine")
    result = discover([root], use_entry_points=False)
    assert result.ids == ("fine",)
    [error] = result.errors
    assert error.plugin_id == "leaky" and error.error_kind == "integrity"
    assert "data.txt" in (error.error or "")


# -- trust ------------------------------------------------------------------------------------------------


def signed(root: Path, plugin_id: str, key: Path) -> Path:
    folder = make_plugin(root, plugin_id, trust="trusted")
    sign_plugin(folder, load_private_key(key))
    return folder


def test_a_trusted_folder_signed_by_a_trusted_key_is_trusted(tmp_path: Path, keys: dict[str, Path]) -> None:
    signed(tmp_path / "plugins", "vetted", keys["trusted"])
    trusted = load_trusted_keys([keys["trusted_pub"]])
    result = discover([tmp_path / "plugins"], use_entry_points=False, trusted_keys=trusted)
    [plugin] = result.plugins
    [key_id] = trusted
    assert plugin.trust_level is TrustLevel.TRUSTED and plugin.key_id == key_id
    assert plugin.decision == f"trusted: signed by key {key_id}"
    assert plugin.content_hash is not None


@pytest.mark.parametrize("policy", ["reject", "downgrade"])
def test_an_unsigned_trusted_folder_is_rejected_or_downgraded(
    tmp_path: Path, keys: dict[str, Path], policy: str
) -> None:
    make_plugin(tmp_path / "plugins", "claims", trust="trusted")
    trusted = load_trusted_keys([keys["trusted_pub"]])
    result = discover([tmp_path / "plugins"], use_entry_points=False, trusted_keys=trusted, unsigned_trusted=policy)
    found = by_id(result)["claims"]
    if policy == "reject":
        assert result.ids == ()
        assert found.error_kind == "signature" and "claims Trusted but unsigned" in (found.error or "")
        assert found.decision.startswith("rejected: ")
    else:
        assert found.ok and found.trust_level is TrustLevel.UNTRUSTED
        assert found.decision == "untrusted (downgraded: unsigned)"


def test_a_signature_by_an_unknown_key_is_rejected(tmp_path: Path, keys: dict[str, Path]) -> None:
    signed(tmp_path / "plugins", "stranger", keys["stranger"])
    trusted = load_trusted_keys([keys["trusted_pub"]])
    result = discover([tmp_path / "plugins"], use_entry_points=False, trusted_keys=trusted)
    [error] = result.errors
    assert error.error_kind == "signature" and "unknown_key" in (error.error or "")


def test_a_signature_over_a_different_hash_is_rejected(tmp_path: Path, keys: dict[str, Path]) -> None:
    folder = signed(tmp_path / "plugins", "edited", keys["trusted"])
    (folder / "edited.py").write_text((folder / "edited.py").read_text() + "\n# edited after signing\n")
    trusted = load_trusted_keys([keys["trusted_pub"]])
    result = discover([tmp_path / "plugins"], use_entry_points=False, trusted_keys=trusted)
    [error] = result.errors
    assert error.error_kind == "signature" and "content_changed" in (error.error or "")
    downgraded = discover(
        [tmp_path / "plugins"], use_entry_points=False, trusted_keys=trusted, unsigned_trusted="downgrade"
    )
    assert downgraded.plugins[0].trust_level is TrustLevel.UNTRUSTED
    assert "content_changed" in downgraded.plugins[0].decision


def test_signatures_never_upgrade_an_untrusted_manifest(tmp_path: Path, keys: dict[str, Path]) -> None:
    folder = make_plugin(tmp_path / "plugins", "humble")
    sign_plugin(folder, load_private_key(keys["trusted"]))
    result = discover(
        [tmp_path / "plugins"], use_entry_points=False, trusted_keys=load_trusted_keys([keys["trusted_pub"]])
    )
    assert result.plugins[0].trust_level is TrustLevel.UNTRUSTED


# -- entry points -----------------------------------------------------------------------------------------


def install_entry_points(site: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, str]) -> None:
    """A real installed distribution (a dist-info folder on sys.path) advertising ``entries``."""
    dist = site / "demo_plugins-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugins\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (dist / "entry_points.txt").write_text(f"[plugin_pool.test_plugins]\n{lines}\n")
    monkeypatch.syspath_prepend(str(site))


def test_entry_points_are_listed_but_not_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(tmp_path / "site", monkeypatch, {"ep-b": "ep_never_imported:B", "Bad Name": "x:y"})
    make_plugin(tmp_path / "plugins", "ep-b", folder="folder-b")
    result = discover(
        [tmp_path / "plugins"], entry_point_group="plugin_pool.test_plugins", entry_point_distributions=["demo-plugins"]
    )
    assert "ep_never_imported" not in sys.modules
    # The folder came first, so the entry point with the same id is the duplicate.
    assert result.ids == ("ep-b",) and result.plugins[0].kind == "folder"
    kinds = sorted((e.kind, e.error_kind) for e in result.errors)
    assert kinds == [("entry_point", "duplicate"), ("entry_point", "entry_point")]
    alone = discover([], entry_point_group="plugin_pool.test_plugins", entry_point_distributions=["Demo_Plugins"])
    [ep] = alone.plugins
    assert ep.kind == "entry_point" and ep.trust_level is None and "demo-plugins" in ep.source
    assert discover([], entry_point_group="plugin_pool.test_plugins", use_entry_points=False).plugins == ()


# -- cache, rescan, report --------------------------------------------------------------------------------


def test_the_result_is_cached_until_rescan(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "kept")
    changed = make_plugin(root, "changed")
    gone = make_plugin(root, "gone")
    discovery = Discovery([root], use_entry_points=False)
    assert not discovery.is_cached
    first = discovery.get_result()
    make_plugin(root, "new")
    assert discovery.get_result() is first  # cached: the new folder is not seen yet
    (changed / "changed.py").write_text("# new code\n")
    for path in gone.iterdir():
        path.unlink()
    gone.rmdir()
    report = discovery.rescan()
    assert (report.added, report.changed, report.removed) == (("new",), ("changed",), ("gone",))
    assert discovery.get_result() is report.result
    again = discovery.rescan()
    assert (again.added, again.changed, again.removed) == ((), (), ())


def test_the_report_says_what_loads_and_why_not(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "loads")
    make_plugin(root, "claims", trust="trusted")
    result = discover([root, tmp_path / "absent"], use_entry_points=False)
    text = format_discovery_report(result)
    assert text.splitlines()[0] == "1 plugin(s) would load, 1 would not, 1 path(s) skipped"
    assert "load  loads" in text and "untrusted" in text
    assert "FAIL  claims" in text and "rejected: claims Trusted but unsigned" in text
    assert f"SKIP  {tmp_path / 'absent'}" in text
    assert format_discovery_report(result.plugins).startswith("1 plugin(s) would load, 0 would not")


# -- each folder is judged alone ----------------------------------------------------------------------------


def _manifest_with_id(plugin_id: str) -> str:
    return (
        f'[plugin]\nid = {json.dumps(plugin_id)}\nname = "n"\nversion = "1.0.0"\ntrust_level = "untrusted"\n'
        f'entry = "m:P"\n\n[capabilities.scan]\n'
    )


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (lambda p: p.write_text(_manifest_with_id("x\n")), "plugin id 'x\\n' is invalid"),
        (lambda p: p.write_text(_manifest_with_id("a/b")), "plugin id 'a/b' is invalid"),
        (lambda p: p.write_text(_manifest_with_id("../../etc")), "plugin id '../../etc' is invalid"),
        (lambda p: p.write_text(_manifest_with_id('q"uote')), "is invalid"),
        (lambda p: p.write_text(_manifest_with_id("two words")), "plugin id 'two words' is invalid"),
        (lambda p: p.write_text(_manifest_with_id("bell\a")), "plugin id 'bell\\x07' is invalid"),
        (lambda p: p.write_bytes(b'[plugin]\nid = "caf\xe9"\n'), "is not UTF-8"),
        (lambda p: p.write_text("x = " + "[" * 4000 + "]" * 4000), "nested too deeply"),
        (lambda p: os.mkfifo(p), "is a fifo"),
        (lambda p: p.symlink_to("/dev/zero"), "is a symbolic link"),
        (lambda p: p.mkdir(), "cannot be read"),
    ],
    ids=["newline", "slash", "dotdot", "quote", "space", "control", "not-utf8", "deep", "fifo", "symlink", "folder"],
)
def test_a_folder_that_cannot_even_be_named_is_rejected_and_the_scan_goes_on(
    tmp_path: Path, write: object, says: str
) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "before")
    bad = root / "Bad Folder"  # not a valid id either: the rejection is named by its path alone
    bad.mkdir(parents=True)
    write(bad / "plugin.toml")  # type: ignore[operator]
    make_plugin(root, "zafter")
    result = discover([root], use_entry_points=False)  # never raises for what a folder holds
    assert result.ids == ("before", "zafter")
    [error] = result.errors
    assert error.plugin_id is None and error.kind == "folder" and error.source == str(bad)
    assert error.error_kind == "manifest" and says in (error.error or "")
    assert result.rejected == (error,) and result.duplicates == ()


def test_an_invalid_id_in_a_validly_named_folder_is_reported_under_the_folder_name(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    bad = root / "odd"
    bad.mkdir(parents=True)
    (bad / "plugin.toml").write_text(_manifest_with_id("x\n"))
    [error] = discover([root], use_entry_points=False).errors
    assert error.plugin_id == "odd" and "plugin.id" in (error.error or "")


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        (lambda f: (f / "pkg").mkdir() or (f / "pkg" / "__init__.pyc").write_bytes(b"\0"), "bytecode"),
        (lambda f: (f / "link.py").symlink_to(f / "plugin.toml"), "symlink"),
        (lambda f: os.mkfifo(f / "pipe"), "special_file"),
        (lambda f: (f / "blob.bin").write_bytes(b"x" * 5000), "file_too_large"),
    ],
    ids=["bytecode", "symlink", "fifo", "too-large"],
)
def test_content_rejections_carry_their_kind_for_the_metric(tmp_path: Path, damage: object, kind: str) -> None:
    from plugin_pool.content import FolderLimits

    root = tmp_path / "plugins"
    damage(make_plugin(root, "damaged"))  # type: ignore[operator]
    make_plugin(root, "fine")
    result = discover([root], use_entry_points=False, limits=FolderLimits(max_file_bytes=4096))
    assert result.ids == ("fine",)
    [error] = result.errors
    assert (error.plugin_id, error.error_kind, error.integrity_kind) == ("damaged", "integrity", kind)
    assert str(root / "damaged") in (error.error or "") and error.decision.startswith("rejected: ")


def test_discovery_applies_the_configured_limits(tmp_path: Path) -> None:
    from plugin_pool.config import load_config

    root = tmp_path / "plugins"
    (make_plugin(root, "bulky") / "data.bin").write_bytes(b"x" * 4000)
    make_plugin(root, "slim")
    config = load_config(
        overrides={"discovery": {"paths": [str(root)], "use_entry_points": False, "max_plugin_bytes": 3000}}
    )
    discovery = Discovery.from_config(config)
    assert discovery.limits.max_total_bytes == 3000
    result = discovery.get_result()
    assert result.ids == ("slim",)
    assert [e.integrity_kind for e in result.errors] == ["folder_too_large"]


def test_a_duplicate_is_its_own_kind_naming_both_folders(tmp_path: Path) -> None:
    first = make_plugin(tmp_path / "a", "twin")
    second = make_plugin(tmp_path / "b", "twin")
    result = discover([tmp_path / "a", tmp_path / "b"], use_entry_points=False)
    [duplicate] = result.duplicates
    assert duplicate.source == str(second) and duplicate.duplicate_of == str(first)
    assert str(first) in (duplicate.error or "") and result.rejected == ()
    text = format_discovery_report(result)
    assert "DUPLICATE  twin" in text and f"duplicate_rejected: the id belongs to {first}" in text


def test_the_report_escapes_control_characters_so_a_name_cannot_forge_a_line(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    forged = root / "x\n  load  fake-plugin                       untrusted"
    forged.mkdir(parents=True)
    (forged / "plugin.toml").write_text(_manifest_with_id("bad\x1b[2J"))
    text = format_discovery_report(discover([root], use_entry_points=False))
    assert "\n  load  fake-plugin" not in text and "\x1b" not in text
    assert "x\\n  load  fake-plugin" in text and "\\x1b" in text
    assert text.splitlines()[0] == "0 plugin(s) would load, 1 would not, 0 path(s) skipped"


# -- entry points: refused before import unless their distribution is allowed -------------------------------


EP_MODULE = """\
import os
os.environ["{var}"] = "imported"
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel


class Plugin(PluginBase):
    info = PluginInfo(id="ep-side", name="s", version="1.0", trust_level=TrustLevel.UNTRUSTED)
"""


def test_an_entry_point_of_an_unlisted_distribution_is_refused_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = "PLUGIN_POOL_TEST_EP_IMPORTED"
    monkeypatch.delenv(var, raising=False)
    site = tmp_path / "site"
    install_entry_points(site, monkeypatch, {"ep-side": "ep_side_effects:Plugin"})
    (site / "ep_side_effects.py").write_text(EP_MODULE.format(var=var))
    result = discover([], entry_point_group="plugin_pool.test_plugins", entry_point_distributions=["other-dist"])
    assert result.plugins == ()
    [refused] = result.errors
    assert (refused.plugin_id, refused.kind, refused.error_kind) == ("ep-side", "entry_point", "entry_point")
    assert "refused without importing it" in (refused.error or "") and "'demo-plugins'" in (refused.error or "")
    assert "entry_point_distributions" in (refused.error or "")
    assert var not in os.environ and "ep_side_effects" not in sys.modules
    assert discover([], entry_point_group="plugin_pool.test_plugins").errors[0].error_kind == "entry_point"
    # '*' lets every installed distribution load (still not imported by discovery itself).
    [offered] = discover([], entry_point_group="plugin_pool.test_plugins", entry_point_distributions=["*"]).plugins
    assert offered.entry_point is not None and var not in os.environ
