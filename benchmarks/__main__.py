"""``python -m benchmarks [--quick] [--write-docs]``: run the suite and print the table.

Quick mode (under 2 minutes on 2 cores) exits 1 only when a ratio against the same-run
baseline passes its gate (``Figure.gate``); absolute times never fail it.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path

from benchmarks._common import Figure, machine, raise_fd_limit

MODULES = ("polls", "cpu", "callbacks", "memory", "scale")
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(figures: list[Figure]) -> str:
    lines = [
        "| Figure | Measured | Target | Met | Baseline (raw aiohttp) | Ratio | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        baseline = f"{_fmt(f.baseline)} {f.unit}" if f.baseline is not None else "-"
        lines.append(
            f"| {f.name} | {_fmt(f.value)} {f.unit} | {f.target} | {met} | {baseline} | "
            f"{_fmt(f.ratio)} | {f.note} |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller N, under 2 min; gates ratios")
    parser.add_argument("--only", action="append", choices=MODULES, help="run only these")
    parser.add_argument(
        "--write-docs", action="store_true", help="put the table in docs/performance.md"
    )
    args = parser.parse_args(argv)
    raise_fd_limit()
    started = time.perf_counter()
    figures: list[Figure] = []
    for name in args.only or MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        figures.extend(module.run(args.quick))
        print(f"   {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    info = machine()
    mode = "quick" if args.quick else "full"
    took = time.perf_counter() - started
    text = (
        f"Run: `python -m benchmarks{' --quick' if args.quick else ''}` ({mode}, {took:.0f} s); "
        f"{info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"aiohttp {info['aiohttp']}, {info['os']}.\n\n{table(figures)}"
    )
    print(text)
    if args.write_docs:
        write_docs(text)
    regressions = [f for f in figures if args.quick and f.regressed]
    for f in regressions:
        print(f"REGRESSION: {f.name}: ratio {f.ratio:.2f} > gate {f.gate}", file=sys.stderr)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
