"""`revbench bench methods`: every method on one tiny config, side by side, through the real harness."""

from __future__ import annotations

import argparse
from typing import Any

from tabulate import tabulate

from revbench.harness import run_method
from revbench.methods import METHODS, UnknownMethodError
from revbench.models import ModelSpec, parse_dtype
from revbench.spec import OptimizerSpec, TrainSpec
from revbench.workload import Workload


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("methods", help="bytes by category, host RSS, tokens/s and losses of every method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
    parser.add_argument("--model", default="tiny-qwen2-moe", help="model preset")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the profiled one")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=handle)


def measure(name: str, spec: TrainSpec, steps: int, warmup: int) -> dict[str, Any]:
    result = run_method(name, spec, steps=steps, warmup=warmup)
    memory = result.metrics["memory"]
    tensor_bytes = {k: v for k, v in memory["tensor_bytes"].items() if k != "method"}
    return {"method": name, **tensor_bytes, "host_peak_rss": memory["host"]["peak_rss_bytes"],
            "host_rss_growth": memory["host"]["peak_rss_bytes"] - memory["host"]["start_rss_bytes"],
            "tokens_per_s": round(result.metrics["tokens_per_s"]), "first_loss": result.losses[0],
            "last_loss": result.losses[-1]}


def handle(args: argparse.Namespace) -> int:
    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UnknownMethodError(f"unknown method {unknown[0]!r}; the methods are {', '.join(METHODS)}")
    model = ModelSpec(args.model, layers=args.layers)
    spec = TrainSpec(model=model, workload=Workload(batch=args.batch, seq=args.seq),
                     optimizer=OptimizerSpec(lr=args.lr), device=args.device)
    rows, failures = [], []
    for name in names:
        print(f"[revbench] {name} ...", flush=True)
        try:
            rows.append(measure(name, spec, args.steps, args.warmup))
        except Exception as exc:  # one broken method should not hide the others' figures
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    dtype = str(parse_dtype(model.dtype, args.device)).removeprefix("torch.")
    print(f"\nEvery method on {args.model} ({args.layers}-layer), batch {args.batch} x seq {args.seq}, {dtype} on "
          f"{args.device}, AdamW lr {args.lr}; {args.warmup} warm-up + 1 profiled + {args.steps} timed steps.\n"
          f"Peak tensor bytes by category (profiler allocation events, one step); host peak RSS of the process and its "
          f"growth during the run (bytes; methods run earlier in this process raise the baseline); "
          f"median tokens/s of the timed steps, loss of the first and last step:")
    if rows:
        # tabulate per column, so byte counts stay integers beside the float losses
        print(tabulate(rows, headers="keys", tablefmt="pipe", intfmt=",", floatfmt=".4f"))
    for failure in failures:
        print(f"failed: {failure}")
    return 1 if failures else 0
