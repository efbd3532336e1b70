"""`revbench bench bytes`: exact peak tensor bytes by category of one standard step, per tiny family."""

from __future__ import annotations

import argparse

import pandas as pd

from revbench.harness import run_method
from revbench.models import TINY_PRESETS, ModelSpec
from revbench.spec import TrainSpec
from revbench.workload import Workload


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bytes", help="peak tensor bytes by category of one standard step, per tiny family")
    parser.add_argument("--models", default=",".join(TINY_PRESETS), help="comma-separated presets")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=None)
    parser.set_defaults(handler=handle)


def measure(preset: str, workload: Workload, layers: int | None) -> dict[str, object]:
    spec = TrainSpec(model=ModelSpec(preset, layers=layers), workload=workload)
    result = run_method("standard", spec, steps=1, warmup=1)
    tensor_bytes = result.metrics["memory"]["tensor_bytes"]
    return {"model": preset, **{k: v for k, v in tensor_bytes.items() if k != "method"}}


def handle(args: argparse.Namespace) -> int:
    workload = Workload(batch=args.batch, seq=args.seq)
    rows = [measure(preset, workload, args.layers) for preset in args.models.split(",")]
    table = pd.DataFrame(rows).set_index("model")
    print(f"Peak tensor bytes of one standard AdamW step after one warm-up step "
          f"(batch {args.batch} x seq {args.seq}, float32, profiler allocation events):")
    print(table.to_markdown(intfmt=","))
    return 0
