"""host.discover() and host.rescan() end to end: content hashes recorded at registration and verified on the
copy that loads, signatures deciding Trusted, failures that stay with their plugin, and no import of
Untrusted code in the host. One sandboxed host serves the whole module; in-process cases need no workers."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from _hosts import close_host

from plugin_pool import PluginHost, PluginSettings, load_config
from plugin_pool.integrity import load_private_key, sign_plugin, write_keypair
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import TrustLevel
from plugin_pool.registry import InMemoryPluginRegistry
from plugin_pool.registry.base import EventKind
from plugin_pool.trust import UnknownTrust

SIDE_EFFECT_VAR = "PLUGIN_POOL_TEST_HOST_DISCOVERY_IMPORTED"

MODULE = """\
import os
import pathlib

os.environ["{var}"] = "1"
try:
    pathlib.Path(__file__).with_name("imported_marker").write_text("imported")
except OSError:
    pass  # the sandbox's copy is read-only: the attempt is the point

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Plugin(PluginBase):
    info = PluginInfo(id="{id}", name="{id}", version="1.0.0", trust_level=TrustLevel.{level})

    @capability
    def scan(self, payload):
        return {{"seen": payload, "by": "{id}", "env": os.environ.get("{var}")}}
"""


def make_plugin(root: Path, plugin_id: str, *, trust: str = "untrusted") -> Path:
    folder = root / plugin_id
    folder.mkdir(parents=True)
    module = plugin_id.replace("-", "_")
    (folder / "plugin.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{plugin_id}"\nversion = "1.0.0"\ntrust_level = "{trust}"\n'
        f'entry = "{module}:Plugin"\n\n[capabilities.scan]\n\n[pool]\nmin_workers = 1\nmax_workers = 1\n'
    )
    (folder / f"{module}.py").write_text(MODULE.format(var=SIDE_EFFECT_VAR, id=plugin_id, level=trust.upper()))
    (folder / "rules.txt").write_text("rule one\n")
    return folder


def make_host(
    paths: list[Path],
    registry: Any = None,
    *,
    plugins: Mapping[str, PluginSettings] | None = None,
    **sections: Mapping[str, Any],
) -> PluginHost:
    overrides: dict[str, Mapping[str, Any]] = {
        "discovery": {"paths": [str(p) for p in paths], "use_entry_points": False, **sections.pop("discovery", {})},
        "sandbox": {"boot_timeout_s": 5.0, "recycle_jitter": 0.0},
        **sections,
    }
    config = load_config(overrides=overrides)
    return PluginHost(replace(config, plugins=dict(plugins or {})), registry=registry).open()


def hash_events(host: PluginHost, plugin_id: str) -> list[Mapping[str, Any]]:
    return [e.details for e in host.registry.list_events(plugin_id=plugin_id, event=EventKind.HASH_MISMATCH)]


# -- one sandboxed host for the module -------------------------------------------------------------------


@dataclass
class Discovered:
    host: PluginHost
    root: Path


@pytest.fixture(scope="module")
def discovered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Discovered]:
    """Discovers steady, sidefx and three plugins tampered with between discovery and start; starts them."""
    root = tmp_path_factory.mktemp("discovery") / "plugins"
    for plugin_id in ("steady", "sidefx", "tamper-changed", "tamper-added", "tamper-removed"):
        make_plugin(root, plugin_id)
    host = make_host([root])
    try:
        result = host.discover()
        assert result.ids == ("sidefx", "steady", "tamper-added", "tamper-changed", "tamper-removed")
        (root / "tamper-changed" / "rules.txt").write_text("rule one, edited\n")
        (root / "tamper-added" / "extra.py").write_text("print('hello')\n")
        (root / "tamper-removed" / "rules.txt").unlink()
        host.start_plugins()
        yield Discovered(host, root)
    finally:
        close_host(host)


pytestmark = [pytest.mark.sandbox]


def test_registration_records_the_content_hash(discovered: Discovered) -> None:
    host = discovered.host
    digest = host.discover().get("steady").content_hash.digest  # type: ignore[union-attr]
    [version] = host.registry.list_versions("steady")
    assert version.assembly_hash == digest


def test_untouched_plugins_start_and_serve(discovered: Discovered) -> None:
    host = discovered.host
    assert host.is_active("steady") and host.is_active("sidefx"), host.get_health().failed
    assert host.invoke("steady", "scan", "x")["by"] == "steady"
    assert host.get_plugin_health("steady").trust_level is TrustLevel.UNTRUSTED


@pytest.mark.parametrize(
    ("plugin_id", "change"),
    [
        ("tamper-changed", "changed: rules.txt"),
        ("tamper-added", "added: extra.py"),
        ("tamper-removed", "removed: rules.txt"),
    ],
)
def test_a_file_changed_after_registration_fails_the_plugin_naming_it(
    discovered: Discovered, plugin_id: str, change: str
) -> None:
    health = discovered.host.get_plugin_health(plugin_id)
    assert health.state is PluginState.FAILED
    assert health.reason is not None and "content hash mismatch" in health.reason and change in health.reason
    [event] = hash_events(discovered.host, plugin_id)
    assert change in event["changes"]
    assert discovered.host.sandbox is not None
    assert discovered.host.sandbox.list_worker_pids(plugin_id) == []  # no worker ever booted


def test_untrusted_import_time_side_effects_never_happen_in_the_host(discovered: Discovered) -> None:
    result = discovered.host.invoke("sidefx", "scan", 1)
    assert result["env"] == "1"  # the module did run: in the worker
    assert SIDE_EFFECT_VAR not in os.environ
    assert not list(discovered.root.rglob("imported_marker"))
    assert not [name for name in sys.modules if "sidefx" in name]


def test_rescan_adds_and_reports_without_disturbing_active_plugins(discovered: Discovered) -> None:
    host, root = discovered.host, discovered.root
    make_plugin(root, "newcomer")
    (root / "steady" / "rules.txt").write_text("changed under a running plugin\n")
    shutil.rmtree(root / "tamper-removed")
    report = host.rescan()
    assert report.added == ("newcomer",)
    assert report.changed == ("steady", "tamper-added", "tamper-changed")  # the last two since the fixture
    assert report.removed == ("tamper-removed",)
    assert host.get_plugin_health("newcomer").state is PluginState.DISCOVERED
    assert host.is_active("steady") and host.invoke("steady", "scan", "still")["seen"] == "still"
    assert host.rescan().added == ()


# -- in-process: Trusted folders, entry points, registry conflicts ----------------------------------------


@pytest.fixture
def hosts() -> Iterator[list[PluginHost]]:
    made: list[PluginHost] = []
    yield made
    for host in reversed(made):
        close_host(host)


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "dev.key", tmp_path / "keys" / "dev.pub"
    private.parent.mkdir()
    write_keypair(private, public)
    return private, public


def test_a_signed_trusted_folder_runs_in_process_after_verification(
    tmp_path: Path, keypair: tuple[Path, Path], hosts: list[PluginHost]
) -> None:
    root = tmp_path / "plugins"
    for plugin_id in ("vetted", "vetted-tampered"):
        sign_plugin(make_plugin(root, plugin_id, trust="trusted"), load_private_key(keypair[0]))
    host = make_host([root], trust={"trusted_keys": [str(keypair[1])]})
    hosts.append(host)
    result = host.discover()
    assert [p.decision.split(" key ")[0] for p in result.plugins] == ["trusted: signed by"] * 2
    (root / "vetted-tampered" / "vetted_tampered.py").write_text("raise SystemExit('never imported')\n")
    host.start_plugins()
    assert host.is_active("vetted"), host.get_health().failed
    assert host.get_plugin_health("vetted").trust_level is TrustLevel.TRUSTED
    assert host.invoke("vetted", "scan", 2) == {"seen": 2, "by": "vetted", "env": "1"}  # in-process
    assert host.sandbox is None
    tampered = host.get_plugin_health("vetted-tampered")
    assert tampered.state is PluginState.FAILED and "changed: vetted_tampered.py" in (tampered.reason or "")
    assert hash_events(host, "vetted-tampered")


@pytest.mark.parametrize("policy", ["reject", "downgrade"])
def test_unsigned_trusted_is_rejected_and_audited_or_downgraded(
    tmp_path: Path, keypair: tuple[Path, Path], hosts: list[PluginHost], policy: str
) -> None:
    make_plugin(tmp_path / "plugins", "claims", trust="trusted")
    host = make_host([tmp_path / "plugins"], trust={"trusted_keys": [str(keypair[1])], "unsigned_trusted": policy})
    hosts.append(host)
    host.discover()
    health = host.get_plugin_health("claims")
    if policy == "reject":
        assert health.state is PluginState.FAILED and "claims Trusted but unsigned" in (health.reason or "")
        assert host.registry.list_events(plugin_id="claims", event=EventKind.SIGNATURE_REJECTED)
        assert host.get_health().failed["claims"] == health.reason
    else:
        assert health.state is PluginState.DISCOVERED and health.trust_level is TrustLevel.UNTRUSTED


def test_bad_manifests_and_duplicates_fail_only_their_plugin(tmp_path: Path, hosts: list[PluginHost]) -> None:
    root = tmp_path / "plugins"
    make_plugin(root, "fine")
    (make_plugin(root, "broken") / "plugin.toml").write_text("[plugin\n")
    make_plugin(tmp_path / "more", "fine")
    host = make_host([root, tmp_path / "missing", tmp_path / "more"])
    hosts.append(host)
    result = host.discover()
    assert result.skipped_paths == (str(tmp_path / "missing"),)
    assert host.get_plugin_health("fine").state is PluginState.DISCOVERED
    assert "not valid TOML" in host.get_health().failed["broken"]  # type: ignore[operator]
    # The duplicate has its own event, naming both folders, and the running plugin's history stays its own.
    assert [e.event for e in host.registry.list_events(plugin_id="fine")] == [EventKind.REGISTERED]
    [duplicate] = host.registry.list_events(event=EventKind.DUPLICATE_REJECTED)
    assert duplicate.plugin_id is None
    assert dict(duplicate.details) == {
        "plugin_id": "fine",
        "source": str(tmp_path / "more" / "fine"),
        "first_source": str(root / "fine"),
        "reason": duplicate.details["reason"],
    }
    assert "duplicate plugin id 'fine'" in str(duplicate.details["reason"])
    [listed] = host.get_health().duplicates
    assert (listed.plugin_id, listed.source, listed.duplicate_of) == (
        "fine",
        str(tmp_path / "more" / "fine"),
        str(root / "fine"),
    )
    host.discover()  # cached: adds nothing, audits nothing twice
    assert len(host.registry.list_events(event=EventKind.DUPLICATE_REJECTED)) == 1


def test_a_changed_folder_with_the_same_version_fails_precisely(tmp_path: Path, hosts: list[PluginHost]) -> None:
    registry = InMemoryPluginRegistry()
    folder = make_plugin(tmp_path / "plugins", "same-version")
    first = make_host([tmp_path / "plugins"], registry=registry)
    hosts.append(first)
    first.discover()
    first.close()
    (folder / "rules.txt").write_text("edited, version not bumped\n")
    second = make_host([tmp_path / "plugins"], registry=registry)
    hosts.append(second)
    second.discover()  # does not raise
    health = second.get_plugin_health("same-version")
    assert health.state is PluginState.FAILED and "content hash mismatch" in (health.reason or "")
    assert hash_events(second, "same-version")


def test_an_entry_point_that_fails_to_import_fails_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hosts: list[PluginHost]
) -> None:
    site = tmp_path / "site"
    dist = site / "ep_plugins-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[plugin_pool.host_test_plugins]\n"
        "ep-good = ep_good_mod:Good\nep-broken = ep_broken_mod:Broken\nep-liar = ep_good_mod:Liar\n"
    )
    (site / "ep_good_mod.py").write_text(
        "from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability\n\n"
        "class Good(PluginBase):\n"
        "    info = PluginInfo(id='ep-good', name='Good', version='1.0', trust_level=TrustLevel.BUILTIN)\n\n"
        "    @capability\n    def scan(self, payload):\n        return payload\n\n"
        "class Liar(Good):\n"
        "    info = PluginInfo(id='ep-liar', name='Liar', version='1.0', trust_level=TrustLevel.UNTRUSTED)\n"
    )
    (site / "ep_broken_mod.py").write_text("raise ImportError('missing native library')\n")
    # A distribution that is not allowed: refused from its metadata alone, never imported.
    other = site / "other_plugins-1.0.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: other-plugins\nVersion: 1.0\n")
    (other / "entry_points.txt").write_text("[plugin_pool.host_test_plugins]\nep-refused = ep_refused_mod:Plugin\n")
    (site / "ep_refused_mod.py").write_text(f"import os\nos.environ['{SIDE_EFFECT_VAR}'] = 'refused ran'\n")
    monkeypatch.delenv(SIDE_EFFECT_VAR, raising=False)
    monkeypatch.syspath_prepend(str(site))
    host = make_host(
        [],
        discovery={
            "use_entry_points": True,
            "entry_point_group": "plugin_pool.host_test_plugins",
            "entry_point_distributions": ["ep-plugins"],
        },
        plugins={"ep-good": PluginSettings(trust_level="builtin")},
    )
    hosts.append(host)
    host.discover()
    host.start_plugins()
    # Entry points run Trusted (monitored) unless [plugins.<id>] trust_level says otherwise (ep-good says builtin).
    assert host.is_active("ep-good") and host.get_plugin("ep-good").scan(3) == 3
    assert host.get_plugin_health("ep-good").trust_level is TrustLevel.BUILTIN
    health = host.get_health()
    failed = health.failed
    assert "ImportError: missing native library" in (failed["ep-broken"] or "")
    assert host.get_plugin_health("ep-broken").trust_level is TrustLevel.TRUSTED  # decided before the import
    # One that says Untrusted is refused, and health shows the level it declared.
    assert "is Untrusted by its own info, so its code never runs in the host process" in (failed["ep-liar"] or "")
    liar = host.get_plugin_health("ep-liar")
    assert liar.trust_level is TrustLevel.UNTRUSTED and liar.state is PluginState.FAILED
    # Refused before import: listed, Failed, its level unknown (never a placeholder), and it never ran.
    refused = host.get_plugin_health("ep-refused")
    assert refused.state is PluginState.FAILED and refused.trust_level is UnknownTrust.UNKNOWN
    assert refused.to_dict()["trust_level"] == "unknown"
    assert "not in [discovery] entry_point_distributions" in (refused.reason or "")
    [listed] = [r for r in health.rejected if r.plugin_id == "ep-refused"]
    assert listed.kind == "entry_point" and "other-plugins" in listed.source
    assert SIDE_EFFECT_VAR not in os.environ and "ep_refused_mod" not in sys.modules
    for name in ("ep_good_mod", "ep_broken_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_trusted_folder_plugin_imports_its_own_modules_relatively_from_the_verified_copy(
    tmp_path: Path, keypair: tuple[Path, Path], hosts: list[PluginHost]
) -> None:
    folder = tmp_path / "plugins" / "layered"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        '[plugin]\nid = "layered"\nname = "Layered"\nversion = "1.0.0"\ntrust_level = "trusted"\n'
        'entry = "main:Layered"\n\n[capabilities.scan]\n\n[capabilities.where]\n'
    )
    (folder / "rules.py").write_text("WORDS = ('secret', 'token')\n")
    (folder / "main.py").write_text(
        "from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability\n"
        "from . import rules\n\n"
        "class Layered(PluginBase):\n"
        "    info = PluginInfo(id='layered', name='Layered', version='1.0.0', trust_level=TrustLevel.TRUSTED)\n\n"
        "    @capability\n"
        "    def scan(self, text):\n"
        "        return [w for w in rules.WORDS if w in text]\n\n"
        "    @capability\n"
        "    def where(self, _):\n"
        "        return [__name__, __file__]\n"
    )
    sign_plugin(folder, load_private_key(keypair[0]))
    host = make_host([folder.parent], trust={"trusted_keys": [str(keypair[1])]})
    hosts.append(host)
    host.discover()
    host.start_plugins()
    assert host.is_active("layered"), host.get_health().failed
    assert host.invoke("layered", "scan", "a secret") == ["secret"]
    # Imported from the private copy under a private package name, never from the folder or sys.path.
    name, file = host.invoke("layered", "where")
    assert name.startswith("plugin_pool_trusted_layered_") and name.endswith(".main")
    assert not file.startswith(str(folder)) and file.endswith("main.py")
    assert str(folder) not in sys.path
