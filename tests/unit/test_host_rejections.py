"""What discovery refuses reaches the host's health, audit trail and metrics, and never stops the scan: folders
without a valid id, content the rule refuses, duplicates (their own event, the running plugin left alone),
and a copy the host cannot write (a StagingError: the plugin fails, nothing is audited as integrity).

No processes: Untrusted folders are only discovered here (never started), Trusted ones run in-process."""

from __future__ import annotations

import json
import os
import resource
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from _plugins import TEST_ACTOR

from plugin_pool import PluginHost, load_config
from plugin_pool.discovery import ErrorKind
from plugin_pool.errors import REJECTION_KINDS
from plugin_pool.integrity import load_private_key, sign_plugin, write_keypair
from plugin_pool.lifecycle import PluginState
from plugin_pool.metrics import DISCOVERY_REJECTION_KINDS, INTEGRITY_KINDS
from plugin_pool.model import TrustLevel
from plugin_pool.registry import EventKind, InMemoryPluginRegistry
from plugin_pool.trust import UnknownTrust

MANIFEST = """\
[plugin]
id = "{id}"
name = "{id}"
version = "1.0.0"
trust_level = "{trust}"
entry = "main:Plugin"

[capabilities.scan]
"""

MODULE = """\
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Plugin(PluginBase):
    info = PluginInfo(id="{id}", name="{id}", version="1.0.0", trust_level=TrustLevel.TRUSTED)

    @capability
    def scan(self, payload):
        return payload
"""


def make_folder(root: Path, name: str, *, plugin_id: str | None = None, trust: str = "untrusted") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(MANIFEST.format(id=plugin_id or name, trust=trust))
    (folder / "main.py").write_text(MODULE.format(id=plugin_id or name))
    return folder


def sample(host: PluginHost, name: str, **labels: str) -> float | None:
    return host.metrics_registry.get_sample_value(name, labels)


@pytest.fixture
def hosts() -> Iterator[list[PluginHost]]:
    made: list[PluginHost] = []
    yield made
    for host in made:
        host.close()


def open_host(hosts: list[PluginHost], paths: list[Path], **sections: dict[str, object]) -> PluginHost:
    overrides = {
        "host": {"actor": TEST_ACTOR},
        "discovery": {"paths": [str(p) for p in paths], "use_entry_points": False},
        **sections,
    }
    host = PluginHost(load_config(overrides=overrides), registry=InMemoryPluginRegistry()).open()
    hosts.append(host)
    return host


def test_the_metric_kinds_are_the_error_kinds() -> None:
    assert ("hash_mismatch", "signature", *REJECTION_KINDS) == INTEGRITY_KINDS
    assert typing.get_args(ErrorKind) == DISCOVERY_REJECTION_KINDS


