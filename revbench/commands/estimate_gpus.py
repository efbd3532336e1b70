"""`revbench estimate --gpus N`: per-GPU and per-node host bytes of every data-parallel combination at N ranks;
with `--fit --budget SIZE`, the smallest N at which each fits (see `revbench.estimate.scale_out`)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from revbench.commands.args import positive, size
from revbench.units import format_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=positive, default=None, metavar="N",
                        help="per-GPU and per-node host bytes of every data-parallel method (DDP, ZeRO-2/3 offload) "
                        "at N ranks; --batch is then the global batch, split over them. With --fit and --budget: "
                        "the smallest N that fits each, at the same per-GPU batch")
    parser.add_argument("--gpus-per-node", type=positive, default=8, metavar="G",
                        help="ranks per node, for the host bytes of a node (default 8)")
    parser.add_argument("--host-budget", type=size, default=None, metavar="SIZE",
                        help="with --gpus --fit: host memory per node that CPU offload may use, e.g. 1TiB")


def _table(result: object, budget: int | None, fit: bool) -> str:
    import pandas as pd

    rows = []
    for name, peak in result.peaks.items():
        states = peak.states
        row = {"method": name, "per GPU": "-" if peak.per_gpu is None else format_bytes(peak.per_gpu),
               "states on GPU": format_bytes(states.device), "ZeRO-3 gathered": format_bytes(states.gathered),
               "ZeRO-3 block gradients": format_bytes(states.leaf_grads),
               "gradient norm copy": format_bytes(states.norm_copy),
               "backward transient": "-" if peak.transient is None else format_bytes(peak.transient),
               "at a block's end": "-" if peak.at_leaf_end is None else format_bytes(peak.at_leaf_end),
               "at the device step": format_bytes(states.step_device) if states.step_device else "-",
               "host per rank": format_bytes(states.host),
               f"host per node ({min(peak.ranks, peak.ranks_per_node)} ranks)": format_bytes(peak.host_per_node)}
        if budget is not None:
            row[f"fits {format_bytes(budget)}"] = "-" if peak.per_gpu is None else (
                "yes" if peak.per_gpu <= budget else "no")
        if fit:
            smallest = result.fits.get(name)
            row["smallest N"] = "-" if peak.per_gpu is None else ("none up to 4096" if smallest is None else smallest)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method").to_markdown()


def handle(args: argparse.Namespace) -> int:
    from revbench.estimate.scale_out import estimate_scale_out
    from revbench.models import ModelSpec
    from revbench.models.dtypes import parse_dtype
    from revbench.spec import TrainSpec
    from revbench.workload import Workload

    if args.fit and args.budget is None:
        raise ValueError("--fit needs --budget, e.g. --budget 80GiB")
    if args.host_budget is not None and not args.fit:
        raise ValueError("--host-budget applies to --gpus N --fit")
    if args.method != "all":
        raise ValueError("--gpus estimates every data-parallel method; leave --method out")
    if args.options:
        raise ValueError("--option applies to the one-GPU estimate; --gpus estimates each method as its preset runs")
    args.batch = args.batch or args.gpus
    if args.batch % args.gpus:
        raise ValueError(f"--batch {args.batch} is the global batch and must split evenly over --gpus {args.gpus}; "
                         f"give --batch a multiple of {args.gpus} (e.g. --batch {args.gpus}: one sample per GPU)")
    spec = TrainSpec(model=ModelSpec(args.model, layers=args.layers, dtype=args.dtype),
                     workload=Workload(batch=args.batch, seq=args.seq, data="synthetic"))
    start = time.perf_counter()
    result = estimate_scale_out(spec, args.gpus, args.device, args.gpus_per_node,
                                args.budget if args.fit else None, args.host_budget,
                                progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    if args.json:
        for name, peak in result.peaks.items():
            print(json.dumps({**peak.to_dict(), "smallest_ranks": result.fits.get(name)}))
        return 0
    dtype = str(parse_dtype(args.dtype, args.device)).removeprefix("torch.")
    print(f"Per-GPU bytes at {args.gpus} ranks: {args.model} ({result.shape.parameters:,} parameters), {dtype}, "
          f"global batch {args.batch} ({args.batch // args.gpus} per rank) x seq {args.seq}, {args.device} code path")
    print(_table(result, args.budget, bool(args.fit)))
    for name, reason in result.refused.items():
        print(f"{name}: refused: {reason.split(': ', 1)[-1]}")
    for activations, error in result.transient_errors.items():
        print(f"{activations}: activations not estimated: {error}")
    note = ""
    if args.fit:
        host = f"; a node's host bytes must fit {format_bytes(args.host_budget)}" if args.host_budget else ""
        note = f" --fit holds the per-GPU batch and adds ranks{host}."
    print(f"Wall time {time.perf_counter() - start:.1f} s. Per GPU: the model states each rank keeps on its GPU, "
          f"what ZeRO-3 holds gathered in backward (the modules DeepSpeed keeps within its reuse distance, and with "
          f"every activation stored each layer's fused expert weights, which forward's saved views hold) and a MoE "
          f"block's gradients before their reduce, and the backward transient of the per-rank batch (activations and "
          f"the gradient in flight, from a fake-tensor step); ZeRO-3 at the larger of the transient's peak and a "
          f"block's end, where its gradients are reduced and what the block saved is gone; with the optimizer "
          f"offloaded, the float64 copy of a gradient whose norm DeepSpeed takes. Where ZeRO steps on the device, the "
          f"larger of that and the device at its step (the float32 gradient partition and AdamW's temporaries beside "
          f"the states). FSDP2's "
          f"figures are its own step's peak on fake tensors as rank 0 of {args.gpus}, its gathered layers and "
          f"reduce-scatter buffers in the transient (its optimizer workspace too). Not counted elsewhere: DDP's "
          f"optimizer workspace, further gradient buckets; anywhere: the CUDA context and fragmentation: leave "
          f"headroom."
          f"{note}")
    return 0
