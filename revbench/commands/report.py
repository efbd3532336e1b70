"""`revbench report DIR`: tables (Markdown, CSV), PNG plots and the paper comparison from a results directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from revbench.commands.args import directory


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write the report (tables, plots, paper comparison) of a results dir",
                            description="Derive every table and plot from the records in DIR/results.jsonl.")
    parser.add_argument("results", type=Path, metavar="DIR", help="a results directory (holding results.jsonl)")
    parser.add_argument("--out", type=directory, default=None, help="report directory (default reports/<DIR name>/)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="add the 'at paper scale' section: fake-tensor estimates of every method on "
                        "Qwen1.5-MoE-A2.7B and what fits on 80 GB and 141 GB GPUs (minutes the first time, "
                        "then cached)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from revbench.reports.render import add_section, render_report

    if args.paper_scale:
        from revbench.reports.paper_scale import at_paper_scale

        add_section(at_paper_scale, after="paper_comparison")
    print(f"report: {render_report(args.results, args.out)}")
    return 0
