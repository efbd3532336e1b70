"""The report's "at paper scale" section: every estimable method on Qwen1.5-MoE-A2.7B, from fake tensors.

No GPU is needed: each figure is a `revbench estimate` of the method's real training step (fake tensors,
bf16) at the `paper` suite's point, beside the paper's reported peaks; then, per GPU size, the largest
batch each method fits. Two AdamW paths are shown, because they differ by a third of the peak: torch's
CUDA default (multi-tensor "foreach", whose square root of all second moments at once is a temporary as
large as the weights) and the per-parameter loop (`foreach=False`, what CPU runs take). The tables are
written as CSV beside the report.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from revbench.estimate import Estimate, Fit, estimate_method, fit_method
from revbench.methods import TrainSpec
from revbench.reports.paper import load_paper_reference

if TYPE_CHECKING:
    from revbench.reports.render import ReportContext

GiB = 2**30
# Nominal capacities: the vendors' "80 GB" and "141 GB" are binary gigabytes, near enough (nvidia-smi shows
# 81,559 MiB on an H100/H800 80GB and 143,771 MiB on an H200). The CUDA context, kernel workspaces and
# fragmentation take a GiB or two of that, which tensor bytes do not include: mind the headroom column.
BUDGETS = (("80 GB", 80 * GiB), ("141 GB", 141 * GiB))
CATEGORIES = ("params", "grads", "optimizer", "activations")
ESTIMATES_CSV = "paper_scale_estimates.csv"
FITS_CSV = "paper_scale_fits.csv"
CACHE = "paper_scale.json"
PATHS = {"cuda": "AdamW foreach (CUDA default)", "cpu": "AdamW foreach=False"}  # estimate target -> label


def paper_point(suite: str = "paper") -> tuple[TrainSpec, list[str]]:
    """The spec and methods of the paper suite: the runs a GPU would make, estimated here."""
    from revbench.orchestrator import load_suite

    point = load_suite(suite)
    # bf16 on both AdamW paths: the "cpu" target then differs from a GPU run only in AdamW's loop.
    model = replace(point.model, dtype="bfloat16" if point.model.dtype == "auto" else point.model.dtype)
    workload = replace(point.workload, data="synthetic")  # fake tensors have no values: the data is moot
    return TrainSpec(model=model, workload=workload, optimizer=point.optimizer, seed=point.seed), list(point.methods)


def _gib(nbytes: float | None) -> float | None:
    return None if nbytes is None or pd.isna(nbytes) else round(nbytes / GiB, 2)


def estimates_frame(by_path: dict[str, list[dict[str, Any]]], paper: dict[str, float], baseline: str) -> pd.DataFrame:
    """One row per method (estimates as `Estimate.to_dict()`): the CUDA-default breakdown, both AdamW paths'
    peaks, our ratio to the baseline beside the paper's, and whether it fits each GPU."""
    loop = {e["method"]: e for e in by_path["cpu"]}
    base = next((e["peak_bytes"] for e in by_path["cpu"] if e["method"] == baseline), None)
    rows = []
    for e in by_path["cuda"]:
        other = loop[e["method"]]
        row: dict[str, Any] = {"method": e["method"], "status": e["status"]}
        row.update({f"{c} GiB": _gib(e.get(c)) for c in CATEGORIES})
        row[f"peak GiB, {PATHS['cuda']}"] = _gib(e["peak_bytes"])
        row[f"peak GiB, {PATHS['cpu']}"] = _gib(other["peak_bytes"])
        row[f"activations GiB, {PATHS['cpu']}"] = _gib(other.get("activations"))
        row[f"÷ {baseline}, {PATHS['cpu']}"] = round(other["peak_bytes"] / base, 2) \
            if other["peak_bytes"] and base else None
        row["paper peak GB"] = paper.get(e["method"])
        row[f"paper ÷ {baseline}"] = round(paper[e["method"]] / paper[baseline], 2) \
            if e["method"] in paper and baseline in paper else None
        for name, budget in BUDGETS:
            row[f"fits {name}"] = None if e["peak_bytes"] is None else e["peak_bytes"] <= budget
        row["peak bytes"], row["peak bytes, foreach=False"] = e["peak_bytes"], other["peak_bytes"]
        row["note"] = e["reason"] or ""
        rows.append(row)
    return pd.DataFrame(rows)


