"""The paper-scale report's long-context part: the longest sequence at batch 1 that one 80 GiB GPU trains for
Qwen1.5-MoE-A2.7B, per activation technique, untiled and with its MoE blocks tiled (`tile_tokens`).

Each technique runs on ZeRO-3 offload with the chunked loss, the model-state and loss techniques that keep the least
on the device (the single-GPU table above), so what is left to decide the length is what the activation technique
keeps. The positions past the model's 8,192 need RoPE scaling in a real run, which changes no tensor's size. Every
figure is `revbench estimate --fit seq --max-seq` (fake tensors, the CUDA code path, DeepSpeed's layout model).
Cached in `paper_scale_long.json` beside the section while the source, versions and points are unchanged.
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

CACHE, TABLE_CSV = "paper_scale_long.json", "paper_scale_long.csv"
ACTIVATIONS = ("store", "checkpoint", "selective-checkpoint", "offload-activations", "checkpoint-offload", "revffn",
               "revexact")


@dataclass(frozen=True)
class LongPoint:
    model: str = "qwen1.5-moe-a2.7b"
    layers: int | None = None
    dtype: str = "bfloat16"
    batch: int = 1
    states: str = "zero3-offload"
    loss: str = "chunked"
    activations: tuple[str, ...] = ACTIVATIONS
    tile_tokens: int = 16384
    chunk_tokens: int = 1024
    start: int = 4096  # the first sequence probed
    cap: int = 2**23  # the longest searched: 8M tokens
    budget: int = BUDGET

    def method(self, activations: str) -> str:
        return f"{activations}+{self.states}+{self.loss}"


def longest(item: tuple[str, bool], point: LongPoint) -> dict[str, Any]:
    """One activation technique's longest sequence at `point.batch` under the budget, untiled or tiled."""
    from revbench.estimate import Sessions, fit_method
    from revbench.models import ModelSpec
    from revbench.spec import TrainSpec
    from revbench.workload import Workload

    start = time.perf_counter()
    activations, tiled = item
    name = point.method(activations)
    options = {"chunk_tokens": point.chunk_tokens, **({"tile_tokens": point.tile_tokens} if tiled else {})}
    spec = TrainSpec(model=ModelSpec(point.model, layers=point.layers, dtype=point.dtype),
                     workload=Workload(batch=point.batch, seq=point.start, data="synthetic"), options=options)
    sessions = Sessions(spec, "cuda")
    fit = fit_method(name, spec, point.budget, "seq", "cuda", cap=point.cap, sessions=sessions)
    row = {"activations": activations, "tiled": tiled, "method": name, "largest_seq": fit.largest,
           "capped": fit.capped, "device": None, "host": None, "phase": None, "reason": fit.reason}
    if fit.largest:
        at = sessions.estimate(name, point.batch, fit.largest)
        row.update(device=at.peak_bytes, host=at.host_peak_bytes, phase=at.tensor_bytes.phase)
    return {**row, "seconds": round(time.perf_counter() - start, 1)}


def compute(point: LongPoint, cache: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from revbench.processes import map_processes
    from revbench.progress import ItemsProgress

    def rows() -> dict[str, Any]:
        items = [(activations, tiled) for activations in point.activations for tiled in (False, True)]
        if progress:
            progress(f"searching the longest sequence at batch {point.batch} for {len(items)} compositions "
                     f"(cached in {cache})")
        with ItemsProgress("longest sequences", len(items)) as bar:
            # A tiled step has a checkpointed chunk per tile: many more ops for fake tensors to step through.
            return {"rows": map_processes(functools.partial(longest, point=point), items,
                                          on_done=lambda r: bar.done(f"{r['method']}{' tiled' if r['tiled'] else ''}"
                                                                     f": {r['seconds']} s"),
                                          cost=lambda item: 4 if item[1] else 1)}

    return cached(point, cache, rows)


def _tokens(row: dict[str, Any]) -> str:
    if row["largest_seq"] is None:
        return "none"
    return f"{row['largest_seq']:,}{'+' if row['capped'] else ''}"


def table(figures: dict[str, Any], point: LongPoint) -> pd.DataFrame:
    by = {(r["activations"], r["tiled"]): r for r in figures["rows"]}
    rows = []
    for activations in point.activations:
        plain, tiled = by[(activations, False)], by[(activations, True)]
        gain = (f"{tiled['largest_seq'] / plain['largest_seq']:.2f}x"
                if plain["largest_seq"] and tiled["largest_seq"] else "-")
        rows.append({"activations": activations, "max seq": _tokens(plain),
                     f"max seq, tile_tokens {point.tile_tokens:,}": _tokens(tiled), "tiled / untiled": gain,
                     "device there (tiled)": format_bytes(tiled["device"]) if tiled["device"] else "-",
                     "peak in": tiled["phase"] or "-",
                     "host there": format_bytes(tiled["host"]) if tiled["host"] else "-",
                     "note": tiled["reason"] or plain["reason"] or ""})
    return pd.DataFrame(rows)


def best(figures: dict[str, Any], tiled: bool) -> dict[str, Any] | None:
    found = [r for r in figures["rows"] if r["tiled"] == tiled and r["largest_seq"]]
    return max(found, key=lambda r: r["largest_seq"], default=None)


def long_section(out: Path, point: LongPoint | None = None, progress: Callable[[str], None] | None = None) -> str:
    """Markdown for the long-context part; writes its CSV to `out`."""
    point = point or LongPoint()
    figures = compute(point, out / CACHE, progress)
    frame = table(figures, point)
    frame.to_csv(out / TABLE_CSV, index=False)
    untiled, tiled = best(figures, False), best(figures, True)
    summary = ""
    if untiled and tiled:
        summary = (f"The longest untiled: {untiled['activations']}, {untiled['largest_seq']:,} tokens; the longest "
                   f"tiled: {tiled['activations']}, {tiled['largest_seq']:,} tokens "
                   f"({tiled['largest_seq'] / untiled['largest_seq']:.2f}x).\n\n")
    return (f"### The longest sequence on one GPU of {format_bytes(point.budget, digits=0)}, batch {point.batch}\n\n"
            f"Each activation technique on {point.states} with the {point.loss} loss (chunks of "
            f"{point.chunk_tokens:,} tokens), untiled and with `tile_tokens: {point.tile_tokens:,}` (each layer's "
            f"MoE block in checkpointed chunks, activations/tiling.py); sequences searched up to "
            f"{point.cap:,} tokens, past the model's positions (RoPE scaling in a real run; no tensor's size "
            f"changes). Device figures are the GPU's at the longest sequence, host per GPU (DeepSpeed's fp32 "
            f"states, and an activation offload's copies at their own peak, the end of forward). Attention: SDPA, "
            f"causal without a mask (no S x S matrix). {point.dtype}, CUDA code path, "
            f"computed in {figures['seconds']:.0f} s.\n\n{summary}{frame.to_markdown(index=False)}\n\n"
            f"([{TABLE_CSV}]({TABLE_CSV}))\n")
