"""`revbench run [SUITE|FILE]`: run a suite (default: smoke), one process per run, then write its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from revbench.records import STATUSES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run", help="run a benchmark suite (default: smoke) and write its records and report",
        description="Run every run of a suite in its own process, append one record per run to "
        "<out>/results.jsonl (resuming: runs already recorded there are skipped), then write the report.")
    parser.add_argument("suite", nargs="?", default=None,
                        help="a shipped suite (smoke, paper, scaling, budget) or a suite YAML file; default smoke")
    parser.add_argument("--methods", default=None, help="comma-separated methods, replacing the suite's list")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite field by its dotted key, e.g. --set workload.seq=64 "
                        "--set model.layers=2 (repeatable; a swept key is then fixed)")
    parser.add_argument("--device", default=None, help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default results/<suite>/)")
    parser.add_argument("--report-dir", type=Path, default=None, help="report directory (default reports/<suite>/)")
    parser.add_argument("--no-report", action="store_true", help="only run; `revbench report DIR` renders later")
    parser.add_argument("--retry", default="", metavar="STATUS,...",
                        help=f"also re-run recorded runs with these statuses ({', '.join(STATUSES[1:])})")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from revbench.orchestrator import load_suite
    from revbench.orchestrator.runner import Sweep
    from revbench.reports.render import default_report_dir, render_report

    retry = tuple(s for s in args.retry.split(",") if s)
    unknown = [s for s in retry if s not in STATUSES]
    if unknown:
        raise ValueError(f"--retry: unknown status {unknown[0]!r}; the statuses are {', '.join(STATUSES)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    suite = load_suite(args.suite, args.overrides, methods=methods, device=args.device)
    out = args.out or Path("results") / suite.name
    console = Console()
    sweep = Sweep(suite, out, retry=retry, console=console)
    console.print(f"[bold]revbench run[/] suite [bold]{suite.name}[/]: {suite.description}", soft_wrap=True)
    try:
        records = sweep.run()
    except KeyboardInterrupt:
        console.print(f"interrupted: the finished runs are in {out / 'results.jsonl'}; run the same command again "
                      "to resume", soft_wrap=True, highlight=False)
        return 130
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    console.print("runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                  + f" ({sweep.ran} run now, {len(records) - sweep.ran} recorded before)")
    console.print(f"records: {out / 'results.jsonl'}", soft_wrap=True, highlight=False)
    if not args.no_report:
        report = render_report(out, args.report_dir or default_report_dir(suite.name))
        console.print(f"report:  {report}", soft_wrap=True, highlight=False)
    return 0
