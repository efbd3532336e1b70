"""`revbench run [SUITE|FILE]`: run a suite (default: smoke), one process per run, then write its report.

Exit codes: 0 when at least one run finished ok (with `--strict`: every run, a budget probe's OOM excepted),
1 otherwise, 2 on bad input (refused before any worker starts) or when another sweep holds `--out`, 130 on
Ctrl-C (the finished runs are kept; the same command resumes).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from revbench.commands import FAILED, INTERRUPTED, OK
from revbench.commands.args import comma_list, directory, endpoint
from revbench.records import STATUSES

if TYPE_CHECKING:
    from revbench.orchestrator import PlannedRun, Suite
    from revbench.records import RunRecord


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run", help="run a benchmark suite (default: smoke) and write its records and report",
        description="Run every run of a suite in its own process, append one record per run to "
        "<out>/results.jsonl (resuming: runs already recorded there are skipped), then write the report. "
        "Exit 1 when no run finished ok (--strict: when any did not), 2 on bad input.")
    parser.add_argument("suite", nargs="?", default=None,
                        help="a shipped suite (smoke, paper, scaling, budget) or a suite YAML file; default smoke")
    parser.add_argument("--methods", type=comma_list, default=None,
                        help="comma-separated methods, replacing the suite's list")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite field by its dotted key, e.g. --set workload.seq=64 "
                        "--set model.layers=2 (repeatable; a swept key is then fixed)")
    parser.add_argument("--device", default=None, help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=directory, default=None, help="results directory (default results/<suite>/)")
    parser.add_argument("--report-dir", type=directory, default=None,
                        help="report directory (default reports/<suite>/, or <out>/report/ with --out)")
    parser.add_argument("--no-report", action="store_true", help="only run; `revbench report DIR` renders later")
    parser.add_argument("--retry", type=comma_list, default=[], metavar="STATUS,...",
                        help=f"also re-run recorded runs with these statuses ({', '.join(STATUSES[1:])})")
    parser.add_argument("--rdzv-endpoint", type=endpoint, default=None, metavar="HOST:PORT",
                        help="with nodes > 1 (--set nodes=N): where every node's torchrun meets the others; start "
                        "the same command on each node, HOST being the first node's address")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any run ends other than ok (a budget search's OOM probes excepted)")
    parser.set_defaults(handler=handle)


def header(suite: Suite, runs: list[PlannedRun], changed: bool) -> str:
    """What will run, from the planned runs (not the suite file's description, which --set may contradict)."""
    if not runs:  # a budget search: its runs are chosen as it goes
        keys = ", ".join(s.key for s in suite.search)
        about = f"budget search of {keys} for {', '.join(suite.methods)}"
    else:
        points = list(dict.fromkeys(run.point for run in runs))
        methods = list(dict.fromkeys(run.method for run in runs))
        about = (f"{len(runs)} run(s): {', '.join(methods)} on {'; '.join(points[:4])}"
                 + (f" and {len(points) - 4} more points" if len(points) > 4 else ""))
    steps = f"{suite.warmup} warm-up + 1 profiled + {suite.steps} timed step(s) each"
    text = f"[bold]revbench run[/] suite [bold]{suite.name}[/]: {about}; {steps}"
    if suite.description and not changed:
        text += f"\n  {suite.description}"
    return text


def exit_code(records: list[RunRecord], strict: bool) -> tuple[int, str | None]:
    failed = [r for r in records if r.status != "ok" and not (r.status == "oom" and r.config.get("search_key"))]
    if not any(r.status == "ok" for r in records):
        return FAILED, "no run finished ok"
    if strict and failed:
        return FAILED, f"--strict: {len(failed)} run(s) did not finish ok"
    return OK, None


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from revbench.orchestrator import load_suite
    from revbench.orchestrator.runner import Sweep
    from revbench.reports.render import default_report_dir, render_report

    unknown = [s for s in args.retry if s not in STATUSES]
    if unknown:
        raise ValueError(f"--retry: unknown status {unknown[0]!r}; the statuses are {', '.join(STATUSES)}")
    suite = load_suite(args.suite, args.overrides, methods=args.methods, device=args.device)
    out = args.out or Path("results") / suite.name
    report_dir = args.report_dir or (out / "report" if args.out else default_report_dir(suite.name))
    console = Console()
    sweep = Sweep(suite, out, retry=tuple(args.retry), console=console, rendezvous=args.rdzv_endpoint)
    changed = bool(args.overrides or args.methods or args.device)
    console.print(header(suite, sweep.runs, changed), soft_wrap=True, highlight=False)
    try:
        records = sweep.run()
    except KeyboardInterrupt:
        console.print(f"interrupted: the finished runs are in {escape(str(out / 'results.jsonl'))}; run the same "
                      "command again to resume", soft_wrap=True, highlight=False)
        return INTERRUPTED
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    console.print("runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                  + f" ({sweep.ran} run now, {len(records) - sweep.ran} recorded before)")
    if sweep.reused:
        console.print(f"kept {', '.join(f'{n} {s}' for s, n in sweep.reused.items())} record(s) from before "
                      f"without re-running them; re-run them with --retry {','.join(sweep.reused)}",
                      soft_wrap=True, highlight=False)
    console.print(f"records: {escape(str(out / 'results.jsonl'))}", soft_wrap=True, highlight=False)
    if not args.no_report:
        report = render_report(out, report_dir)
        console.print(f"report:  {escape(str(report))}", soft_wrap=True, highlight=False)
    code, reason = exit_code(records, args.strict)
    if reason:
        console.print(f"[red]exit {code}[/]: {reason}", highlight=False)
    return code
