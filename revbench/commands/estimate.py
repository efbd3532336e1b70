"""`revbench estimate`: peak memory per method from fake tensors: will it fit, and at what batch?"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from revbench.commands import estimate_gpus
from revbench.commands.args import at_least_two, positive, size
from revbench.units import format_bytes

if TYPE_CHECKING:  # torch, transformers and pandas are imported by the handler, not by `revbench --help`
    import pandas as pd

    from revbench.estimate import Estimate, Fit

TARGETS, AXES = ("cuda", "cpu"), ("batch", "seq")  # as revbench.estimate names them


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "estimate", help="estimate peak memory per method without allocating (fake tensors); find what fits",
        description="Runs each method's real training step on fake tensors (no memory is allocated) and reports "
        "the peak tensor bytes of the measured (second) step by category. Kernel workspaces, the CUDA context "
        "and allocator fragmentation are not tensors: leave headroom under the GPU's capacity.")
    parser.add_argument("--model", required=True, help="model preset, e.g. qwen1.5-moe-a2.7b or tiny-qwen2-moe")
    parser.add_argument("--method", default="all", help="comma-separated methods, or all (default)")
    parser.add_argument("--batch", type=positive, default=None,
                        help="the (global) batch; default 2, or with --gpus N one sample per GPU (N)")
    parser.add_argument("--seq", type=at_least_two, default=128)
    parser.add_argument("--layers", type=positive, default=None, help="override the preset's number of layers")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 for cuda, fp32 for cpu), bf16, fp32, ...")
    parser.add_argument("--device", choices=TARGETS, default="cuda",
                        help="the device kind whose code path is estimated (default cuda)")
    parser.add_argument("--budget", type=size, default=None, metavar="SIZE",
                        help="memory budget, e.g. 80GiB or 141GB: says which methods fit")
    parser.add_argument("--fit", nargs="?", const="batch", choices=AXES, default=None,
                        help="find per method the largest batch (default) or seq under --budget")
    parser.add_argument("--json", action="store_true", help="print one JSON object per method")
    estimate_gpus.add_arguments(parser)
    parser.set_defaults(handler=handle)


def _methods(text: str) -> list[str]:
    from revbench.methods import METHODS

    names = list(METHODS) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {', '.join(unknown)}; the methods are {', '.join(METHODS)}")
    return names


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def estimate_table(estimates: list[Estimate], budget: int | None) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for e in estimates:
        tb = e.tensor_bytes
        row = {"method": e.method, "peak": format_bytes(e.peak_bytes)}
        for category in ("params", "grads", "optimizer", "activations"):
            row[category] = format_bytes(getattr(tb, category)) if tb else "-"
        if budget is not None:
            row[f"fits {format_bytes(budget)}"] = "-" if tb is None else ("yes" if tb.total <= budget else "no")
        row["seconds"] = f"{e.seconds:.1f}" if e.status != "not estimable" else "-"
        row["note"] = e.reason or ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def fit_table(fits: list[Fit]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for f in fits:
        over = min((n for n in f.probes if f.largest is None or n > f.largest), default=None)
        largest = "-" if f.reason else ("none" if f.largest is None else f"{f.largest}{'+' if f.capped else ''}")
        rows.append({"method": f.method, f"largest {f.axis}": largest, "peak there": format_bytes(f.peak_bytes),
                     "next size": "-" if over is None else f"{over}: {format_bytes(f.probes[over])}",
                     "probes": len(f.probes), "seconds": f"{f.seconds:.1f}", "note": f.reason or ""})
    return pd.DataFrame(rows).set_index("method")


def handle(args: argparse.Namespace) -> int:
    from revbench.data import Workload
    from revbench.estimate import Estimate, estimate_method, fit_method
    from revbench.methods import TrainSpec
    from revbench.models import ModelSpec
    from revbench.models.validate import ShapeError, validate_model
    from revbench.models.zoo import parse_dtype

    if args.gpus is not None:
        return estimate_gpus.handle(args)
    args.batch = args.batch or 2
    names = _methods(args.method)
    if args.fit and args.budget is None:
        raise ValueError("--fit needs --budget, e.g. --budget 80GiB")
    model = ModelSpec(args.model, layers=args.layers, dtype=args.dtype)
    try:
        validate_model(model)
    except ShapeError as exc:
        flag = {"layers": "--layers", "dtype": "--dtype", "preset": "--model"}.get(exc.path, f"--model ({exc.path})")
        raise ValueError(f"{flag}: {exc.message}") from None
    spec = TrainSpec(model=model, workload=Workload(batch=args.batch, seq=args.seq, data="synthetic"))
    context = {"model": args.model, "layers": args.layers, "dtype": args.dtype, "device": args.device,
               "batch": args.batch, "seq": args.seq}
    start = time.perf_counter()
    results: list[Estimate | Fit] = []
    for name in names:
        _progress(f"estimating {name} ...")
        if args.fit:
            results.append(fit_method(name, spec, args.budget, args.fit, args.device, progress=_progress))
        else:
            results.append(estimate_method(name, spec, args.device))
            _progress(f"{name}: {results[-1].status} in {results[-1].seconds:.1f} s")
    wall = time.perf_counter() - start
    if args.json:
        for result in results:
            row = {**context, **result.to_dict()}
            if isinstance(result, Estimate) and args.budget is not None:
                row["fits"] = None if result.peak_bytes is None else result.peak_bytes <= args.budget
            print(json.dumps(row))
        return 0
    parameters = next((r.parameters for r in results if isinstance(r, Estimate) and r.parameters), None)
    layers = f" with {args.layers} layers" if args.layers else ""
    about = f"{args.model}{layers}" + (f" ({parameters:,} parameters)" if parameters else "")
    dtype = str(parse_dtype(args.dtype, args.device)).removeprefix("torch.")
    if args.fit:
        fixed = f"seq {args.seq}" if args.fit == "batch" else f"batch {args.batch}"
        print(f"Largest {args.fit} at {fixed} whose estimated peak fits {format_bytes(args.budget)} "
              f"({args.budget:,} bytes): {about}, {dtype}, {args.device} code path")
        print(fit_table(results).to_markdown())
    else:
        print(f"Estimated peak tensor bytes of one training step after a warm-up step: {about}, "
              f"batch {args.batch} x seq {args.seq}, {dtype}, {args.device} code path")
        print(estimate_table(results, args.budget).to_markdown())
    adamw = ("AdamW's multi-tensor (foreach) path, as torch takes it on CUDA" if args.device == "cuda"
             else "AdamW's per-parameter loop, as torch takes it on CPU")
    print(f"Wall time {wall:.1f} s. Fake tensors run on the CPU device; byte counts are device-independent up to "
          f"allocator rounding (CUDA rounds each block up to 512 B); the {args.device} code path takes {adamw}.")
    return 0
