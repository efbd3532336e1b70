"""The `revbench` command line. Each subcommand lives in `revbench/commands/<name>.py` with a `register`."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("env", "bench", "run", "report", "check", "estimate", "quality")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revbench",
        description="Can I fully fine-tune this MoE model on my GPU, with which method, at what speed? "
        "Benchmarks RevFFN against standard backprop, checkpointing, ZeRO offload and LoRA.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"revbench.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"revbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
