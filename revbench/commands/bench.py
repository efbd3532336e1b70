"""`revbench bench NAME`: benchmark commands that print their figures (never assertions).

Each benchmark module imports torch and the harness, so only the one asked for is imported; the others are
listed by name and help line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator

# name -> help line (as each module's own parser says it)
BENCHMARKS = {
    "bytes": "peak tensor bytes by category of one standard step, per tiny family",
    "methods": "bytes by category, host RSS, tokens/s and losses of every method",
    "axes": "each technique's peak by category, device/host and phase, one axis at a time",
    "depth": "activation bytes and step time against depth, for backprop, checkpointing and RevFFN",
    "cli": "how long `revbench --help`, `revbench env` and each subcommand's --help take, and what they import",
    "handoff": "reversible stacks vs checkpointing with 8-bit AdamW stepped in backward: peak bytes, live gradients, "
               "step time",
    "peak": "what one method's step holds at its device peak, tensor by tensor (fake tensors, any scale)",
    "overhead": "step time with the NVML and host memory samplers on and off, on the same model: their cost",
    "timeline": "a run's memory timeline: its cost in run time and record bytes, and its peak against the record's",
    "estimate": "wall time of `revbench estimate` and the paper-scale report at A2.7B, against an import of torch",
}


# Kineto writes these to stderr on every profiler start and stop, at a log level no setting turns off.
PROFILER_NOISE = re.compile(rb"^(USDT|STAGE):\S+ \S+ \d+:\d+ \S+\.cpp:\d+\] ")


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Drop the profiler's own log lines from this process's stderr (file descriptor 2, where C++ writes);
    every other line passes through unchanged."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def relay() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not PROFILER_NOISE.match(line):
                    os.write(original, line)

    thread = threading.Thread(target=relay, name="quiet-profiler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the relay drains it and ends
        thread.join(timeout=5)
        os.close(original)


def quietly(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        with quiet_profiler():
            return handler(args)

    return run


def register(sub: argparse._SubParsersAction, argv: list[str] | None = None) -> None:
    """Register `bench`. With the command line in `argv`, only the benchmark it names is imported (the CLI);
    without it, every benchmark is."""
    parser = sub.add_parser("bench", help="print benchmark figures (bytes, methods, depth, cli, overhead)")
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    wanted = None if argv is None else (argv[1] if len(argv) > 1 and argv[0] == "bench" else "")
    for name, text in BENCHMARKS.items():
        if wanted is None or name == wanted:
            importlib.import_module(f"revbench.benchmarks.{name}").register(benches)
            chosen = benches.choices[name]
            chosen.set_defaults(handler=quietly(chosen.get_default("handler")))
        else:
            benches.add_parser(name, help=text)
