"""docs/benchmarks.md is written by several scripts, each owning one section between markers.

``write_section(doc, "sandbox", text)`` replaces the text between ``<!-- sandbox:begin -->`` and
``<!-- sandbox:end -->`` (appending the section when it is not there yet) and leaves every other section
as it was, so the scripts can run in any order.
"""

from __future__ import annotations

from pathlib import Path

INTRO = (
    "# Benchmarks\n\n"
    "Every figure here is printed by a script in `scripts/`, with its baseline measured in the same run.\n"
    "The machine is a shared 2-core VM: absolute numbers move between runs, ratios much less.\n"
    "Each section belongs to one script and is rewritten by its `--write`.\n"
)


def write_section(doc: Path, name: str, body: str) -> None:
    """Put ``body`` (Markdown, without markers) into the ``name`` section of ``doc``. Blocks on one file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else INTRO
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        text = text[:start] + section + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
