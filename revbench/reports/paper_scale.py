"""The "at paper scale" section: can Qwen1.5-MoE-A2.7B be fully fine-tuned on one 80 GB GPU, with what, and
where does RevFFN's saving over checkpointing appear?

Every figure is a `revbench estimate` of a composition's real training step (fake tensors, bf16, the CUDA code
path; DeepSpeed's offload from its layout model), at a sequence length of 4,096 and a growing batch, so the
peak device memory is drawn against tokens per step. No GPU is needed. The figures are kept in
`paper_scale.json` beside the section and reused while the source, versions and points are unchanged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from revbench.models import ModelSpec
from revbench.reports.fingerprint import BUDGET, cached
from revbench.reports.paper import load_paper_reference
from revbench.spec import TrainSpec
from revbench.units import BINARY, format_bytes
from revbench.workload import Workload

if TYPE_CHECKING:
    from revbench.reports.context import ReportContext

GiB = BINARY["GiB"]
CACHE, TABLE_CSV, CURVES_CSV, PLOT = "paper_scale.json", "paper_scale.csv", "paper_scale_curves.csv", "paper_scale.png"
TIMELINE = "paper_scale_timeline.png"  # and its CSV beside it
TIMELINE_POINTS = 400  # per composition in the cache: the picture's resolution, and the peak kept to the byte
# The paper's baseline and its method, drawn over one step beside the composition that fits most on the GPU.
PAPER_PAIR = ("checkpointing", "revffn")
# The compositions drawn: each activation technique alone, then with the chunked loss, then with every model-state
# saving that keeps the states on the GPU; and the offload and PEFT alternatives the paper argues against.
COMBINATIONS = (
    "standard", "checkpointing", "revffn", "revexact",
    "checkpoint+adamw+chunked", "revffn+adamw+chunked", "revexact+adamw+chunked",
    "checkpoint+adamw-8bit-in-backward+chunked", "revffn+adamw-8bit-in-backward+chunked",
    "revexact+adamw-8bit-in-backward+chunked",
    "lora", "checkpoint+zero2-offload+full", "revffn-zero2-offload",
    "checkpoint+zero3-offload+chunked", "revffn+zero3-offload+chunked", "revexact+zero3-offload+chunked",
)
# The compositions whose longest sequence is searched too (at `Point.seq_batches`): those that fit the budget at
# the table's batch with room to spare, where the question becomes how long a context fits.
LONG_CONTEXT = (
    "checkpoint+adamw-8bit-in-backward+chunked", "revffn+adamw-8bit-in-backward+chunked",
    "revexact+adamw-8bit-in-backward+chunked",
    "checkpoint+zero3-offload+chunked", "revffn+zero3-offload+chunked", "revexact+zero3-offload+chunked",
)
# The paper's ratio: a reversible stack against checkpointing with everything else equal.
PAIRS = (("revffn", "checkpointing"), ("revffn+adamw+chunked", "checkpoint+adamw+chunked"),
         ("revffn+adamw-8bit-in-backward+chunked", "checkpoint+adamw-8bit-in-backward+chunked"),
         ("revexact+adamw-8bit-in-backward+chunked", "checkpoint+adamw-8bit-in-backward+chunked"),
         ("revffn-zero2-offload", "checkpoint+zero2-offload+full"),
         ("revffn+zero3-offload+chunked", "checkpoint+zero3-offload+chunked"),
         ("revexact+zero3-offload+chunked", "checkpoint+zero3-offload+chunked"))


@dataclass(frozen=True)
class Point:
    """Where the curves are drawn: a model, its sequence length and the batches."""

    model: str = "qwen1.5-moe-a2.7b"
    layers: int | None = None
    dtype: str = "bfloat16"
    seq: int = 4096
    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    table_batch: int = 8  # the batch of the compact table (8 x 4096: the and the paper's long-context point)
    combinations: tuple[str, ...] = COMBINATIONS
    long_context: tuple[str, ...] = LONG_CONTEXT
    seq_batches: tuple[int, ...] = (1, 8)  # the batches at which the longest sequence is searched
    # Memory only: Qwen1.5-MoE-A2.7B's trained positions end at 8,192, and a longer context needs RoPE scaling.
    seq_cap: int = 2**20
    options: dict[str, Any] = field(default_factory=lambda: {"chunk_tokens": 1024})
    budget: int = BUDGET

    def spec(self, name: str) -> TrainSpec:
        from revbench.methods import option_names, parse_method

        allowed = option_names(parse_method(name))
        return TrainSpec(model=ModelSpec(self.model, layers=self.layers, dtype=self.dtype),
                         workload=Workload(batch=self.batches[0], seq=self.seq, data="synthetic"),
                         options={k: v for k, v in self.options.items() if k in allowed})


def curve(name: str, point: Point) -> dict[str, Any]:
    """One composition's device and host peaks at every batch of `point`, and its largest batch under the budget."""
    from revbench.estimate import Sessions, fit_method

    start = time.perf_counter()
    spec = point.spec(name)
    sessions = Sessions(spec, "cuda")
    rows = []
    for batch in point.batches:
        e = sessions.estimate(name, batch, point.seq)
        if e.status != "ok":
            return {"method": name, "reason": e.reason, "points": [], "largest_batch": None,
                    "seconds": round(time.perf_counter() - start, 1)}
        rows.append({"batch": batch, "device": e.peak_bytes, "host": e.host_peak_bytes, "phase": e.tensor_bytes.phase,
                     "parameters": e.parameters})
    probes = {r["batch"]: r["device"] for r in rows}
    fit = fit_method(name, spec, point.budget, "batch", "cuda", probes=probes, sessions=sessions)
    longest = {}
    if name in point.long_context:
        for batch in point.seq_batches:
            # The search starts where the tokens that fit at `point.seq` would: near the answer, not at 4,096.
            tokens_at = (fit.largest or 1) * point.seq // batch
            at = replace(spec, workload=replace(spec.workload, batch=batch, seq=min(max(tokens_at, 2), point.seq_cap)))
            seq = fit_method(name, at, point.budget, "seq", "cuda", cap=point.seq_cap, sessions=sessions)
            longest[str(batch)] = {"largest": seq.largest, "capped": seq.capped}
    return {"method": name, "reason": None, "points": rows, "largest_batch": fit.largest, "capped": fit.capped,
            "longest_seq": longest, "seconds": round(time.perf_counter() - start, 1)}


