"""`revbench bench peak`: what one method's step holds at its device peak, tensor by tensor, on fake tensors at any
scale (the estimate's own step: a method that `revbench estimate` runs on fake tensors).

Tensors are grouped by category, the phase that allocated them, the source line (outside torch) and op, shape and
dtype; the largest groups are printed with their share of the peak, then the rest in one line.
"""

from __future__ import annotations

import argparse

import pandas as pd

from revbench.estimate.fake_step import MethodStep
from revbench.estimate.zero_step import ZERO_STATES
from revbench.measure.peak_tensors import peak_tensors
from revbench.methods import parse_method
from revbench.models import ModelSpec, parse_dtype
from revbench.spec import TrainSpec
from revbench.units import format_bytes
from revbench.workload import Workload


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("peak", help="what one method's step holds at its device peak, tensor by tensor "
                                         "(fake tensors, any scale)")
    parser.add_argument("--model", default="tiny-qwen2-moe", help="model preset or config.json")
    parser.add_argument("--method", required=True, help="a preset or an ACTIVATIONS+STATES+LOSS composition")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=None, help="override the model's number of layers")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 for cuda, fp32 for cpu), bf16, fp32, ...")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the code path estimated")
    parser.add_argument("--top", type=int, default=25, help="groups printed; the rest are summed in one line")
    parser.set_defaults(handler=handle)


def table(name: str, spec: TrainSpec, target: str) -> pd.DataFrame:
    """The tensors live at the peak of the step after the warm-up, grouped, largest first."""
    if parse_method(name).states in ZERO_STATES:
        raise ValueError(f"{name}: DeepSpeed ZeRO is estimated from a layout model, not a fake-tensor step; "
                         "bench peak lists the tensors of fake-tensor steps only")
    step = MethodStep(name, spec, target)
    batch, seq = spec.workload.batch, spec.workload.seq
    with step.context():
        step.method.zero_grad()
        rows = peak_tensors(lambda: step.train(batch, seq), step.method.state_tensors)
    frame = pd.DataFrame([vars(r) for r in rows])
    frame["shape"] = frame["shape"].map(lambda s: "x".join(map(str, s)) or "scalar")
    frame["phase"] = frame["phase"].fillna("before the step")
    keys = ["category", "phase", "origin", "op", "shape", "dtype"]
    grouped = frame.groupby(keys, dropna=False).agg(tensors=("nbytes", "size"), bytes=("nbytes", "sum"))
    return grouped.reset_index().sort_values("bytes", ascending=False, ignore_index=True)


def handle(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    spec = TrainSpec(model=ModelSpec(args.model, layers=args.layers, dtype=args.dtype),
                     workload=Workload(batch=args.batch, seq=args.seq, data="synthetic"))
    groups = table(args.method, spec, args.device)
    total = int(groups["bytes"].sum())
    by_category = groups.groupby("category")["bytes"].sum().sort_values(ascending=False)
    dtype = str(parse_dtype(args.dtype, args.device)).removeprefix("torch.")
    print(f"Live tensors at the device peak of one {args.method} step after a warm-up step: {args.model}, batch "
          f"{args.batch} x seq {args.seq}, {dtype} ({args.device} code path, fake tensors): "
          f"{format_bytes(total)} in all; " + ", ".join(f"{k} {format_bytes(int(v))}" for k, v in by_category.items()))
    shown = groups.head(args.top).copy()
    shown["share"] = (shown["bytes"] / total).map("{:.1%}".format)
    shown["bytes"] = shown["bytes"].map(lambda b: format_bytes(int(b)))
    print(shown.to_markdown(index=False))
    rest = groups.iloc[args.top:]
    if len(rest):
        print(f"... and {int(rest['tensors'].sum())} more tensors in {len(rest)} groups: "
              f"{format_bytes(int(rest['bytes'].sum()))}")
    return 0
