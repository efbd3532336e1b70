"""The paper-scale report's multi-GPU part: how large a batch at seq 4,096 fits on 8 × 80 GiB GPUs under FSDP2,
beside ZeRO-3 offload and the reversible stacks on it, for Qwen1.5-MoE-A2.7B and Mixtral-8x7B.

Every figure is `revbench estimate --gpus 8`'s per-GPU peak (estimate/scale_out.py): FSDP2's own `fully_shard` on
fake tensors as rank 0 of 8, ZeRO-3 from DeepSpeed's layout plus the activation technique's transient. The largest
per-GPU batch is searched as the single-GPU curves' is (estimate/fit.py); the global batch is the GPUs times it.
Cached in `paper_scale_gpus.json` beside the section while the source, versions and points are unchanged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from revbench.reports.fingerprint import BUDGET, cached
from revbench.units import format_bytes

CACHE, TABLE_CSV = "paper_scale_gpus.json", "paper_scale_gpus.csv"
# FSDP2 as torchtitan and torchtune run it, with and without recomputation and CPU offload; ZeRO-3 offload, the
# multi-GPU composition that fits most on one GPU's worth of device memory; and the two reversible stacks on it
# (FSDP2 refuses them: see states/fsdp2.py).
COMPOSITIONS = ("fsdp2", "checkpoint+fsdp2+full", "fsdp2-offload", "checkpoint+fsdp2-offload+full",
                "zero3-offload", "checkpoint+zero3-offload+full", "revffn+zero3-offload+full",
                "revexact+zero3-offload+full")


@dataclass(frozen=True)
class GpusPoint:
    models: tuple[str, ...] = ("qwen1.5-moe-a2.7b", "mixtral-8x7b")
    layers: int | None = None
    dtype: str = "bfloat16"
    seq: int = 4096
    gpus: int = 8
    budget: int = BUDGET  # per GPU
    compositions: tuple[str, ...] = COMPOSITIONS
    cap: int = 1024  # the largest per-GPU batch searched


def largest(item: tuple[str, str], point: GpusPoint) -> dict[str, Any]:
    """One composition's largest per-GPU batch under the budget at `point.gpus` GPUs, with its figures there."""
    from revbench.estimate.fit import search_largest
    from revbench.estimate.scale_out import RankPeaks
    from revbench.methods import parse_method
    from revbench.models import ModelSpec
    from revbench.spec import TrainSpec
    from revbench.workload import Workload

    start = time.perf_counter()
    model, name = item
    spec = TrainSpec(model=ModelSpec(model, layers=point.layers, dtype=point.dtype),
                     workload=Workload(batch=1, seq=point.seq, data="synthetic"))
    peaks, composition = RankPeaks(spec, "cuda", point.gpus), parse_method(name)
    row = {"model": model, "method": name, "largest_batch": None, "capped": False, "per_gpu": None,
           "host_per_node": None, "reason": peaks.reason(composition, point.gpus, 1)}
    if row["reason"] is None:
        found, capped, _ = search_largest(lambda b: peaks.peak(composition, point.gpus, b).per_gpu, point.budget,
                                          1, point.cap)
        at = peaks.peak(composition, point.gpus, found or 1)
        row.update(largest_batch=found, capped=capped, per_gpu=at.per_gpu, host_per_node=at.host_per_node)
    return {**row, "seconds": round(time.perf_counter() - start, 1)}


def compute(point: GpusPoint, cache: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from revbench.processes import map_processes
    from revbench.progress import ItemsProgress

    def rows() -> dict[str, Any]:
        items = [(model, name) for model in point.models for name in point.compositions]
        if progress:
            progress(f"searching the largest batch on {point.gpus} GPUs for {len(items)} model x composition pairs "
                     f"(cached in {cache})")
        with ItemsProgress(f"largest batches on {point.gpus} GPUs", len(items)) as bar:
            return {"rows": map_processes(functools.partial(largest, point=point), items,
                                          on_done=lambda r: bar.done(f"{r['model']} {r['method']}: {r['seconds']} s"))}

    return cached(point, cache, rows)


def table(figures: dict[str, Any], point: GpusPoint) -> pd.DataFrame:
    rows = []
    for r in figures["rows"]:
        per_gpu = r["largest_batch"]
        rows.append({"model": r["model"], "method": r["method"],
                     "max batch per GPU": "none" if per_gpu is None else f"{per_gpu:,}{'+' if r['capped'] else ''}",
                     f"global batch ({point.gpus} GPUs)": "-" if per_gpu is None else f"{per_gpu * point.gpus:,}",
                     "per GPU there": format_bytes(r["per_gpu"]) if r["per_gpu"] is not None else "-",
                     "host per node there": format_bytes(r["host_per_node"]) if r["host_per_node"] else "0",
                     "note": r["reason"] or ("over the budget at batch 1" if per_gpu is None else "")})
    return pd.DataFrame(rows)


def gpus_section(out: Path, point: GpusPoint | None = None, progress: Callable[[str], None] | None = None) -> str:
    """Markdown for the multi-GPU part; writes its CSV to `out`."""
    point = point or GpusPoint()
    figures = compute(point, out / CACHE, progress)
    frame = table(figures, point)
    frame.to_csv(out / TABLE_CSV, index=False)
    return (f"### On {point.gpus} GPUs of {format_bytes(point.budget, digits=0)}: the largest batch at seq "
            f"{point.seq:,}\n\n"
            f"Each rank trains its batch of the global batch; the per-GPU peak is `revbench estimate --gpus "
            f"{point.gpus}`'s: FSDP2's own `fully_shard` per decoder layer on fake tensors as rank 0 of {point.gpus} "
            f"(its gathered layers, reduce-scatter buffers and optimizer workspace its own), ZeRO-3 offload from "
            f"DeepSpeed's layout, what it holds gathered in backward (DeepSpeed's reuse-distance rule replayed, and "
            f"with every activation stored each layer's fused expert weights, which autograd's saved views keep) "
            f"and a MoE block's gradients, plus the activation technique's backward transient (optimizer workspace "
            f"not counted there). Host memory is per node of {point.gpus} ranks. The reversible stacks cannot run "
            f"under FSDP2 (they rebuild and hand off each layer inside their own backward, outside its hooks), so "
            f"their multi-GPU figures are on ZeRO-3 offload. Full loss (the multi-GPU estimate has no chunked loss "
            f"yet), {point.dtype}, CUDA code path, computed in "
            f"{figures['seconds']:.0f} s.\n\n{frame.to_markdown(index=False)}\n\n([{TABLE_CSV}]({TABLE_CSV}))\n")
