"""Loading an in-process plugin from an entry string: ``package.module:attribute`` or ``path/file.py:attribute``.

Only BuiltIn and Trusted plugins are ever loaded this way: the host never imports Untrusted code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["load_entry"]


def load_entry(entry: str) -> Any:
    """Import the target of ``entry`` and return the attribute; instantiate it if it is a class.

    Blocks while importing. Raises ImportError or AttributeError with the entry in the message.
    """
    target, sep, attr = entry.rpartition(":")
    if not sep or not target or not attr:
        raise ImportError(f"entry {entry!r} is invalid: expected 'module:attribute' or 'file.py:attribute'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ImportError(f"entry {entry!r}: file {path} does not exist")
        name = "plugin_pool_entry_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"entry {entry!r}: cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        module = importlib.import_module(target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"entry {entry!r}: {target} has no attribute {attr!r}") from None
    return obj() if isinstance(obj, type) else obj
