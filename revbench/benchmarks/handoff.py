"""`revbench bench handoff`: the reversible stacks against checkpointing where the gradients are stepped and freed
layer by layer (8-bit AdamW in backward, chunked loss), measured.

Every figure comes from the real harness (`run_method`): exact peak tensor bytes by category from the profiler's
allocation events, and the median step time. Beside each peak: the gradient bytes live at it against the bound the
per-layer hand-off promises (one decoder layer's parameters plus every parameter outside the stack).
"""

from __future__ import annotations

import argparse
import re
import sys

import pandas as pd

from revbench.harness import run_method
from revbench.models import ModelSpec, build_model, parse_dtype
from revbench.spec import TrainSpec
from revbench.workload import Workload

STATES_AND_LOSS = "adamw-8bit-in-backward+chunked"
DESIGNS = ("checkpoint", "revexact", "revffn")
_LAYER = re.compile(r"\.layers\.\d+\.")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("handoff", help="reversible stacks vs checkpointing with 8-bit AdamW stepped in backward: "
                                            "peak bytes, live gradients, step time")
    parser.add_argument("--model", default="tiny-qwen2-moe", help="model preset")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--chunk-tokens", type=int, default=32, help="the chunked loss's tokens per chunk")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the profiled one")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=handle)


def gradient_bound(spec: TrainSpec) -> int:
    """One decoder layer's parameter bytes (the largest) plus those of every parameter outside the layers."""
    model = build_model(spec.model)
    layer = max(sum(p.nbytes for p in layer.parameters()) for layer in model.model.layers)
    return layer + sum(p.nbytes for name, p in model.named_parameters() if not _LAYER.search(name))


def handle(args: argparse.Namespace) -> int:
    spec = TrainSpec(model=ModelSpec(args.model, layers=args.layers), workload=Workload(batch=args.batch, seq=args.seq),
                     device=args.device, options={"chunk_tokens": args.chunk_tokens})
    rows = []
    for design in DESIGNS:
        method = f"{design}+{STATES_AND_LOSS}"
        print(f"[revbench] {method} ...", file=sys.stderr, flush=True)
        result = run_method(method, spec, steps=args.steps, warmup=1)
        peak = result.metrics["memory"]["tensor_bytes"]
        rows.append({"method": method, "peak bytes": peak["total"], "params": peak["params"],
                     "grads": peak["grads"], "optimizer": peak["optimizer"], "workspace": peak["workspace"],
                     "activations": peak["activations"],
                     "peak in": peak["phase"], "step s": result.metrics["step_time_s"]["median"]})
    table = pd.DataFrame(rows).set_index("method")
    base = table.loc[f"checkpoint+{STATES_AND_LOSS}"]
    table["peak / checkpointing"] = table["peak bytes"] / base["peak bytes"]
    table["time / checkpointing"] = table["step s"] / base["step s"]
    bound = gradient_bound(spec)
    shown = table.copy()
    for column in ("peak bytes", "params", "grads", "optimizer", "workspace", "activations"):
        shown[column] = shown[column].map("{:,}".format)
    dtype = str(parse_dtype("auto", args.device)).removeprefix("torch.")
    print(f"{args.model}, {args.layers} layers, batch {args.batch} x seq {args.seq}, {dtype} on {args.device}; every "
          f"method with 8-bit AdamW stepped in backward and the chunked loss ({args.chunk_tokens} tokens a chunk); "
          f"1 warm-up + 1 profiled + {args.steps} timed steps. Exact peak tensor bytes on the {args.device} device "
          f"(profiler allocation events), by category; step s is the median step time.")
    print(shown.to_markdown(floatfmt=".3f"))
    print(f"Gradient bytes the hand-off may hold at the peak: one decoder layer's parameters plus those outside the "
          f"stack = {bound:,}; " + ", ".join(f"{m.split('+')[0]} {int(g):,}" for m, g in table["grads"].items()))
    return 0
