"""`revbench check CURRENT --against REFERENCE`: fail on a memory regression, a missing run or a status change."""

from __future__ import annotations

import argparse

from revbench.check import FAILING, METRICS, check, device_kind, load, parse_tolerances


def register(sub: argparse._SubParsersAction) -> None:
    defaults = "; ".join(f"{m.name} {'report only' if m.tolerance_pct is None else f'{m.tolerance_pct:g} %'}"
                         for m in METRICS)
    parser = sub.add_parser(
        "check", help="compare run records against reference records; exit 1 on a regression",
        description="Match runs by suite, model, method (with options) and workload and compare their metrics. "
        "Exit 1 on a regression beyond tolerance, a reference run that is missing, a changed status or setup; "
        "exit 2 when the records come from different device kinds (cpu, cuda:<GPU name>), which are never "
        f"compared. Default tolerances: {defaults}.")
    parser.add_argument("current", help="results directory or results.jsonl of the run to check")
    parser.add_argument("--against", required=True, metavar="REFERENCE", help="reference results directory or file")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[METHOD:]METRIC=PCT",
                        help="allowed change in percent for a metric or group (tensor_bytes, cuda_allocator, "
                        "nvml, tokens_per_s, loss, ...), for every run or one method's; 'off' reports without "
                        "gating; repeatable")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    tolerances = parse_tolerances(args.tolerance)
    current, reference = load(args.current), load(args.against)
    result = check(current, reference, tolerances)
    kinds = ", ".join(sorted({device_kind(r) for r in reference}))
    print(f"revbench check: {len(current)} current runs against {len(reference)} reference runs "
          f"({args.against}), device kind {kinds}; {result.compared} compared")
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
    if result.passed:
        print("PASS")
        return 0
    counts = {v: sum(r["verdict"] == v for r in result.failures) for v in FAILING}
    print("FAIL: " + ", ".join(f"{v} × {n}" for v, n in counts.items() if n))
    return 1
