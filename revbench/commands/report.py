"""`revbench report DIR`: tables (Markdown, CSV), PNG plots and the paper comparison from a results directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from revbench.commands.args import directory


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write the report (tables, plots, paper comparison) of a results dir",
                            description="Derive every table and plot from the records in DIR/results.jsonl.")
    parser.add_argument("results", type=Path, metavar="DIR", nargs="?",
                        help="a results directory (holding results.jsonl); none with --paper-scale writes that "
                        "section alone, to reports/paper-scale/ (or --out)")
    parser.add_argument("--out", type=directory, default=None, help="report directory (default reports/<DIR name>/)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="add the 'at paper scale' section: estimated peak device memory of the main "
                        "compositions on Qwen1.5-MoE-A2.7B against tokens per step, what fits one 80 GB GPU, and "
                        "RevFFN's ratio to checkpointing (minutes the first time, then cached)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from revbench.reports.render import add_section, render_report

    if args.results is None:
        if not args.paper_scale:
            raise ValueError("give a results directory (DIR), or --paper-scale for that section alone")
        from revbench.reports.paper_scale import write_paper_scale

        out = args.out or Path("reports") / "paper-scale"
        print(f"report: {write_paper_scale(out, progress=lambda m: print(m, flush=True))}")
        return 0
    if args.paper_scale:
        from revbench.reports.paper_scale import at_paper_scale

        add_section(at_paper_scale, after="paper_comparison")
    print(f"report: {render_report(args.results, args.out)}")
    return 0
