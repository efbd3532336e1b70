"""`revbench bench NAME`: benchmark commands that print their figures (never assertions)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("bytes", "methods", "axes", "depth")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="print benchmark figures (bytes by category, depth scaling, methods)")
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS:
        importlib.import_module(f"revbench.benchmarks.{name}").register(benches)
