"""Resolving an entry to a plugin object: the one helper for every place that loads plugin code.

Used by configured entries (``[plugins.<id>] entry``), entry points, signed Trusted folders (imported as a
private package) and the sandbox worker (which imports an Untrusted plugin *inside* its confinement). It
imports only the standard library, so the worker may import it: setup.cfg allows exactly this module of
the host side in the worker's contract, and a second contract keeps it free of everything else.

The host itself never calls it for Untrusted code: only the worker does, after confining itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

__all__ = ["instantiate", "load_entry", "load_entry_point", "resolve_entry"]


def resolve_entry(entry: str, *, package: str | None = None, files: bool = True) -> Any:
    """Import the target of ``entry`` and return the attribute it names. Blocks while importing.

    ``entry`` is ``module.path:attribute.path`` or, with ``files``, ``path/file.py:attribute`` (a file is
    imported once under a name derived from its resolved path). With ``package``, the module is imported as
    ``<package>.<module>`` (a Trusted folder's private package); ``files=False`` (the worker: a manifest's
    entry is always a module) never reads a path. Raises ImportError or AttributeError naming the entry;
    whatever the module raises while importing propagates unchanged.
    """
    target, sep, attr = entry.rpartition(":")
    if not sep or not target or not attr:
        raise ImportError(f"entry {entry!r} is invalid: expected 'module:attribute' or 'file.py:attribute'")
    if files and package is None and target.endswith(".py"):
        module = _import_file(entry, Path(target))
    else:
        module = importlib.import_module(f"{package}.{target}" if package else target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"entry {entry!r}: {target} has no attribute {attr!r}") from None
    return obj


def instantiate(obj: Any) -> Any:
    """The plugin an entry's object stands for: an instance of it when it is a class, else the object itself."""
    return obj() if isinstance(obj, type) else obj


def load_entry(entry: str, *, package: str | None = None, files: bool = True) -> Any:
    """Resolve ``entry`` (see :func:`resolve_entry`) and instantiate it. Blocks while importing; each call
    makes a new instance of a class entry (the module is imported once)."""
    return instantiate(resolve_entry(entry, package=package, files=files))


def load_entry_point(entry_point: EntryPoint) -> Any:
    """Load an installed distribution's entry point through the same resolution as :func:`load_entry`.

    ``module:attribute`` entry points resolve like configured entries; one naming a bare module gives the
    module. Blocks while importing.
    """
    if entry_point.attr:
        return load_entry(f"{entry_point.module}:{entry_point.attr}")
    return importlib.import_module(entry_point.module)


def _import_file(entry: str, path: Path) -> Any:
    if not path.is_file():
        raise ImportError(f"entry {entry!r}: file {path} does not exist")
    name = "plugin_pool_entry_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    module = sys.modules.get(name)
    if module is not None:
        return module
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
    return module
