"""`revbench bench cli`: how fast the command line answers where no model is needed, and what it imports.

Each command runs as a fresh `python -m revbench ...` process, `--repeats` times; the median and the fastest
wall time are printed next to a bare `python -c pass` (the interpreter's own start). A second process per
command lists which heavy libraries (torch, transformers, pandas, matplotlib) the command imported: none of
them should load to print help or the environment stamp.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "deepspeed", "pandas", "matplotlib")
COMMANDS = (["--help"], ["env"], ["env", "--json"], ["run", "--help"], ["report", "--help"], ["check", "--help"],
            ["estimate", "--help"], ["quality", "--help"], ["bench", "--help"])
GOAL_S = 1.0
_PROBE = ("import contextlib, io, json, sys\nfrom revbench.cli import main\n"
          "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
          "    main(json.loads(sys.argv[1]))\n"
          "print(json.dumps([m for m in {heavy} if m in sys.modules]))\n")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cli", help="wall time of `revbench --help`, `revbench env` and each --help")
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (median and fastest printed)")
    parser.set_defaults(handler=handle)


def wall_times(argv: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def heavy_imports(args: list[str]) -> list[str]:
    probe = _PROBE.format(heavy=repr(HEAVY))
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def handle(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    base = wall_times([sys.executable, "-c", "pass"], args.repeats)
    print(f"Wall time of fresh `python -m revbench ...` processes, {args.repeats} each (a bare `python -c pass` "
          f"takes {statistics.median(base):.3f} s median here); goal: well under {GOAL_S:g} s")
    print(f"| {'command':<28} | median s | fastest s | heavy imports |")
    print(f"|{'-' * 30}|----------|-----------|---------------|")
    slowest = 0.0
    for command in COMMANDS:
        times = wall_times([sys.executable, "-m", "revbench", *command], args.repeats)
        median = statistics.median(times)
        slowest = max(slowest, median)
        heavy = ", ".join(heavy_imports(command)) or "none"
        print(f"| {'revbench ' + ' '.join(command):<28} | {median:8.3f} | {min(times):9.3f} | {heavy:<13} |")
    verdict = "under" if slowest < GOAL_S else "OVER"
    print(f"slowest median {slowest:.3f} s: {verdict} the {GOAL_S:g} s goal")
    return 0
