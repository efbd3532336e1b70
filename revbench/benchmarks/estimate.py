"""`revbench bench estimate`: how long `revbench estimate` takes to answer at paper scale, against the time of
importing torch and transformers in the same run (what every estimate pays first).

Each command runs as a fresh process, as a user runs it; the table gives its wall time, the ratio to the import
and the issue's target for it. `--quick` leaves out the two long ones (every composition's fit and the paper-scale
report); the report is rendered into a temporary directory with its figures cache cleared, so it computes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

POINT = ["--model", "qwen1.5-moe-a2.7b", "--batch", "8", "--seq", "4096", "--dtype", "bf16"]
FIT = ["--fit", "--budget", "80GiB"]


@dataclass(frozen=True)
class Command:
    label: str
    args: list[str]
    limit: float  # the goal: at most this many times the import, or seconds where `per_import` is False
    per_import: bool = True
    long: bool = False

    @property
    def target(self) -> str:
        return f"<= {self.limit:g} x import" if self.per_import else f"<= {self.limit:g} s"

    def met(self, seconds: float, imported: float) -> bool:
        return seconds <= self.limit * (imported if self.per_import else 1.0)


COMMANDS = (
    Command("one composition, A2.7B full depth", ["estimate", *POINT, "--method", "checkpointing"], 1.5),
    Command("--fit of the presets", ["estimate", *POINT, *FIT], 10),
    Command("--method combinations --fit", ["estimate", *POINT, "--method", "combinations", *FIT], 180,
            per_import=False, long=True),
    Command("report --paper-scale", ["report", "--paper-scale", "--out", "{out}"], 60, per_import=False, long=True),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("estimate", help="wall time of `revbench estimate` at paper scale against an import")
    parser.add_argument("--quick", action="store_true", help="leave out every composition's fit and the report")
    parser.set_defaults(handler=handle)


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`{' '.join(argv[2:])}` exited {done.returncode}: {tail[0]}")
    return time.perf_counter() - start


def handle(args: argparse.Namespace) -> int:
    commands = [c for c in COMMANDS if not (args.quick and c.long)]
    with tempfile.TemporaryDirectory() as out:
        # The yardstick, the median of three: a first import after other work may find the files out of the cache.
        imported = statistics.median(wall([sys.executable, "-c", "import torch, transformers"]) for _ in range(3))
        print(f"`python -c \"import torch, transformers\"`: {imported:.1f} s on this machine (median of 3)")
        print("| command | wall s | x import | target | met |")
        print("|---|---|---|---|---|")
        for command in commands:
            argv = [a.format(out=Path(out) / "report") for a in command.args]
            print(f"  running revbench {' '.join(argv)} ...", file=sys.stderr, flush=True)
            seconds = wall([sys.executable, "-m", "revbench", *argv])
            print(f"| {command.label} | {seconds:.1f} | {seconds / imported:.1f} | {command.target} | "
                  f"{'yes' if command.met(seconds, imported) else 'no'} |", flush=True)
    return 0