def test_health_lists_every_refused_folder_and_duplicate_and_the_scan_goes_on(
    tmp_path: Path, hosts: list[PluginHost]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    make_folder(first, "good")
    make_folder(first, "Bad Id", plugin_id="bad/id")  # no valid id anywhere: named by its folder
    (make_folder(first, "nonutf") / "plugin.toml").write_bytes(b'[plugin]\nid = "nonutf"\nname = "\xff"\n')
    (make_folder(first, "linked") / "data.txt").symlink_to("/etc/passwd")
    make_folder(second, "good")  # a duplicate of first/good
    host = open_host(hosts, [first, second])
    result = host.discover()
    assert result.ids == ("good",)

    health = host.get_health()
    by_source = {r.source: r for r in health.rejected}
    assert set(by_source) == {str(first / n) for n in ("Bad Id", "nonutf", "linked")} | {str(second / "good")}
    bad_id, nonutf = by_source[str(first / "Bad Id")], by_source[str(first / "nonutf")]
    linked, duplicate = by_source[str(first / "linked")], by_source[str(second / "good")]
    assert (bad_id.plugin_id, bad_id.kind) == (None, "manifest") and "bad/id" in bad_id.reason
    assert (nonutf.plugin_id, nonutf.kind) == ("nonutf", "manifest") and "UTF-8" in nonutf.reason
    assert (linked.plugin_id, linked.kind) == ("linked", "symlink") and "data.txt" in linked.reason
    assert (duplicate.plugin_id, duplicate.kind, duplicate.duplicate_of) == ("good", "duplicate", str(first / "good"))
    assert health.duplicates == (duplicate,)
    json.dumps(health.to_dict())  # JSON-compatible, whatever the folders held
    assert health.to_dict()["rejected"][0].keys() == {"source", "kind", "reason", "plugin_id", "duplicate_of"}

    # The one with a valid free id is a Failed plugin too; its level was never decided: "unknown".
    assert host.get_plugin_health("good").state is PluginState.DISCOVERED  # the scan went on
    assert host.get_plugin_health("nonutf").trust_level is UnknownTrust.UNKNOWN
    assert host.get_plugin_health("linked").trust_level is TrustLevel.UNTRUSTED  # its manifest says so
    assert set(health.failed) == {"nonutf", "linked"}

    # Audited once each: integrity_rejected with the details, a no-id refusal without a plugin id,
    # the duplicate under its own event (naming both folders), nothing in the running plugin's history.
    [rejected] = host.registry.list_events(event=EventKind.INTEGRITY_REJECTED)
    assert rejected.plugin_id == "linked" and rejected.state is PluginState.FAILED
    assert {k: rejected.details[k] for k in ("kind", "file", "folder")} == {
        "kind": "symlink",
        "file": "data.txt",
        "folder": str(first / "linked"),
    }
    assert "symbolic link" in str(rejected.details["reason"]) and rejected.details["fix"]
    no_id = [e for e in host.registry.list_events(event=EventKind.FAILED) if e.plugin_id is None]
    assert [e.details["source"] for e in no_id] == [str(first / "Bad Id")]
    [dup] = host.registry.list_events(event=EventKind.DUPLICATE_REJECTED)
    assert (dup.plugin_id, dup.details["plugin_id"], dup.details["source"], dup.details["first_source"]) == (
        None,
        "good",
        str(second / "good"),
        str(first / "good"),
    )
    assert [e.event for e in host.registry.list_events(plugin_id="good")] == [EventKind.REGISTERED]

    # Counted: by why discovery refused, and content kinds by plugin.
    assert sample(host, "plugin_discovery_rejections_total", kind="manifest") == 2.0
    assert sample(host, "plugin_discovery_rejections_total", kind="integrity") == 1.0
    assert sample(host, "plugin_discovery_rejections_total", kind="duplicate") == 1.0
    assert sample(host, "plugin_integrity_rejections_total", plugin_id="linked", kind="symlink") == 1.0

    # A rescan reports the same refusals without auditing or counting them again; a fixed folder leaves the list.
    (first / "linked" / "data.txt").unlink()
    host.rescan()
    assert {r.source for r in host.get_health().rejected} == {
        str(first / "Bad Id"),
        str(first / "nonutf"),
        str(second / "good"),
    }
    assert len(host.registry.list_events(event=EventKind.DUPLICATE_REJECTED)) == 1
    assert sample(host, "plugin_discovery_rejections_total", kind="manifest") == 2.0


def test_a_crafted_folder_name_cannot_forge_health_or_audit_text(tmp_path: Path, hosts: list[PluginHost]) -> None:
    root = tmp_path / "plugins"
    make_folder(root, "evil\nFAKE LINE\x1b[31m", plugin_id="Not Valid")
    host = open_host(hosts, [root])
    host.discover()
    [rejected] = host.get_health().rejected
    assert "\n" not in rejected.source and "\x1b" not in rejected.source and "\\n" in rejected.source
    [event] = [e for e in host.registry.list_events() if e.plugin_id is None]
    assert "\n" not in str(event.details["source"]) and "\\x1b" in str(event.details["source"])


def test_a_copy_the_host_cannot_write_fails_that_plugin_without_an_integrity_audit(
    tmp_path: Path, hosts: list[PluginHost]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    write_keypair(keys / "k.key", keys / "k.pub")
    root = tmp_path / "plugins"
    big, fine = make_folder(root, "big", trust="trusted"), make_folder(root, "fine", trust="trusted")
    (big / "data.bin").write_bytes(os.urandom(2 << 20))
    for folder in (big, fine):
        sign_plugin(folder, load_private_key(keys / "k.key"))
    host = open_host(hosts, [root], trust={"trusted_keys": [str(keys / "k.pub")]})
    host.discover()
    # RLIMIT_FSIZE of 1 MiB in this process while the plugins start: the 2 MiB write of the private copy
    # fails with EFBIG (Python ignores SIGXFSZ), as a full disk would. Restored at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        host.start_plugins()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert host.get_health().active == ("fine",)
    reason = host.get_plugin_health("big").reason or ""
    assert reason.startswith(f"loading failed: plugin folder {big}: cannot write the private copy of data.bin")
    assert "check the free space and permissions of the host's private directory" in reason
    kinds = {e.event for e in host.registry.list_events(plugin_id="big")}
    assert EventKind.FAILED in kinds and not kinds & {EventKind.INTEGRITY_REJECTED, EventKind.HASH_MISMATCH}
    assert sample(host, "plugin_failures_total", plugin_id="big") == 1.0
    for kind in INTEGRITY_KINDS:
        assert sample(host, "plugin_integrity_rejections_total", plugin_id="big", kind=kind) is None