def curve_cost(name: str, point: Point) -> int:
    """A guess at a curve's time, to start the longest first: a long-context composition also searches the longest
    sequence at each of `point.seq_batches` (each search about as long as the curve itself, measured)."""
    from revbench.estimate.session import relative_cost

    return relative_cost(name) * (1 + len(point.seq_batches) * (name in point.long_context))


def compute(point: Point, cache: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every composition's curve, from the cache when it matches, else computed (one process per CPU)."""
    from revbench.processes import map_processes
    from revbench.progress import ItemsProgress

    def curves_and_timelines() -> dict[str, Any]:
        if progress:
            progress(f"estimating {len(point.combinations)} compositions at {len(point.batches)} batches "
                     f"(about 90 s on 2 cores; cached in {cache})")
        with ItemsProgress(f"estimating {len(point.combinations)} compositions", len(point.combinations)) as bar:
            curves = map_processes(functools.partial(curve, point=point), point.combinations,
                                   on_done=lambda c: bar.done(f"{c['method']}: {c['seconds']} s"),
                                   cost=functools.partial(curve_cost, point=point))
            return {"curves": curves, "timelines": timelines_of(timeline_names(curves), point)}

    return cached(point, cache, curves_and_timelines)


def timeline_names(curves: list[dict[str, Any]]) -> list[str]:
    """The paper's pair and the composition with the largest batch at the table's sequence among those whose step
    is traced event by event (not DeepSpeed ZeRO, whose estimate is a layout model)."""
    from revbench.estimate.zero_step import ZERO_STATES
    from revbench.methods import parse_method

    traced = [c for c in curves if c["largest_batch"] and parse_method(c["method"]).states not in ZERO_STATES]
    best = max(traced, key=lambda c: c["largest_batch"], default=None)
    return [*PAPER_PAIR, *([best["method"]] if best and best["method"] not in PAPER_PAIR else [])]


def timelines_of(names: list[str], point: Point) -> dict[str, dict[str, Any]]:
    """Each composition's step at the table's batch, event by event (estimate/timeline.py), as records keep it."""
    from revbench.estimate.session import relative_cost
    from revbench.measure.timeline import compact
    from revbench.processes import map_processes

    traced = map_processes(functools.partial(_timeline_at, point=point), names, cost=relative_cost)
    return {name: compact(frame, TIMELINE_POINTS) for name, frame, _ in traced if frame is not None}


def _timeline_at(name: str, point: Point) -> tuple[str, Any, str | None]:
    from revbench.estimate.timeline import timeline_or_reason

    spec = point.spec(name)
    return timeline_or_reason(name, replace(spec, workload=replace(spec.workload, batch=point.table_batch)), "cuda")


def curves_frame(figures: dict[str, Any], point: Point) -> pd.DataFrame:
    rows = [{"method": c["method"], "tokens": r["batch"] * point.seq, **r} for c in figures["curves"]
            for r in c["points"]]
    return pd.DataFrame(rows, columns=["method", "tokens", "batch", "device", "host", "phase", "parameters"])


def _largest(largest: int | None, capped: bool | None) -> str:
    """A searched size as the table shows it: 'none' not even the smallest fits, '+' still fitting at the cap."""
    return "none" if largest is None else f"{largest:,}{'+' if capped else ''}"


def compact_table(figures: dict[str, Any], curves: pd.DataFrame, point: Point) -> pd.DataFrame:
    """At the table's batch: device and host peaks, the phase, whether it fits, and the largest batch that does."""
    at = curves[curves["batch"] == point.table_batch].set_index("method")
    fits = f"fits {format_bytes(point.budget, digits=0)}"
    rows = []
    for c in figures["curves"]:
        name = c["method"]
        searched = c.get("longest_seq", {})
        longest = {f"max seq @ batch {b}": _largest(**searched[str(b)]) if str(b) in searched else "-"
                   for b in point.seq_batches}
        if name not in at.index:
            rows.append({"method": name, "device": "-", "host": "-", "peak in": "-", fits: "-",
                         f"max batch @ {point.seq}": "-", **longest, "note": c["reason"] or ""})
            continue
        r = at.loc[name]
        rows.append({"method": name, "device": format_bytes(r["device"]),
                     "host": format_bytes(r["host"]) if r["host"] else "0", "peak in": r["phase"],
                     fits: "yes" if r["device"] <= point.budget else "no",
                     f"max batch @ {point.seq}": _largest(c["largest_batch"], c.get("capped")),
                     **longest, "note": ""})
    return pd.DataFrame(rows).set_index("method")


def _limit(device: pd.DataFrame, phase: pd.DataFrame, reversible: str, baseline: str) -> float | None:
    """Where the ratio tends as tokens grow: the slopes' ratio over the two largest points, where the peaks are
    affine in tokens. Only while activations set both peaks (not the optimizer step, whose peak stays flat)."""
    (t1, t2) = device.index[-2:]
    if "optimizer" in {phase.at[t, name] for t in (t1, t2) for name in (reversible, baseline)}:
        return None
    rise = device.at[t2, baseline] - device.at[t1, baseline]
    return (device.at[t2, reversible] - device.at[t1, reversible]) / rise if rise > 0 else None


def ratios(curves: pd.DataFrame) -> pd.DataFrame:
    """Each pair's device-peak ratio at every point, and its limit as tokens grow (see `_limit`)."""
    device = curves.pivot(index="tokens", columns="method", values="device")
    phase = curves.pivot(index="tokens", columns="method", values="phase")
    rows = []
    for reversible, baseline in PAIRS:
        if reversible not in device or baseline not in device or len(device) < 2:
            continue
        ratio = device[reversible] / device[baseline]
        limit = _limit(device, phase, reversible, baseline)
        rows.append({"pair": f"{reversible} ÷ {baseline}", **{f"{t:,} tokens": round(v, 3) for t, v in ratio.items()},
                     "limit (slopes)": "-" if limit is None else round(limit, 3), "lowest": round(ratio.min(), 3)})
    return pd.DataFrame(rows).set_index("pair") if rows else pd.DataFrame()


def plot(curves: pd.DataFrame, point: Point, title: str) -> Any:
    from revbench.reports.plots import figure_with_budget

    return figure_with_budget(curves, "tokens", "device", point.budget, title,
                              xlabel=f"tokens per step (batch × seq {point.seq:,})",
                              ylabel="estimated peak device memory (GiB)")


def _paper_ratio_text(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    reached = table[table["lowest"] <= 0.60]
    lines = ["**The paper's ratio.** The paper reports 65.4 → 39.5 GB for RevFFN against SFT with checkpointing "
             "(0.60). Here, with everything else equal:"]
    for pair, row in table.iterrows():
        limit = row["limit (slopes)"]
        tends = (f"it tends to {limit:.2f} as tokens grow" if limit != "-" else
                 "the optimizer step sets both peaks at the largest steps drawn, so the ratio stays there")
        lines.append(f"- {pair}: lowest {row['lowest']:.2f} over the points drawn; {tends}.")
    best = table["lowest"].idxmin()
    lines.append(f"The closest to the paper's 0.60: {best}, {table.at[best, 'lowest']:.2f} at its best point drawn "
                 f"({table.at[best, 'lowest'] / 0.60:.2f}× the paper's ratio).")
    limits = [v for v in table["limit (slopes)"] if v != "-"]
    if reached.empty and all(v > 0.60 for v in limits):
        lines.append("No regime here gives 0.60: at no batch drawn, and not in the limit of long steps, is a "
                     "reversible stack 0.60 of checkpointing at this model. What checkpointing keeps (one hidden "
                     "state per layer) is a small part of the peak beside the model states, the logits and the "
                     "working set of the one layer that backward recomputes.")
    elif reached.empty:
        lines.append("No batch drawn gives 0.60; only the limit of ever longer steps approaches it.")
    else:
        lines.append(f"0.60 or lower is reached for: {', '.join(reached.index)}.")
    return "\n".join(lines) + "\n"


def _arithmetic(parameters: int) -> str:
    states = parameters * 2 * 4  # bf16 weights, gradients and Adam's two moments
    return (f"**Model-state arithmetic.** {parameters:,} parameters × (2 B weights + 2 B gradients + 2 B + 2 B AdamW "
            f"moments, all bf16) = {states / GiB:,.1f} GiB before one activation; CUDA's default (foreach) AdamW "
            f"adds a {parameters * 2 / GiB:,.1f} GiB temporary in its step. 8-bit moments and stepping in backward "
            f"bring the states to about {parameters * (2 + 2) / GiB:,.1f} GiB (weights and moments) plus one "
            "parameter's gradient at a time; ZeRO offload moves the rest to host memory.\n")


def paper_scale_section(out_dir: str | Path, point: Point | None = None,
                        progress: Callable[[str], None] | None = None) -> str:
    """Markdown for the section; writes its CSVs and plot to `out_dir`."""
    point = point or Point()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return render(compute(point, out / CACHE, progress), point, out)


def base_parameters(curves: pd.DataFrame) -> int:
    """The model's own parameter count: the smallest a composition reports (RevFFN adds adapters)."""
    return int(curves["parameters"].dropna().min()) if not curves.empty else 0


def render(figures: dict[str, Any], point: Point, out: Path) -> str:
    """The section's Markdown, CSVs and plot from computed figures."""
    curves = curves_frame(figures, point)
    table = compact_table(figures, curves, point)
    ratio = ratios(curves)
    curves.to_csv(out / CURVES_CSV, index=False)
    table.to_csv(out / TABLE_CSV)
    parameters = base_parameters(curves)
    about = f"{point.model}{f' ({point.layers} layers)' if point.layers else ''}, {point.dtype}, seq {point.seq:,}"
    fig = plot(curves, point, f"Estimated peak device memory against tokens per step (offload's host memory not "
                              f"drawn)\n{about}, CUDA code path")
    if fig is not None:
        fig.savefig(out / PLOT, dpi=120)
    reference = load_paper_reference()
    parts = [
        f"## At paper scale: can {point.model} be fully fine-tuned on one 80 GB GPU? (estimated, no GPU needed)\n",
        f"{about} ({parameters:,} parameters). Each figure is the estimated peak **device** memory of one training "
        "step after the warm-up (fake tensors; DeepSpeed offload from its buffer layout, its host memory apart), "
        "CUDA code path, chunked loss over 1,024-token chunks. Tensor bytes exclude the CUDA context, kernel "
        f"workspaces and fragmentation: leave a GiB or two. Paper figures: {reference.provenance}. Computed in "
        f"{figures['seconds']:.0f} s.\n",
        f"### At batch {point.table_batch} × seq {point.seq:,}\n",
        table.to_markdown() + f"\n\n([{TABLE_CSV}]({TABLE_CSV}); every point: [{CURVES_CSV}]({CURVES_CSV}))\n",
        f"![peak device memory against tokens per step]({PLOT})\n" if fig is not None else "",
        "### RevFFN against checkpointing\n",
        (ratio.to_markdown() + "\n") if not ratio.empty else "",
        _paper_ratio_text(ratio),
        _arithmetic(parameters) if parameters else "",
        _timeline_text(figures.get("timelines") or {}, point, out, about),
    ]
    return "\n".join(part for part in parts if part)


def _timeline_text(timelines: dict[str, dict[str, Any]], point: Point, out: Path, about: str) -> str:
    """The paper's pair and the best on-GPU composition over one step, side by side (their picture and CSV)."""
    from revbench.measure.timeline import expand
    from revbench.reports.timeline import write_timelines

    if not timelines:
        return ""
    frames = {name: expand(data) for name, data in timelines.items()}
    picture, csv = write_timelines(frames, out / TIMELINE, f"Estimated live tensor bytes over one training step, "
                                                         f"batch {point.table_batch}: {about}, CUDA code path")
    names = list(frames)
    best = (f" and the composition that fits the largest batch with everything on the GPU ({names[2]})"
            if len(names) > 2 else "")
    return (f"### One step, event by event\n\nThe device's live tensor bytes at every allocation and free of one "
            f"step at batch {point.table_batch} × seq {point.seq:,}, traced at the full depth (each timeline's "
            f"peak is the estimate's above, to the byte): the paper's baseline ({names[0]}), its method "
            f"({names[1]}){best}. Phases shaded; downsampled to {TIMELINE_POINTS} points a step, each the most "
            f"bytes of its stretch.\n\n![live bytes over one step]({picture.name})\n\n([{csv.name}]({csv.name}))\n")


def at_paper_scale(ctx: ReportContext) -> str:
    """The section in a report: `render.add_section(at_paper_scale, after="paper_comparison")`. Minutes on the
    first render of a new source tree (then cached in the report directory): opt in, not in every report."""
    from revbench.reports.paper_scale_gpus import gpus_section
    from revbench.reports.paper_scale_long import long_section

    out = Path(ctx.out_dir)
    return "\n".join((paper_scale_section(out), long_section(out), gpus_section(out)))


def write_paper_scale(out_dir: str | Path, point: Point | None = None,
                      progress: Callable[[str], None] | None = None) -> Path:
    """The section alone, with its multi-GPU part, as `out_dir/report.md` (no run records needed)."""
    from revbench.reports.paper_scale_gpus import gpus_section
    from revbench.reports.paper_scale_long import long_section

    out = Path(out_dir)
    markdown = "\n".join((paper_scale_section(out, point, progress), long_section(out, progress=progress),
                           gpus_section(out, progress=progress)))
    (out / "report.md").write_text(f"# revbench: at paper scale\n\n{markdown}")
    return out / "report.md"

