"""HelloWorld: the seed's sample plugin, written with the plugin_pool SDK.

It greets (a custom capability) and scans text (the well-known ``scan`` capability), counting words and
lines. Its greeting comes from its configuration, and it logs through the logger the host binds to it.
"""

from __future__ import annotations

from typing import Any

from plugin_pool.sdk import SCAN, PluginBase, PluginInfo, TrustLevel, capability


class HelloWorld(PluginBase):
    """Greets, and counts words and lines in text payloads."""

    info = PluginInfo(
        id="hello-world",
        name="Hello World",
        version="1.0.0",
        trust_level=TrustLevel.BUILTIN,
        description="The sample plugin: greets and counts words.",
        author="plugin_pool developers",
    )

    greeting = "Hello"

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.greeting = str(self.config.get("greeting", "Hello"))
        self.logger.info("hello-world initialized with greeting %r", self.greeting)

    @capability
    def greet(self, name: Any) -> str:
        """Return a greeting for ``name``."""
        return f"{self.greeting}, {name or 'world'}!"

    @capability(SCAN, parameters={"media_types": ["text/plain"]})
    def count_words(self, text: Any) -> dict[str, int]:
        """Count the words and lines of a text payload."""
        if not isinstance(text, str):
            raise TypeError(f"hello-world scans text, got {type(text).__name__}")
        return {"words": len(text.split()), "lines": text.count("\n") + 1 if text else 0}
