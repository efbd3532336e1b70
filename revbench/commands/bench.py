"""`revbench bench NAME`: benchmark commands that print their figures (never assertions).

Each benchmark module imports torch and the harness, so only the one asked for is imported; the others are
listed by name and help line.
"""

from __future__ import annotations

import argparse
import importlib

# name -> help line (as each module's own parser says it)
BENCHMARKS = {
    "bytes": "peak tensor bytes by category of one standard step, per tiny family",
    "methods": "bytes by category, host RSS, tokens/s and losses of every method",
    "depth": "activation bytes and step time against depth, for backprop, checkpointing and RevFFN",
    "cli": "how long `revbench --help`, `revbench env` and each subcommand's --help take, and what they import",
    "overhead": "step time with the NVML and host memory samplers on and off, on the same model: their cost",
}


def register(sub: argparse._SubParsersAction, argv: list[str]) -> None:
    parser = sub.add_parser("bench", help="print benchmark figures (bytes, methods, depth, cli, overhead)")
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    wanted = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    for name, text in BENCHMARKS.items():
        if name == wanted:
            importlib.import_module(f"revbench.benchmarks.{name}").register(benches)
        else:
            benches.add_parser(name, help=text)
