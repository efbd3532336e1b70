"""`revbench bench axes`: every value of every technique axis, one at a time from `store+adamw+full`, on one model.

Each row changes one axis from the baseline, so its figures show what that technique alone does to the peak:
where the memory sits (device or host-resident, by category) and in which phase of the step the peak falls.
"""

from __future__ import annotations

import argparse
from typing import Any

from tabulate import tabulate

from revbench.harness import run_method
from revbench.methods import AXES, Composition
from revbench.models import ModelSpec, parse_dtype
from revbench.spec import OptimizerSpec, TrainSpec
from revbench.workload import Workload

BASELINE = Composition()
COLUMNS = ("params", "grads", "optimizer", "workspace", "activations", "device", "host")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("axes", help="each technique's peak by category, device/host and phase, one axis at a time")
    parser.add_argument("--model", default="tiny-qwen2-moe-32k-vocab",
                        help="model preset (default: a tiny Qwen2-MoE whose 32k vocabulary makes logits dominate)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--chunk-tokens", type=int, default=64, help="the chunked loss's chunk size")
    parser.add_argument("--axes", default=",".join(AXES), help=f"comma-separated axes of {', '.join(AXES)}")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=handle)


def compositions(axes: list[str]) -> list[Composition]:
    """The baseline, then each other value of each asked axis with the rest at the baseline."""
    out = [BASELINE]
    for axis in axes:
        out += [BASELINE.with_axes(**{axis: value}) for value in AXES[axis] if value != getattr(BASELINE, axis)]
    return out


def measure(composition: Composition, spec: TrainSpec) -> dict[str, Any]:
    result = run_method(composition.name, spec, steps=1, warmup=1)
    tensor_bytes = result.metrics["memory"]["tensor_bytes"]
    changed = [f"{axis}={value}" for axis, value in composition.to_dict().items()
               if value != getattr(BASELINE, axis)]
    return {"changed": ", ".join(changed) or "(baseline)", "method": composition.name,
            **{c: tensor_bytes[c] for c in COLUMNS}, "peak in": tensor_bytes["phase"],
            "loss": round(result.losses[-1], 4)}


def handle(args: argparse.Namespace) -> int:
    axes = [a for a in args.axes.split(",") if a]
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise ValueError(f"unknown axis {unknown[0]!r}; the axes are {', '.join(AXES)}")
    model = ModelSpec(args.model, layers=args.layers)
    rows, failures = [], []
    for composition in compositions(axes):
        print(f"[revbench] {composition.name} ...", flush=True)
        options = {"chunk_tokens": args.chunk_tokens} if composition.loss == "chunked" else {}
        spec = TrainSpec(model=model, workload=Workload(batch=args.batch, seq=args.seq), optimizer=OptimizerSpec(),
                         device=args.device, options=options)
        try:
            rows.append(measure(composition, spec))
        except Exception as exc:  # one technique that cannot run should not hide the others' figures
            failures.append(f"{composition.name}: {type(exc).__name__}: {exc}")
    dtype = str(parse_dtype(model.dtype, args.device)).removeprefix("torch.")
    print(f"\nEach technique against {BASELINE.name} ({'+'.join(BASELINE.techniques())}) on {args.model} "
          f"({args.layers}-layer), batch {args.batch} x seq {args.seq}, {dtype} on {args.device}. Peak tensor bytes "
          f"of one step by category (profiler allocation events); `device` is what an accelerator would hold, "
          f"`host` the model states a CPU offload keeps in host memory; `peak in` is the step phase of the peak:")
    if rows:
        print(tabulate(rows, headers="keys", tablefmt="pipe", intfmt=","))
    for failure in failures:
        print(f"failed: {failure}")
    return 1 if failures else 0
