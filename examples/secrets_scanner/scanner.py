"""An Untrusted example: a secrets scanner over text payloads, run in a confined sandbox worker.

It sees only its payload: no network, no files outside its folder and private temp directory, no new
processes. Results are JSON-compatible, as everything that crosses the sandbox boundary must be.
"""

from __future__ import annotations

import re
from typing import Any

from plugin_pool.sdk import SCAN, PluginBase, PluginInfo, TrustLevel, capability

_RULES = {
    "aws_access_key_id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private_key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "password_assignment": re.compile(r"(?i)\b(password|passwd|pwd)\s*[=:]\s*(\S+)"),
    "bearer_token": re.compile(r"(?i)\bbearer\s+[a-z0-9._~+/-]{20,}=*"),
    "github_token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}


class SecretsScanner(PluginBase):
    """Reports every match of its rules with the rule name and offset (never the secret itself)."""

    info = PluginInfo(
        id="secrets-scanner",
        name="Secrets scanner",
        version="1.0.0",
        trust_level=TrustLevel.UNTRUSTED,
        description="Finds credentials in text.",
        author="plugin_pool developers",
    )

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        disabled = set(self.config.get("disabled_rules", []))
        self.rules = {name: rule for name, rule in _RULES.items() if name not in disabled}
        self.logger.info("secrets-scanner ready with %d rules", len(self.rules))

    @capability(SCAN, parameters={"media_types": ["text/plain"]})
    def scan(self, text: Any) -> dict[str, Any]:
        """Return the findings in ``text``: rule name and offset of each match."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise TypeError(f"secrets-scanner scans text, got {type(text).__name__}")
        findings = [
            {"rule": name, "offset": match.start()}
            for name, rule in self.rules.items()
            for match in rule.finditer(text)
        ]
        findings.sort(key=lambda f: f["offset"])
        return {"findings": findings}
