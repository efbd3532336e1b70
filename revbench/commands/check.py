"""`revbench check CURRENT --against REFERENCE`: fail on a memory regression, a missing run or a status change.

Exit codes: 0 pass, 1 a failure (regression, missing run, changed status or setup), 2 bad input (a flag, a
missing or empty records file), 3 records of different device kinds. `--json` prints one JSON object and
`--junit FILE` writes a JUnit XML report (one test case per reference run) for CI dashboards.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from revbench.check import METRICS  # light: pandas is imported by the check itself
from revbench.commands import FAILED, MIXED_DEVICES, OK


def register(sub: argparse._SubParsersAction) -> None:
    defaults = "; ".join(f"{m.name} {'report only' if m.tolerance_pct is None else f'{m.tolerance_pct:g} %'}"
                         for m in METRICS)
    parser = sub.add_parser(
        "check", help="compare run records against reference records; exit 1 on a regression",
        description="Match runs by suite, model, method (with options) and workload and compare their metrics. "
        "Exit 1 on a regression beyond tolerance, a reference run that is missing, a changed status or setup; "
        "exit 2 on bad input (a flag, a missing or empty records file); exit 3 when the records come from "
        "different device kinds (cpu, cuda:<GPU name>), which are never compared. "
        f"Default tolerances: {defaults}.")
    parser.add_argument("current", help="results directory or results.jsonl of the run to check")
    parser.add_argument("--against", required=True, metavar="REFERENCE", help="reference results directory or file")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[METHOD:]METRIC=PCT",
                        help="allowed change in percent for a metric or group (tensor_bytes, cuda_allocator, "
                        "nvml, tokens_per_s, loss, ...), for every run or one method's; 'off' reports without "
                        "gating; repeatable")
    parser.add_argument("--json", action="store_true", help="print the verdict as one JSON object, no tables")
    parser.add_argument("--junit", type=Path, default=None, metavar="FILE",
                        help="also write a JUnit XML report: one test case per reference run")
    parser.set_defaults(handler=handle)


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def junit(labels: list[str], rows: list[dict[str, Any]], failing: tuple[str, ...]) -> ET.ElementTree:
    """One test case per reference run; a failure element per failing figure of it."""
    failures = {label: [r for r in rows if r["run"] == label and r["verdict"] in failing] for label in labels}
    suite = ET.Element("testsuite", name="revbench check", tests=str(len(labels)),
                       failures=str(sum(bool(f) for f in failures.values())))
    for label in labels:
        case = ET.SubElement(suite, "testcase", classname="revbench.check", name=label)
        for row in failures[label]:
            message = f"{row['verdict']}: {row['metric']} {row['reference']} -> {row['current']}"
            failure = ET.SubElement(case, "failure", type=row["verdict"], message=message)
            failure.text = f"{message} {row.get('change', '')} (tolerance {row.get('tolerance') or '-'})"
    ET.indent(suite)
    return ET.ElementTree(suite)


def handle(args: argparse.Namespace) -> int:
    from revbench.check import FAILING, MixedDevicesError, check, device_kind, load, parse_tolerances, run_label

    tolerances = parse_tolerances(args.tolerance)
    current, reference = load(args.current), load(args.against)
    try:
        result = check(current, reference, tolerances)
    except MixedDevicesError as exc:
        if args.json:
            print(json.dumps({"passed": False, "exit_code": MIXED_DEVICES, "error": str(exc)}))
        else:
            print(f"revbench check: error: {exc}", file=sys.stderr)
        return MIXED_DEVICES
    code = OK if result.passed else FAILED
    kinds = sorted({device_kind(r) for r in reference})
    if args.junit:
        junit([run_label(r) for r in reference], result.rows, FAILING).write(args.junit, encoding="utf-8",
                                                                              xml_declaration=True)
    if args.json:
        rows = [{k: _clean(v) for k, v in row.items()} for row in result.rows]
        print(json.dumps({"passed": result.passed, "exit_code": code, "current_runs": len(current),
                          "reference_runs": len(reference), "compared": result.compared, "device_kinds": kinds,
                          "failures": len(result.failures), "rows": rows, "notes": result.notes}))
        return code
    print(f"revbench check: {len(current)} current runs against {len(reference)} reference runs "
          f"({args.against}), device kind {', '.join(kinds)}; {result.compared} compared")
    table, reported = result.table(), result.reported()
    if table.empty:
        print("Every gated figure of every compared run is identical.")
    else:
        print(table.to_markdown(index=False))
    if not reported.empty:
        print("\nReported, not gated (change in percent; gate one with --tolerance METRIC=PCT):")
        print(reported.to_markdown())
    for note in result.notes:
        print(f"note: environment differs: {note}")
    improved = sum(r["verdict"] == "improved" for r in result.rows)
    if improved:
        print(f"note: improved beyond tolerance: {improved} figure(s); refresh the reference "
              "(results/reference/README.md) to lock the gain in")
    if args.junit:
        print(f"junit: {args.junit}")
    if result.passed:
        print("PASS")
        return OK
    counts = {v: sum(r["verdict"] == v for r in result.failures) for v in FAILING}
    print("FAIL: " + ", ".join(f"{v} × {n}" for v, n in counts.items() if n))
    return FAILED
