"""A plugin author's commands: ``plugin-pool new`` (a plugin folder that passes its own test) and
``plugin-pool vendor`` (its dependencies installed inside it). Kept apart from cli.py, which parses arguments
and dispatches here.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

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
