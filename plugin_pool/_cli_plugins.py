"""A plugin author's commands: ``plugin-pool new`` (a plugin folder that passes its own test) and
``plugin-pool vendor`` (its dependencies installed inside it). Kept apart from cli.py, which parses arguments
and dispatches here.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from plugin_pool._scaffold import TRUST_CHOICES, new_plugin
from plugin_pool._vendor import vendor_plugin
from plugin_pool.config import load_config
from plugin_pool.content import FolderLimits

__all__ = ["add_plugin_commands"]


def add_plugin_commands(sub: Any) -> None:
    """Add ``vendor`` (and ``new``) to the ``plugin-pool`` subcommands."""
    vendor = sub.add_parser(
        "vendor",
        help="install a plugin's [python] requirements into its own folder (pip --target, hashes required, "
        "wheels only)",
    )
    vendor.add_argument("dir", help="the plugin folder (its plugin.toml has [python] path and requirements)")
    vendor.add_argument(
        "--no-require-hashes",
        action="store_true",
        help="accept requirements not pinned with --hash (files on the index can then change under you)",
    )
    vendor.add_argument(
        "--allow-source",
        action="store_true",
        help="let pip build from source distributions (runs their build code on this machine)",
    )
    vendor.add_argument("--force", action="store_true", help="install again even when the stamp says up to date")
    vendor.add_argument(
        "--config", metavar="FILE", help="read the folder limits ([discovery] max_plugin_bytes ...) from FILE"
    )
    vendor.set_defaults(func=_cmd_vendor)

    new = sub.add_parser("new", help="write a new plugin folder (manifest, code, a test that passes at once, README)")
    new.add_argument("name", help="the plugin id, e.g. word-counter (the folder is word_counter)")
    new.add_argument(
        "--trust",
        choices=TRUST_CHOICES,
        default="trusted",
        help="trusted (in-process once signed; tested in-process) or untrusted (sandbox workers; tested through "
        "the real sandbox)",
    )
    new.add_argument("--dir", default=".", metavar="PARENT", help="where to create the folder (default: here)")
    new.set_defaults(func=_cmd_new)


def _cmd_new(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    folder = new_plugin(args.name, args.dir, trust=args.trust)
    shown = os.path.relpath(folder)
    out.write(
        f"created {shown}/ ({args.trust}): plugin.toml, {folder.name}.py, test_{folder.name}.py, README.md\n"
        f"test it: python -m pytest {shown}\n"
    )
    return 0


def _cmd_vendor(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    limits = FolderLimits.from_config(load_config(args.config, env=os.environ).discovery) if args.config else None
    result = vendor_plugin(
        args.dir,
        require_hashes=not args.no_require_hashes,
        only_binary=not args.allow_source,
        force=args.force,
        limits=limits,
    )
    where = os.path.relpath(result.target)
    if not result.installed:
        out.write(f"{where}: up to date ({len(result.distributions)} distributions, {result.files} files)\n")
    else:
        out.write(
            f"vendored {len(result.distributions)} distributions into {where}: {result.files} files, "
            f"{result.size_bytes / 1048576:.1f} MiB\n"
        )
        for name in result.distributions:
            out.write(f"  {name}\n")
    out.write(
        f"content hash {result.content_digest}\n"
        f"a signed folder must be signed again (plugin-pool sign {args.dir} --key ...)\n"
    )
    return 0
