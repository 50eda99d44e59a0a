"""Trust in one place: the host decides every plugin's level (configuration, or a valid signature) with one
function, a plugin class runs at any level it is allowed without a subclass per level, a signed folder given
as ``[plugins.<id>] path`` runs Trusted, and a capability the code has but the manifest lacks is reported."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
from _plugins import TEST_ACTOR, Recorder

from plugin_pool import PluginHost, TrustLevel, TrustViolationError, load_config
from plugin_pool.integrity import load_private_key, sign_plugin, write_keypair
from plugin_pool.lifecycle import PluginState
from plugin_pool.registry import EventKind, InMemoryPluginRegistry
from plugin_pool.trust import TrustDecision, TrustSource, UnknownTrust, decide_trust_level

B, T, U = TrustLevel.BUILTIN, TrustLevel.TRUSTED, TrustLevel.UNTRUSTED


# -- the one function ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "declared", "configured", "expected"),
    [
        (TrustSource.CODE, B, None, B),  # code the host adds itself: its declared level by default
        (TrustSource.CODE, T, None, T),
        (TrustSource.CODE, T, "builtin", B),  # ... unless the host names one: no subclass per level
        (TrustSource.CODE, B, T, T),
        (TrustSource.ENTRY, B, "trusted", T),  # an entry: always the configured level
        (TrustSource.ENTRY, T, "builtin", B),
        (TrustSource.ENTRY_POINT, None, None, T),  # decided before the import: monitored in-process
        (TrustSource.ENTRY_POINT, B, None, T),  # what the object says does not raise it
        (TrustSource.ENTRY_POINT, T, "builtin", B),  # the operator can
    ],
)
def test_in_process_levels_are_the_hosts(
    source: TrustSource, declared: TrustLevel | None, configured: TrustLevel | str | None, expected: TrustLevel
) -> None:
    decision = decide_trust_level("p", source, declared=declared, configured=configured)
    assert isinstance(decision, TrustDecision) and decision.level is expected and decision.reason


@pytest.mark.parametrize("source", [TrustSource.CODE, TrustSource.ENTRY, TrustSource.ENTRY_POINT])
@pytest.mark.parametrize("configured", [None, "builtin", "trusted"])
def test_an_object_that_says_untrusted_never_runs_in_process(source: TrustSource, configured: str | None) -> None:
    if source is TrustSource.ENTRY and configured is None:
        configured = "trusted"
    with pytest.raises(TrustViolationError, match=r"plugin 'p' is Untrusted by its own info") as caught:
        decide_trust_level("p", source, declared=U, configured=configured)
    assert caught.value.plugin_id == "p"


def test_the_host_never_names_untrusted_for_in_process_code() -> None:
    with pytest.raises(TrustViolationError, match="Untrusted code runs only from a plugin folder"):
        decide_trust_level("p", TrustSource.CODE, declared=T, configured="untrusted")
    with pytest.raises(TrustViolationError, match=r"needs \[plugins.p\] trust_level"):
        decide_trust_level("p", TrustSource.ENTRY, declared=T)


@pytest.mark.parametrize(
    ("claimed", "signed_by", "policy", "expected", "reason"),
    [
        (U, None, "reject", U, "untrusted: declared by its manifest; runs in the sandbox"),
        (
            U,
            "k1",
            "reject",
            U,
            "untrusted: declared by its manifest; runs in the sandbox",
        ),  # a signature never raises a claim
        (T, "k1", "reject", T, "trusted: signed by key k1"),
        (T, None, "downgrade", U, "untrusted (downgraded: unsigned)"),
    ],
)
def test_a_folder_is_untrusted_unless_a_valid_signature_makes_it_trusted(
    claimed: TrustLevel, signed_by: str | None, policy: str, expected: TrustLevel, reason: str
) -> None:
    decision = decide_trust_level(
        "p", TrustSource.FOLDER, claimed=claimed, signed_by=signed_by, unsigned_trusted=policy
    )
    assert (decision.level, decision.reason) == (expected, reason)


def test_a_folder_trusted_claim_without_a_signature_and_a_builtin_claim_are_refused() -> None:
    with pytest.raises(TrustViolationError, match=r"claims Trusted but bad \(x\); sign it with a trusted key"):
        decide_trust_level("p", TrustSource.FOLDER, claimed=T, signature_problem="bad (x)")
    with pytest.raises(TrustViolationError, match="claims builtin"):
        decide_trust_level("p", TrustSource.FOLDER, claimed=B, signed_by="k1")
    # A signed Trusted folder whose object says untrusted is not run in-process either.
    with pytest.raises(TrustViolationError, match="is Untrusted by its own info"):
        decide_trust_level("p", TrustSource.FOLDER, claimed=T, signed_by="k1", declared=U)
    # An Untrusted folder's object may say anything: it runs in the sandbox.
    assert decide_trust_level("p", TrustSource.FOLDER, claimed=U, declared=B).level is U


# -- the host uses it everywhere -------------------------------------------------------------------------------


def test_one_class_runs_at_the_level_the_host_names(make_host: object) -> None:
    host = make_host()  # type: ignore[operator]
    assert host.add_plugin(Recorder("as-declared", B)).trust_level is B
    assert host.add_plugin(Recorder("as-trusted", B), trust_level="trusted").trust_level is T
    assert host.add_plugin(Recorder("as-builtin", T), trust_level=B).trust_level is B
    host.start_plugins()
    assert host.get_health().active == ("as-declared", "as-trusted", "as-builtin")
    assert host.registry.get_plugin("as-trusted").trust_level is T
    host.invoke("as-trusted", "scan", 1)
    assert host.get_plugin_health("as-trusted").stats.calls == 1  # type: ignore[union-attr]  (monitored)
    with pytest.raises(TrustViolationError):
        host.get_plugin("as-trusted")  # Trusted objects are never handed out
    assert isinstance(host.get_plugin("as-builtin"), Recorder)
    with pytest.raises(TrustViolationError, match="is Untrusted by its own info"):
        host.add_plugin(Recorder("says-untrusted", U), trust_level="trusted")
    assert "says-untrusted" not in {p.plugin_id for p in host.get_health().plugins}


def test_plugins_table_trust_level_decides_for_an_object_added_in_code(tmp_path: Path) -> None:
    config_path = tmp_path / "pool.toml"
    config_path.write_text('[plugins.echo]\ntrust_level = "trusted"\n')
    with PluginHost(load_config(config_path), registry=InMemoryPluginRegistry()) as host:
        assert host.add_plugin(Recorder("echo", B)).trust_level is T


def test_plugins_table_trust_level_must_be_an_in_process_level(tmp_path: Path) -> None:
    config_path = tmp_path / "pool.toml"
    config_path.write_text('[plugins.echo]\ntrust_level = "untrusted"\n')
    with pytest.raises(ValueError, match=r"plugins.echo.trust_level = 'untrusted'.*must be 'builtin' or 'trusted'"):
        load_config(config_path)


# -- folders named in the configuration: the same rule as discovery ----------------------------------------------

TRUSTED_MODULE = """\
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Plugin(PluginBase):
    # Says builtin: a Trusted folder runs Trusted whatever its class says (unless it says untrusted).
    info = PluginInfo(id="{id}", name="{id}", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def scan(self, payload):
        return {{"by": "{id}", "seen": payload}}

    @capability
    def extra(self, payload):
        return "never routed: plugin.toml does not declare it"
"""


def trusted_folder(root: Path, plugin_id: str) -> Path:
    folder = root / plugin_id
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{plugin_id}"\nversion = "1.0.0"\ntrust_level = "trusted"\n'
        f'entry = "main:Plugin"\n\n[capabilities.scan]\n'
    )
    (folder / "main.py").write_text(TRUSTED_MODULE.format(id=plugin_id))
    return folder


def test_a_signed_folder_given_as_plugins_path_runs_trusted_and_an_unsigned_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    write_keypair(keys / "k.key", keys / "k.pub")
    signed = trusted_folder(tmp_path / "plugins", "signed")
    sign_plugin(signed, load_private_key(keys / "k.key"))
    trusted_folder(tmp_path / "plugins", "unsigned")
    config_path = tmp_path / "pool.toml"
    config_path.write_text(
        textwrap.dedent(
            f"""
            [host]
            actor = "{TEST_ACTOR}"

            [trust]
            trusted_keys = ["{keys / "k.pub"}"]

            [plugins.signed]
            path = "{signed}"

            [plugins.unsigned]
            path = "{tmp_path / "plugins" / "unsigned"}"
            """
        )
    )
    caplog.set_level(logging.WARNING, logger="plugin_pool.host")
    with PluginHost(load_config(config_path), registry=InMemoryPluginRegistry()) as host:
        assert host.add_configured_plugins() == ["signed", "unsigned"]
        host.start_plugins()
        health = host.get_plugin_health("signed")
        assert (health.state, health.trust_level, health.capabilities) == (PluginState.ACTIVE, T, ("scan",))
        assert host.invoke("signed", "scan", 5) == {"by": "signed", "seen": 5}
        assert host.sandbox is None  # in-process: no sandbox was needed
        refused = host.get_plugin_health("unsigned")
        assert refused.state is PluginState.FAILED and "claims Trusted but unsigned" in (refused.reason or "")
        assert refused.trust_level is UnknownTrust.UNKNOWN  # never decided: not the placeholder
        assert refused.to_dict()["trust_level"] == "unknown"
        [event] = host.registry.list_events(plugin_id="unsigned", event=EventKind.SIGNATURE_REJECTED)
        assert "claims Trusted but unsigned" in str(event.details["reason"])
    # The capability the code offers and plugin.toml lacks was reported when the plugin loaded.
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "capability_undeclared"]
    assert (record.pluginId, record.trustLevel, record.capability) == ("signed", "trusted", "extra")  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING and "[capabilities.extra]" in record.getMessage()


def test_add_plugin_dir_judges_a_folder_as_discovery_does(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    write_keypair(keys / "k.key", keys / "k.pub")
    signed = trusted_folder(tmp_path / "plugins", "signed")
    sign_plugin(signed, load_private_key(keys / "k.key"))
    unsigned = trusted_folder(tmp_path / "plugins", "unsigned")
    config = load_config(overrides={"trust": {"trusted_keys": [str(keys / "k.pub")]}})
    with PluginHost(config, registry=InMemoryPluginRegistry()) as host:
        assert host.add_plugin_dir(signed).trust_level is T
        with pytest.raises(TrustViolationError, match=r"plugin folder .*unsigned: claims Trusted but unsigned"):
            host.add_plugin_dir(unsigned)
        with pytest.raises(TrustViolationError, match="added without content verification runs Untrusted only"):
            host.add_plugin_dir(unsigned, verify_content=False)
        assert [p.plugin_id for p in host.get_health().plugins] == ["signed"]


def test_the_harness_runs_one_class_at_each_level_it_will_run_at() -> None:
    from plugin_pool.testing import PluginHarness

    for level in (B, T):
        with PluginHarness(Recorder("any-level", B), trust_level=level) as harness:
            assert harness.host.get_plugin_health("any-level").trust_level is level
            assert harness.invoke("scan", 3)["payload"] == 3