def fits_frame(fits: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per method and GPU size (fits as `Fit.to_dict()`)."""
    rows = []
    for f in fits:
        name = next(n for n, b in BUDGETS if b == f["budget_bytes"])
        probes = {int(n): peak for n, peak in f["probes"].items()}
        largest = f["largest"]
        over = min((n for n in probes if largest is None or n > largest), default=None)
        rows.append({"method": f["method"], "GPU": name, "largest batch": largest,
                     "peak GiB": _gib(f["peak_bytes"]),
                     "headroom GiB": _gib(f["budget_bytes"] - f["peak_bytes"]) if f["peak_bytes"] else None,
                     "next batch": over, "its peak GiB": _gib(probes.get(over)) if over else None,
                     "note": f["reason"] or ("still fits at the search's cap" if f["capped"] else "")})
    return pd.DataFrame(rows, columns=["method", "GPU", "largest batch", "peak GiB", "headroom GiB", "next batch",
                                       "its peak GiB", "note"])


def compute(spec: TrainSpec, methods: list[str], fit: bool = True,
            progress: Callable[[str], None] | None = None) -> tuple[dict[str, list[Estimate]], list[Fit]]:
    """Both AdamW paths' estimates of every method, and the CUDA-default path's largest batch per GPU."""
    by_path: dict[str, list[Estimate]] = {path: [] for path in PATHS}
    fits = []
    for name in methods:
        for path in PATHS:
            by_path[path].append(estimate_method(name, spec, target=path))
            if progress:
                progress(f"{name} ({PATHS[path]}): {by_path[path][-1].status} ({by_path[path][-1].seconds:.0f} s)")
        estimate = by_path["cuda"][-1]
        if not fit or estimate.status != "ok":
            continue
        probes = {spec.workload.batch: estimate.peak_bytes}  # shared by both budgets' searches
        for _, budget in sorted(BUDGETS, key=lambda b: -b[1]):
            fits.append(fit_method(name, spec, budget, "batch", "cuda", progress=progress, probes=probes))
    return by_path, fits


def _fingerprint(spec: TrainSpec, methods: list[str], fit: bool) -> dict[str, Any]:
    """What the figures depend on: the point, revbench's source outside the reports (committed or not) and
    the library versions."""
    import revbench

    root = Path(revbench.__file__).parent
    source = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.parent.name != "reports":
            source.update(path.read_bytes())
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft")}
    return json.loads(json.dumps({"spec": spec.to_dict(), "methods": methods, "budgets": BUDGETS, "fit": fit,
                                  "source": source.hexdigest(), **versions}))


def paper_scale_section(out_dir: str | Path, suite: str = "paper", fit: bool = True,
                        progress: Callable[[str], None] | None = None) -> str:
    """Markdown for the "at paper scale" section; writes its CSVs to `out_dir`. About 10-15 s per method and
    AdamW path on 2 cores, and with `fit` several minutes in all: the figures computed from the same source,
    versions and point are kept in `paper_scale.json` in `out_dir` and reused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, methods = paper_point(suite)
    reference = load_paper_reference()
    paper = {r.method: r.peak_vram_gb for r in reference.rows if r.peak_vram_gb}
    fingerprint = _fingerprint(spec, methods, fit)
    cache = out / CACHE
    figures = json.loads(cache.read_text()) if cache.is_file() else {}
    if figures.get("fingerprint") != fingerprint:
        start = time.perf_counter()
        by_path, fits = compute(spec, methods, fit, progress)
        figures = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 1),
                   "parameters": next((e.parameters for e in by_path["cuda"] if e.parameters), 0),
                   "estimates": {path: [e.to_dict() for e in found] for path, found in by_path.items()},
                   "fits": [f.to_dict() for f in fits]}
        cache.write_text(json.dumps(figures, indent=1))
    table = estimates_frame(figures["estimates"], paper, reference.baseline)
    fit_table = fits_frame(figures["fits"])
    table.to_csv(out / ESTIMATES_CSV, index=False)
    fit_table.to_csv(out / FITS_CSV, index=False)
    return _markdown(spec, table, fit_table, figures, paper, reference)


