"""The sections of report.md, in order. Each takes the ReportContext and returns Markdown or None."""

from __future__ import annotations

import pandas as pd

from revbench.measure.timeline import expand
from revbench.records import RESULTS_FILE
from revbench.reports import plots
from revbench.reports.context import ReportContext, Section
from revbench.reports.frame import headline_point
from revbench.reports.paper import (
    format_paper_table,
    load_paper_reference,
    model_state_note,
    paper_table,
    quality_table,
)
from revbench.reports.scale_out import ranks, scale_out
from revbench.reports.tables import budget_table, failures_table, markdown, memory_table, results_table
from revbench.reports.timeline import draw_timelines

MEASURES = """What the figures are:

- **peak device memory**: the exact peak of live tensor bytes during one training step (profiler allocation
  events) that the accelerator holds, split into params, grads, optimizer states, optimizer-step workspace and
  activations (everything else live), with the phase of the step it fell in (forward, backward or optimizer);
- **host-resident bytes**: the model states a CPU offload keeps in host memory (DeepSpeed's float32 master
  weights, Adam states and CPU gradient buffers), counted apart from the device's. On a CPU run host and device
  are one memory, so this is what a GPU run would hold apart;
- **host activations**: what an activation offload (`offload-activations`, `checkpoint-offload`) holds in host
  memory, at its own peak (the end of forward), never in the device's figure;
- **allocator peak**: torch's CUDA caching allocator, max allocated and max reserved (CUDA runs only);
- **NVML device used**: what nvidia-smi shows, sampled during the timed steps (CUDA runs only);
- **host peak RSS**: the run's process tree, where CPU-offload methods keep their states;
- **speed**: the median of the timed steps (after warm-up and the profiled step); samples/s and tokens/s from it.

A figure that does not apply to a run is n/a."""


def overview(ctx: ReportContext) -> str:
    frame = ctx.frame
    suites = ", ".join(dict.fromkeys(frame["suite"]))
    counts = ", ".join(f"{n} {status}" for status, n in frame["status"].value_counts().items())
    env = ctx.records[-1].env
    device = env.get("gpu") or env.get("cpu")
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers", "deepspeed", "peft") if env.get(k))
    started = [r.started for r in ctx.records if r.started]
    results = ctx.results_dir / RESULTS_FILE
    return (f"# revbench report: {suites}\n\n"
            f"- Records: [{results}]({ctx.link(results)}), {len(frame)} runs ({counts}).\n"
            f"- Ran on: {device} ({env.get('platform')}); {versions}; revbench {env.get('revbench')}, "
            f"commit {env.get('git_commit') or 'unknown'}.\n"
            f"- From {min(started, default='?')} to {max(started, default='?')}.\n\n{MEASURES}\n")


def results(ctx: ReportContext) -> str:
    return (f"## Results\n\nMedians over the repeats that ran.\n\n{ctx.table(results_table(ctx.summary), 'results')}\n"
            f"### Memory, every figure\n\n{ctx.table(memory_table(ctx.summary), 'memory')}")


def failures(ctx: ReportContext) -> str | None:
    table = failures_table(ctx.frame)
    if table.empty:
        return None
    return (f"## Runs that did not finish\n\nEach run's full log is in `{ctx.link(ctx.results_dir / 'logs')}/"
            f"<run_id>.log`.\n\n{ctx.table(table, 'failures', table)}")


def budget(ctx: ReportContext) -> str | None:
    table = budget_table(ctx.frame)
    if table.empty:
        return None
    text = ("## What fits the memory budget\n\nFound by real runs: doubling while the run fits, then bisecting "
            "between the last fit and the first OOM. Each probe is a run; an OOM probe is the search's answer, "
            f"not a failure (the search path lists them in the order they ran).\n\n{ctx.table(table, 'budget')}\n")
    figure = plots.largest_fit(table, ctx.frame, ctx.colors)
    return text + (ctx.figure(figure, "largest_fit", "largest value that fits per method") if figure else "")


def paper_comparison(ctx: ReportContext) -> str | None:
    point = headline_point(ctx.summary)
    if point is None:
        return None
    reference = load_paper_reference()
    at_point = ctx.summary[ctx.summary["point"] == point]
    table = paper_table(at_point, reference)
    return (f"## Beside the paper\n\n**Paper numbers: {reference.provenance}.** {reference.provenance_detail} "
            f"Source: {reference.citation}; {reference.model['name']} ({reference.model['parameters_reported']} "
            f"parameters) on {reference.hardware}; unknown: {reference.unknown}.\n\n"
            f"Ours at {point}. Memory is peak tensor memory; ratios are to `{reference.baseline}` on each side, "
            "so only the ratios compare.\n\n"
            f"{ctx.table(table, 'paper', format_paper_table(table))}\n{model_state_note(reference)}\n\n"
            "The paper's task scores (revbench does not measure task quality):\n\n"
            f"{markdown(quality_table(reference).astype(str))}\n")


def figures(ctx: ReportContext) -> str:
    parts = ["## Plots\n"]
    point = headline_point(ctx.summary)
    at_point = ctx.summary[ctx.summary["point"] == point] if point else ctx.summary.iloc[0:0]

    def add(figure: object, name: str, alt: str, missing: str) -> None:
        parts.append(ctx.figure(figure, name, alt) if figure is not None else f"_{alt}: not drawn, {missing}._\n")

    add(plots.memory_vs_throughput(ctx.summary, ctx.colors), "memory_vs_throughput", "memory vs throughput",
        "no run finished")
    for axis in plots.AXES:
        add(plots.memory_vs_axis(ctx.summary, axis, ctx.colors), f"memory_vs_{axis}",
            f"memory vs {plots.AXES[axis]}", f"the records hold no finished runs at two or more values of {axis} "
            "with everything else equal (the `scaling` suite sweeps it)")
    add(plots.memory_breakdown(at_point, point or ""), "memory_breakdown", "memory breakdown by category",
        "no run finished")
    add(plots.loss_curves(at_point, point or "", ctx.colors), "loss_curves", "loss curves", "no run finished")
    timelines = record_timelines(ctx, point)
    add(draw_timelines(timelines, f"Live tensor bytes over the profiled step, {point}") if timelines else None,
        "memory_timeline", "memory timeline of the profiled step, per method",
        "no finished run at this point keeps a timeline in its record")
    return "\n".join(parts)


def record_timelines(ctx: ReportContext, point: str | None) -> dict[str, pd.DataFrame]:
    """Each variant's timeline at `point`, from its first finished repeat whose record keeps one."""
    frames: dict[str, pd.DataFrame] = {}
    for record, row in zip(ctx.records, ctx.frame.itertuples(), strict=True):
        timeline = record.metrics.get("memory", {}).get("timeline")
        if row.point == point and record.status == "ok" and timeline and row.variant not in frames:
            frames[row.variant] = expand(timeline)
    return frames


def files(ctx: ReportContext) -> str:
    runs = ctx.out_dir / "runs.csv"
    ctx.frame.drop(columns=["losses"]).to_csv(runs, index=False)
    listed = [runs, *ctx.files]
    lines = "\n".join(f"- [{path.name}]({ctx.link(path)})" for path in listed)
    return (f"## Files\n\n- [{RESULTS_FILE}]({ctx.link(ctx.results_dir / RESULTS_FILE)}): the records\n"
            f"- [logs]({ctx.link(ctx.results_dir / 'logs')}): one log per run\n{lines}\n")


SECTIONS: list[Section] = [overview, results, failures, budget, scale_out, ranks, paper_comparison, figures,
                           files]
