"""`revbench env`: print the environment stamp that every record carries."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="print the environment stamp (versions, devices, git commit)")
    parser.add_argument("--json", action="store_true", help="print it as one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from revbench.env import environment_stamp

    stamp = environment_stamp()
    if args.json:
        print(json.dumps(stamp, indent=2))
    else:
        width = max(map(len, stamp))
        for key, value in stamp.items():
            print(f"{key:<{width}}  {value}")
    return 0