def _arithmetic(parameters: int, paper: dict[str, float], baseline: str) -> str:
    states = parameters * 2 * 4  # bf16 weights, gradients and Adam's two moments
    text = (f"**Model-state arithmetic.** {parameters:,} parameters × (2 B weights + 2 B gradients + 2 B + 2 B "
            f"AdamW moments, all bf16) = {states / 1e9:,.1f} GB = {states / GiB:,.1f} GiB before one activation; "
            f"CUDA's default AdamW adds a {parameters * 2 / GiB:,.1f} GiB temporary (2 B per parameter) in its "
            f"step, {parameters * 10 / GiB:,.1f} GiB in all.")
    if baseline in paper:
        text += (f" The model states alone are {states / 1e9 / paper[baseline]:.2f}× the {paper[baseline]} GB "
                 f"reported for {baseline}: full AdamW fine-tuning of this model cannot fit the reported peaks, "
                 "so compare ratios, not absolute GB.")
    return text


def _activation_note(estimates: list[dict[str, Any]]) -> str:
    """How much of the per-parameter-AdamW peaks is not model state: when little, the methods cannot differ."""
    ran = [e for e in estimates if e["peak_bytes"]]
    if not ran:
        return ""
    most = max(ran, key=lambda e: e["activations"] / e["peak_bytes"])
    return (f" With per-parameter AdamW, tensors other than model states are at most {most['activations'] / GiB:,.2f}"
            f" GiB ({most['activations'] / most['peak_bytes']:.1%} of {most['method']}'s peak) at this point: the "
            "methods' activation savings show in the batch they fit, not in the peak here.")


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(frame.notna(), "")


def _markdown(spec: TrainSpec, table: pd.DataFrame, fit_table: pd.DataFrame, figures: dict[str, Any],
              paper: dict[str, float], reference: Any) -> str:
    w = spec.workload
    shown = table.drop(columns=[c for c in table if c.startswith("peak bytes")])
    parts = [
        "## At paper scale (estimated, no GPU needed)\n",
        f"Every method of the `paper` suite on `{spec.model.preset}` ({figures['parameters']:,} parameters), "
        f"{spec.model.dtype}, batch {w.batch} × seq {w.seq}: the peak tensor bytes of its real training step "
        "(the second step, after the warm-up that creates the AdamW state), run on fake tensors "
        "(`revbench estimate`). The breakdown is of the CUDA-default path. Tensor bytes exclude the CUDA "
        f"context, kernel workspaces and allocator fragmentation. Paper figures: {reference.provenance}; its "
        f"batch, sequence length and optimizer are unknown. Computed in {figures['seconds']:.0f} s.\n",
        _cells(shown).to_markdown(index=False) + f"\n\n([{ESTIMATES_CSV}]({ESTIMATES_CSV}))\n",
        _arithmetic(figures["parameters"], paper, reference.baseline)
        + _activation_note(figures["estimates"]["cpu"]) + "\n",
    ]
    if not fit_table.empty:
        parts += [f"### The largest batch at seq {w.seq} per GPU size ({PATHS['cuda']})\n",
                  "Found by searching over real fake-tensor steps; `next batch` is the probe that proved the "
                  "limit. An empty largest batch: not even batch 1 fits.\n",
                  _cells(fit_table).to_markdown(index=False) + f"\n\n([{FITS_CSV}]({FITS_CSV}))\n"]
    return "\n".join(parts)


def at_paper_scale(ctx: ReportContext) -> str:
    """The section in a report: `render.add_section(at_paper_scale, after="paper_comparison")`. Minutes on
    the first render of a new source tree (then cached in the report directory): opt in, do not add it to
    every report by default."""
    return paper_scale_section(ctx.out_dir)
