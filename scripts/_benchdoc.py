"""What the benchmark scripts share: the sections of docs/benchmarks.md, the command line, the formatting.

docs/benchmarks.md is made of sections between markers (``<!-- sandbox:begin -->`` ... ``<!-- sandbox:end -->``),
one per script. ``scripts/bench.py --write`` measures them all in one run and writes the whole file
(:func:`write_doc`); a script run alone with ``--write`` replaces only its own section (:func:`write_section`)
and leaves the others as they were, so the scripts can run in any order.

A script exposes ``parse_args(argv)`` and ``section(args, command) -> Section``; its ``__main__`` is
``run_alone(...)``, and ``bench.py`` calls the same two functions, so each measurement has one code path.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTIONS = ("summary", "inprocess", "sandbox", "isolation", "aio", "discovery", "registry")
"""The sections of docs/benchmarks.md, in the order bench.py writes them."""
INTRO = (
    "# Benchmarks\n\n"
    "Every figure here is printed by a script in `scripts/`, with its baseline measured in the same run.\n"
    "The machine is a shared 2-core VM: absolute numbers move between runs, ratios much less.\n"
    "`python scripts/bench.py --write` measures every section in one run and rewrites this whole file;\n"
    "the script named in a section rewrites only that section (with `--write`).\n"
)
_HIDDEN_OPTIONS = ("--doc", "--dsn")
"""Options left out of the command printed in the doc: where the output went, and a DSN (it may hold a password)."""


@dataclass(frozen=True)
class Target:
    """One target of a section: what was measured, the target, and whether the run met it."""

    what: str
    measured: str
    target: str
    met: bool


@dataclass(frozen=True)
class Section:
    """One section of docs/benchmarks.md: its marker name, its Markdown body, the targets it checked.

    ``measured`` is False when the section could not be measured (its body says why).
    """

    name: str
    body: str
    targets: tuple[Target, ...] = ()
    measured: bool = True

    @property
    def missed(self) -> list[Target]:
        return [t for t in self.targets if not t.met]


def make_section(
    name: str, title: str, command: str, header: str, *parts: str, targets: Sequence[Target] = ()
) -> Section:
    """A measured section: its title, its "Command:" line, its "Measured ..." header, then tables and prose."""
    return Section(name, "\n\n".join([f"## {title}", command, header, *parts]), tuple(targets))


# -- the document ------------------------------------------------------------------------------------------


def _block(name: str, body: str) -> str:
    return f"<!-- {name}:begin -->\n{body.strip()}\n<!-- {name}:end -->"


def write_section(doc: Path, name: str, body: str) -> None:
    """Put ``body`` (Markdown, without markers) into the ``name`` section of ``doc``. Blocks on one file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else INTRO
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        text = text[:start] + _block(name, body) + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + _block(name, body) + "\n"
    doc.write_text(text, encoding="utf-8")


def write_doc(doc: Path, sections: Sequence[Section]) -> None:
    """Write the whole of ``doc``: the introduction, then ``sections`` in the order of SECTIONS."""
    order = {name: i for i, name in enumerate(SECTIONS)}
    ordered = sorted(sections, key=lambda s: order.get(s.name, len(order)))
    doc.write_text(INTRO + "".join(f"\n{_block(s.name, s.body)}\n" for s in ordered), encoding="utf-8")


# -- the command line --------------------------------------------------------------------------------------


def new_parser(doc_string: str | None, section: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script has: --quick, --write, --doc, --strict.

    ``section``: the section --write replaces, or "" for all of them (bench.py).
    """
    parser = argparse.ArgumentParser(
        description=(doc_string or "").strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer repeats and calls)")
    what = f"replace the {section} section of" if section else "rewrite the whole of"
    parser.add_argument("--write", action="store_true", help=f"{what} docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the file --write updates (default docs/benchmarks.md)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def command(script: str, argv: Sequence[str]) -> str:
    """The command that repeats a run: ``python scripts/<script>`` with ``argv`` less --write, --doc and --dsn."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _HIDDEN_OPTIONS:
            skip = True
        elif arg != "--write" and not arg.startswith(tuple(f"{o}=" for o in _HIDDEN_OPTIONS)):
            kept.append(arg)
    return " ".join(["python", f"scripts/{script}", *kept])


def command_line(own: str, run_by: str | None = None) -> str:
    """The "Command:" line of a section: the script alone, and the whole run when bench.py produced it."""
    if run_by is None:
        return f"Command: `{own}`"
    return f"Command: `{run_by}` (this section alone: `{own}`)"


def run_alone(
    script: str,
    parse_args: Callable[[Sequence[str]], argparse.Namespace],
    section: Callable[[argparse.Namespace, str], Section],
    argv: Sequence[str] | None = None,
) -> int:
    """``main`` of a benchmark script: measure its section, print it, with --write replace it in the doc.

    Exits 1 when nothing could be measured (the doc is left alone) or, with --strict, when a target is missed.
    """
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result = section(args, command_line(command(script, argv)))
    if not result.measured:
        print(result.body, file=sys.stderr)
        return 1
    print(result.body)
    if args.write:
        write_section(args.doc, result.name, result.body)
        print(f"\nwrote the {result.name} section of {args.doc}", file=sys.stderr)
    return 1 if args.strict and result.missed else 0


# -- formatting and statistics ------------------------------------------------------------------------------


def measured_on(*details: str) -> str:
    """``Measured <UTC time> on <host> (<machine>, Python <version>, <details>)``: the start of a section's header."""
    about = ", ".join([platform.machine(), f"Python {platform.python_version()}", *details])
    return f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'} ({about})"


def fmt_s(seconds: float) -> str:
    """A duration with a unit that fits it: ``37 ns``, ``11.5 µs``, ``285 µs``, ``22.4 ms``, ``1.06 s``."""
    if math.isnan(seconds):
        return "n/a"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            value = seconds / scale
            if unit == "s":
                return f"{value:,.2f} s"
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{seconds * 1e9:,.0f} ns"


def fmt_ratio(ratio: float) -> str:
    """``2.54x``; a ratio below 0.1 as a fraction (``1/2,900x``), so it keeps its digits."""
    if math.isnan(ratio):
        return "n/a"
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 0.1:
        return f"{ratio:.2f}x"
    return f"1/{1 / ratio:,.0f}x"


def mark(met: bool) -> str:
    """The "met?" cell of a table."""
    return "yes" if met else "**NO**"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of values sorted ascending (nearest rank, no interpolation)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
