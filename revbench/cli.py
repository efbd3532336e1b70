"""The `revbench` command line. Each subcommand lives in `revbench/commands/<name>.py` with a `register`.

Every error a user can cause ends in one line naming the problem and exit code 2 (`commands.USAGE`), never a
traceback; the handlers import the heavy libraries, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from revbench.commands import INTERRUPTED, USAGE

COMMANDS = ("env", "bench", "run", "report", "check", "estimate", "quality")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `argv` lets `bench` import only the benchmark it is asked for."""
    parser = argparse.ArgumentParser(
        prog="revbench",
        description="Can I fully fine-tune this MoE model on my GPU, with which method, at what speed? "
        "Benchmarks RevFFN against standard backprop, checkpointing, ZeRO offload and LoRA.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"revbench.commands.{name}")
        module.register(sub, argv or []) if name == "bench" else module.register(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"revbench: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # a skipped record line reads as one line, not a source listing
        try:
            return args.handler(args) or 0
        except KeyboardInterrupt:
            print(f"revbench {args.command}: interrupted", file=sys.stderr)
            return INTERRUPTED
        except (ValueError, OSError) as exc:  # bad input, a missing or unreadable file
            print(f"revbench {args.command}: error: {exc}", file=sys.stderr)
            return USAGE


if __name__ == "__main__":
    sys.exit(main())
