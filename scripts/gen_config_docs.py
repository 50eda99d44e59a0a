#!/usr/bin/env python3
"""Generate docs/CONFIGURATION.md from the settings in plugin_pool.config (one source, like gunicorn's
``scripts/build_settings_doc.py``).

    .venv/bin/python scripts/gen_config_docs.py            # rewrite docs/CONFIGURATION.md
    .venv/bin/python scripts/gen_config_docs.py --check    # exit 1 if the committed file is stale

The text is ``plugin_pool.cli.format_settings_doc()``, the same that ``plugin-pool config settings`` prints;
tests/unit/test_config_docs.py runs the check, so a setting added without regenerating the docs fails CI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from plugin_pool.cli import format_settings_doc

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md"


def main(argv: Sequence[str] | None = None, *, doc: Path = DOC) -> int:
    """Write ``doc`` (0), or with ``--check`` compare it: 0 when up to date, 1 when stale or missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    text = format_settings_doc()
    if args.check:
        current = doc.read_text(encoding="utf-8") if doc.exists() else None
        if current != text:
            state = "missing" if current is None else "stale"
            print(f"{doc} is {state}; run scripts/gen_config_docs.py to regenerate it", file=sys.stderr)
            return 1
        print(f"{doc}: up to date")
        return 0
    doc.write_text(text, encoding="utf-8")
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
