"""`revbench bench depth`: activation bytes and step time against depth, for backprop, checkpointing, RevFFN and
revexact.

Every figure comes from the real harness (`run_method`): exact peak tensor bytes from the profiler's
allocation events (activations = peak minus parameters, gradients and optimizer states) and the median
time of the timed steps. The reversible designs' statistics are those of their last backward. The summary
gives each design's activation bytes per added layer (the slope between the first and last depth) against
checkpointing's, and its step time at the deepest depth against checkpointing's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

from revbench.data import Workload
from revbench.harness import run_method
from revbench.methods import TrainSpec
from revbench.models import ModelSpec, parse_dtype

# (column label, method, options): RevFFN's vanilla mode runs the very same blocks through plain autograd.
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("standard", "standard", {}),
    ("checkpointing", "checkpointing", {}),
    ("revffn-vanilla", "revffn", {"mode": "vanilla"}),
    ("revffn", "revffn", {}),
    ("revexact", "revexact", {}),
)
# The designs that keep less than every activation, compared with checkpointing in the summary.
LEAN = ("revffn", "revexact")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("depth", help="activation bytes and step time against depth: backprop, "
                                          "checkpointing, RevFFN, revexact")
    parser.add_argument("--model", default="tiny-qwen2-moe", help="model preset")
    parser.add_argument("--depths", default="2,4,8,16", help="comma-separated layer counts")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the profiled one")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=handle)


def parse_depths(text: str) -> list[int]:
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {text!r}") from None
    if not depths or min(depths) < 1:
        raise ValueError(f"--depths needs layer counts >= 1, got {text!r}")
    return depths


def measure_depth(args: argparse.Namespace, depth: int) -> dict[str, Any]:
    row: dict[str, Any] = {"layers": depth}
    seconds: dict[str, float] = {}
    for label, method, options in RUNS:
        print(f"[revbench] depth {depth}: {label} ...", file=sys.stderr, flush=True)
        spec = TrainSpec(model=ModelSpec(args.model, layers=depth), workload=Workload(batch=args.batch, seq=args.seq),
                         device=args.device, options=options)
        result = run_method(method, spec, steps=args.steps, warmup=args.warmup)
        row[f"act {label}"] = result.metrics["memory"]["tensor_bytes"]["activations"]
        seconds[label] = result.metrics["step_time_s"]["median"]
        if label == "revffn":
            stats = result.method_stats
            row["revffn mean iters"] = stats["mean_iterations"]
            row["revffn worst residual"] = stats["worst_residual"]
            row["revffn fallbacks"] = stats["fallbacks_total"]
        if label == "revexact":
            row["revexact fallbacks"] = result.method_stats["fallbacks_total"]
    for label in ("checkpointing", "revffn-vanilla", "revffn", "revexact"):
        row[f"time {label}/standard"] = seconds[label] / seconds["standard"]
    for label in LEAN:
        row[f"time {label}/checkpointing"] = seconds[label] / seconds["checkpointing"]
    row["standard step s"] = seconds["standard"]
    return row


def handle(args: argparse.Namespace) -> int:
    depths = parse_depths(args.depths)
    rows = [measure_depth(args, depth) for depth in depths]
    table = pd.DataFrame(rows).set_index("layers")
    shown = table.copy()
    for label, _, _ in RUNS:  # exact byte counts, with thousands separators
        shown[f"act {label}"] = shown[f"act {label}"].map("{:,}".format)
    dtype = str(parse_dtype("auto", args.device)).removeprefix("torch.")
    print(f"Depth scaling on {args.model}, batch {args.batch} x seq {args.seq}, {dtype} on {args.device}, AdamW; "
          f"{args.warmup} warm-up + 1 profiled + {args.steps} timed steps per run.\n"
          f"act = peak activation bytes (peak tensor bytes minus params, grads and optimizer states; profiler "
          f"allocation events); time = median step time relative to standard backprop; RevFFN: mean fixed-point "
          f"iterations per layer, worst per-token relative residual ||X1' + F(X1', X2') - Y1|| / ||Y1|| of the last "
          f"backward, layer fallbacks over all steps; revexact: layers whose rebuilt input failed its checksum.")
    print(shown.to_markdown(floatfmt=".3g", colalign=("right",) * (len(shown.columns) + 1)))
    base, last = table.index[0], table.index[-1]
    growth = {label: table.loc[last, f"act {label}"] / table.loc[base, f"act {label}"] for label, _, _ in RUNS}
    print(f"\nActivation bytes at {last} layers relative to {base} layers: "
          + ", ".join(f"{label} {ratio:.2f}x" for label, ratio in growth.items()))
    if last > base:
        slope = {label: (table.loc[last, f"act {label}"] - table.loc[base, f"act {label}"]) / (last - base)
                 for label, _, _ in RUNS}
        base_slope = slope["checkpointing"]
        relative = ", ".join(f"{label} {slope[label] / base_slope:.3f}x" if base_slope > 0 else f"{label} n/a"
                             for label in LEAN)
        print("Activation bytes per added layer: " + ", ".join(f"{label} {slope[label]:,.0f}" for label, _, _ in RUNS)
              + f"; relative to checkpointing's: {relative}")
    print(f"Step time at {last} layers relative to checkpointing (median of {args.steps} timed steps): "
          + ", ".join(f"{label} {table.loc[last, f'time {label}/checkpointing']:.3f}x" for label in LEAN))
    return 0
