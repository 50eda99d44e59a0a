"""bandit as an Untrusted plugin: ``scan(source)`` returns bandit's findings for one Python source text.

bandit is imported from the plugin's own ``_vendor`` folder (``[python] path`` in plugin.toml), inside the
sandbox worker: the host never imports it. bandit reads files, so each call writes the source to the
worker's private /tmp (a tmpfs of its own) and runs bandit's manager on that file, exactly as the
``bandit`` command does.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


def findings(path: str) -> list[dict[str, Any]]:
    """bandit's issues for the file ``path``, as plain data in a stable order (also used by the test that
    compares the plugin with bandit called directly)."""
    from bandit.core import config, manager

    bandit = manager.BanditManager(config.BanditConfig(), "file", quiet=True)
    bandit.discover_files([path])
    bandit.run_tests()
    issues = [
        {
            "test_id": issue.test_id,
            "test_name": issue.test,
            "severity": issue.severity,
            "confidence": issue.confidence,
            "cwe": issue.cwe.id if issue.cwe is not None else None,
            "line": issue.lineno,
            "text": issue.text,
        }
        for issue in bandit.get_issue_list()
    ]
    return sorted(issues, key=lambda i: (i["line"], i["test_id"], i["text"]))


class BanditScanner(PluginBase):
    info = PluginInfo(
        id="bandit-scanner",
        name="Bandit security linter",
        version="1.9.4",
        trust_level=TrustLevel.UNTRUSTED,
        description="Finds common security issues in Python source with bandit.",
    )

    def start(self) -> None:
        import bandit  # at start, so a missing vendored tree fails the plugin, not its first call

        self.logger.info("bandit %s loaded from %s", bandit.__version__, os.path.dirname(bandit.__file__))

    @capability("scan", parameters={"media_types": ["text/x-python"]})
    def scan(self, source: str) -> dict[str, Any]:
        if not isinstance(source, str):
            raise TypeError("scan expects Python source text")
        with tempfile.NamedTemporaryFile("w", suffix=".py", encoding="utf-8") as fh:
            fh.write(source)
            fh.flush()
            return {"findings": findings(fh.name)}

    @capability("where")
    def where(self, payload: Any = None) -> dict[str, str]:
        """Where bandit was imported from and its version (the tests check it is the vendored copy)."""
        import bandit

        return {"file": bandit.__file__, "version": bandit.__version__}
