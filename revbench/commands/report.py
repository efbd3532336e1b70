"""`revbench report DIR`: tables (Markdown, CSV), PNG plots and the paper comparison from a results directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write the report (tables, plots, paper comparison) of a results dir",
                            description="Derive every table and plot from the records in DIR/results.jsonl.")
    parser.add_argument("results", type=Path, metavar="DIR", help="a results directory (holding results.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default reports/<DIR name>/)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from revbench.reports.render import render_report

    print(f"report: {render_report(args.results, args.out)}")
    return 0
