"""`revbench bench timeline`: what the memory timeline costs a run, and that it agrees with the peak.

Runs a suite (default: smoke) as `revbench run` does, one process per run, into a temporary folder, and prints per
run from its record: the run's duration, the seconds spent drawing the timeline from the profiled step's events
(`timeline.seconds`), their ratio (target < 1 %), the timeline's bytes in the record (target < 16 kB), and whether
its largest total equals the recorded peak to the byte.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("timeline", help="a run's memory timeline: its cost in run time and record bytes")
    parser.add_argument("--suite", default="smoke", help="the suite to run (a name or a YAML file)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import pandas as pd

    from revbench.measure.timeline import expand
    from revbench.records import RESULTS_FILE

    with tempfile.TemporaryDirectory() as out:
        print(f"running the {args.suite} suite into {out} ...", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "revbench", "run", args.suite, "--out", out], check=False)
        if done.returncode != 0:
            print(f"the suite failed (exit {done.returncode})", file=sys.stderr)
            return 1
        records = [json.loads(line) for line in (Path(out) / RESULTS_FILE).read_text().splitlines() if line]
    rows = []
    for record in records:
        memory = record["metrics"]["memory"]
        timeline = memory["timeline"]
        rows.append({"method": record["method"], "run s": record["duration_s"], "timeline s": timeline["seconds"],
                     "% of run": round(100 * timeline["seconds"] / record["duration_s"], 2),
                     "record bytes": len(json.dumps(timeline)), "events": timeline["events"],
                     "peak = record's": int(expand(timeline)["total"].max()) == memory["tensor_bytes"]["total"]})
    table = pd.DataFrame(rows).set_index("method")
    print(f"The memory timeline in each {args.suite} run's record (targets: < 1 % of the run, < 16 kB of the "
          f"record, its peak equal to the record's to the byte)\n{table.to_markdown()}")
    return 0
