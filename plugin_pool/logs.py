"""JSON logging for applications and the CLI. The library never configures logging on import.

Records carry the seed's fields when the host knows them: ``pluginId``, ``trustLevel``,
``lifecycleState``, ``capability``, plus ``event``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_json_logging"]

_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_json_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Send plugin_pool's log records to ``stream`` (default stderr) as one JSON object per line.

    Attaches one handler to the ``plugin_pool`` logger and returns it; calling again replaces the handler
    it attached before, so it is safe to call twice.
    """
    logger = logging.getLogger("plugin_pool")
    for handler in list(logger.handlers):
        if getattr(handler, "_plugin_pool_json", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(_FIELDS, rename_fields={"levelname": "level", "name": "logger"}, timestamp=False)
    )
    handler._plugin_pool_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
