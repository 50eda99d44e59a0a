"""The sandbox benchmark's Untrusted scan plugin: the secrets rules of examples/secrets_scanner over a text."""

from __future__ import annotations

import re
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

RULES = {
    "aws_access_key_id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private_key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "password_assignment": re.compile(r"(?i)\b(password|passwd|pwd)\s*[=:]\s*(\S+)"),
    "bearer_token": re.compile(r"(?i)\bbearer\s+[a-z0-9._~+/-]{20,}=*"),
    "github_token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}


class Scan(PluginBase):
    info = PluginInfo(id="bench-scan", name="Benchmark secrets scan", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def scan(self, text: Any) -> dict[str, Any]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        findings = [{"rule": name, "offset": m.start()} for name, rule in RULES.items() for m in rule.finditer(text)]
        findings.sort(key=lambda f: f["offset"])
        return {"findings": findings}
