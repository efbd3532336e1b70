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
import torch
from torch.profiler import ProfilerActivity, profile

from revbench.data import TokenStream
from revbench.harness import run_method
from revbench.measure.profiler_bytes import profile_events
from revbench.methods import create_method
from revbench.models import ModelSpec, parse_dtype
from revbench.spec import TrainSpec
from revbench.workload import Workload

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
    parser.add_argument("--runs", default=",".join(label for label, _, _ in RUNS),
                        help="comma-separated columns to run (e.g. checkpointing,revexact for long sequences, where "
                             "standard backprop would not fit)")
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


def parse_runs(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    wanted = [label.strip() for label in text.split(",") if label.strip()]
    known = {label: run for label, *run in RUNS}
    unknown = [label for label in wanted if label not in known]
    if unknown or not wanted:
        raise ValueError(f"--runs: unknown run {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return [(label, *known[label]) for label, *_ in RUNS if label in wanted]


def forward_kept_bytes(method: str, spec: TrainSpec) -> int:
    """Tensor bytes a training forward leaves alive for its backward (allocated in the forward and not freed by its
    end; profiler allocation events). Unlike the step's peak, which can fall where a design has already freed
    what it kept (the end of backward), this is exactly what each layer costs a design until backward reaches it."""
    trainer = create_method(method, spec)
    trainer.prepare()
    try:
        ids = TokenStream(spec.workload, trainer.vocab_size).batch(0).to(spec.device)
        device_type = torch.device(spec.device).type
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
        with profile(activities=activities, profile_memory=True) as prof:
            loss = trainer.model(input_ids=ids, labels=ids).loss
        live: dict[int, int] = {}
        for event in profile_events(prof)[0]:
            if event.extra_fields.device.type != device_type:
                continue
            if event.extra_fields.alloc_size > 0:
                live[event.extra_fields.ptr] = event.extra_fields.alloc_size
            else:
                live.pop(event.extra_fields.ptr, None)
        del loss
        return sum(live.values())
    finally:
        trainer.teardown()


def measure_depth(args: argparse.Namespace, runs: list[tuple[str, str, dict[str, Any]]], depth: int
                  ) -> dict[str, Any]:
    row: dict[str, Any] = {"layers": depth}
    seconds: dict[str, float] = {}
    for label, method, options in runs:
        print(f"[revbench] depth {depth}: {label} ...", file=sys.stderr, flush=True)
        spec = TrainSpec(model=ModelSpec(args.model, layers=depth), workload=Workload(batch=args.batch, seq=args.seq),
                         device=args.device, options=options)
        result = run_method(method, spec, steps=args.steps, warmup=args.warmup)
        row[f"act {label}"] = result.metrics["memory"]["tensor_bytes"]["activations"]
        row[f"kept {label}"] = forward_kept_bytes(method, spec)
        seconds[label] = result.metrics["step_time_s"]["median"]
        if label == "revffn":
            stats = result.method_stats
            row["revffn mean iters"] = stats["mean_iterations"]
            row["revffn worst residual"] = stats["worst_residual"]
            row["revffn fallbacks"] = stats["fallbacks_total"]
        if label == "revexact":
            row["revexact fallbacks"] = result.method_stats["fallbacks_total"]
    for base in ("standard", "checkpointing"):
        if base in seconds:
            for label in seconds:
                if label != base and (base == "standard" or label in LEAN):
                    row[f"time {label}/{base}"] = seconds[label] / seconds[base]
    for label, value in seconds.items():
        row[f"{label} step s"] = value
    return row


def handle(args: argparse.Namespace) -> int:
    depths = parse_depths(args.depths)
    runs = parse_runs(args.runs)
    labels = [label for label, _, _ in runs]
    table = pd.DataFrame([measure_depth(args, runs, depth) for depth in depths]).set_index("layers")
    shown = table.copy()
    for label in labels:  # exact byte counts, with thousands separators
        for kind in ("act", "kept"):
            shown[f"{kind} {label}"] = shown[f"{kind} {label}"].map("{:,}".format)
    dtype = str(parse_dtype("auto", args.device)).removeprefix("torch.")
    print(f"Depth scaling on {args.model}, batch {args.batch} x seq {args.seq}, {dtype} on {args.device}, AdamW; "
          f"{args.warmup} warm-up + 1 profiled + {args.steps} timed steps per run.\n"
          f"act = peak activation bytes (peak tensor bytes minus params, grads and optimizer states; profiler "
          f"allocation events); kept = tensor bytes the forward leaves alive for backward; time = median step "
          f"time relative to standard backprop or checkpointing; RevFFN: "
          f"mean fixed-point iterations per layer, worst per-token relative residual ||X1' + F(X1', X2') - Y1|| / "
          f"||Y1|| of the last backward, layer fallbacks over all steps; revexact: layers whose rebuilt input "
          f"failed its checksum.")
    print(shown.to_markdown(floatfmt=".3g", colalign=("right",) * (len(shown.columns) + 1)))
    base, last = table.index[0], table.index[-1]
    growth = {label: table.loc[last, f"act {label}"] / table.loc[base, f"act {label}"] for label in labels}
    print(f"\nActivation bytes at {last} layers relative to {base} layers: "
          + ", ".join(f"{label} {ratio:.2f}x" for label, ratio in growth.items()))
    if last > base:
        for kind, title in (("kept", "Bytes kept by the forward"), ("act", "Peak activation bytes")):
            slope = {label: (table.loc[last, f"{kind} {label}"] - table.loc[base, f"{kind} {label}"]) / (last - base)
                     for label in labels}
            line = f"{title} per added layer: " + ", ".join(f"{label} {slope[label]:,.0f}" for label in labels)
            if "checkpointing" in slope:
                ref = slope["checkpointing"]
                line += "; relative to checkpointing's: " + ", ".join(
                    f"{label} {slope[label] / ref:.3f}x" if ref > 0 else f"{label} n/a (checkpointing's is {ref:,.0f})"
                    for label in labels if label in LEAN)
            print(line)
    if "checkpointing" in labels and any(label in LEAN for label in labels):
        print(f"Step time at {last} layers relative to checkpointing (median of {args.steps} timed steps): "
              + ", ".join(f"{label} {table.loc[last, f'time {label}/checkpointing']:.3f}x"
                          for label in labels if label in LEAN))
    return 0
