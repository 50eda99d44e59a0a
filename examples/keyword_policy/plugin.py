"""A Trusted example: a policy plugin that flags forbidden keywords in text, through the monitoring wrapper."""

from __future__ import annotations

import re
from typing import Any

from plugin_pool.sdk import EVALUATE_POLICY, SCAN, PluginBase, PluginInfo, TrustLevel, capability


class KeywordPolicy(PluginBase):
    """Finds configured keywords in text (``scan``) and decides allow/deny (``evaluate_policy``)."""

    info = PluginInfo(
        id="keyword-policy",
        name="Keyword policy",
        version="1.2.0",
        trust_level=TrustLevel.TRUSTED,
        description="Flags texts that contain forbidden keywords.",
        author="plugin_pool developers",
    )

    _pattern: re.Pattern[str] = re.compile(r"(?!x)x")

    async def initialize(self, context: Any) -> None:  # async lifecycle methods work too
        super().initialize(context)
        words = [str(w) for w in self.config.get("keywords", ["password", "secret", "confidential"])]
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)

    @capability(SCAN, parameters={"media_types": ["text/plain"]})
    def find_keywords(self, text: Any) -> dict[str, Any]:
        """Return the forbidden keywords found in ``text`` with their offsets."""
        if not isinstance(text, str):
            raise TypeError(f"keyword-policy scans text, got {type(text).__name__}")
        hits = [{"keyword": m.group(1).lower(), "offset": m.start()} for m in self._pattern.finditer(text)]
        return {"findings": hits}

    @capability(EVALUATE_POLICY)
    def evaluate(self, text: Any) -> dict[str, Any]:
        """Deny a text that contains any forbidden keyword."""
        findings = self.find_keywords(text)["findings"]
        return {"decision": "deny" if findings else "allow", "reasons": sorted({f["keyword"] for f in findings})}
