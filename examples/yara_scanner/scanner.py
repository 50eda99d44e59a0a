"""yara-python as an Untrusted plugin: ``scan(data)`` returns which rules of ``rules.yar`` match.

yara is a C extension loaded from the plugin's own ``_vendor`` folder, with the shared library its wheel
bundles (``yara_python.libs``, found through the extension's rpath): both come from the host's verified copy,
bound read-only into the worker's private root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

RULES = Path(__file__).with_name("rules.yar")


def matches(rules: Any, data: bytes) -> list[dict[str, Any]]:
    """The matches of compiled ``rules`` on ``data`` as plain data, in a stable order (the test compares the
    plugin with yara called directly through this same shape)."""
    found = []
    for match in rules.match(data=data):
        offsets = sorted(
            (instance.offset, string.identifier, bytes(instance.matched_data).hex())
            for string in match.strings
            for instance in string.instances
        )
        found.append({"rule": match.rule, "strings": [list(o) for o in offsets]})
    return sorted(found, key=lambda m: m["rule"])


class YaraScanner(PluginBase):
    info = PluginInfo(
        id="yara-scanner",
        name="YARA rule scanner",
        version="4.5.4",
        trust_level=TrustLevel.UNTRUSTED,
        description="Matches YARA rules against text or bytes.",
    )

    def start(self) -> None:
        import yara

        self.rules = yara.compile(filepath=str(RULES))

    @capability("scan", parameters={"media_types": ["application/octet-stream", "text/plain"]})
    def scan(self, data: bytes | str) -> dict[str, Any]:
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return {"matches": matches(self.rules, payload)}

    @capability("where")
    def where(self, payload: Any = None) -> dict[str, str]:
        """Where yara was loaded from and its version (the tests check it is the vendored copy)."""
        import yara

        return {"file": str(yara.__file__), "version": str(yara.__version__)}
