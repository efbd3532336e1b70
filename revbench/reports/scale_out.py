"""The scale-out section: per-rank peak memory against the number of data-parallel ranks, per method.

A multi-rank record holds every rank's figures and their per-rank maximum and sum (`metrics.ranks`); a
single-rank record is its own maximum and sum. Rows are grouped by what stays fixed as ranks are added (the
model, the global batch and the rest of the point), so each method's line shows what adding ranks buys.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from revbench.reports import plots
from revbench.reports.context import ReportContext
from revbench.reports.frame import DEVICE, HOST_STATES, SAMPLES, STEP_TIME, point_label
from revbench.units import format_bytes

FIXED = ("preset", "layers", "dtype", "device", "batch", "seq", "data", "steps", "warmup")
PER_RANK_DEVICE, PER_RANK_HOST = "ranks.max.tensor_bytes.device", "ranks.max.tensor_bytes.host"
SUM_DEVICE, SUM_HOST = "ranks.sum.tensor_bytes.device", "ranks.sum.tensor_bytes.host"
STATES = ("params", "grads", "optimizer")


def world(frame: pd.DataFrame) -> pd.Series:
    """Ranks per run: CPU ranks, or GPUs on CUDA, on each of its nodes (frames of records from before nodes: one)."""
    return frame["ranks"].where(frame["device"].str.startswith("cpu"), frame["gpus"]) * frame.get("nodes", 1)


def scale_out_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run of a (point, variant) that ran at two or more rank counts."""
    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["world"] = world(ok)
    for column, single in ((PER_RANK_DEVICE, DEVICE), (PER_RANK_HOST, HOST_STATES), (SUM_DEVICE, DEVICE),
                           (SUM_HOST, HOST_STATES)):
        values = ok[column] if column in ok else pd.Series(float("nan"), index=ok.index)
        ok[column] = pd.to_numeric(values, errors="coerce").fillna(ok[single])
    ok["states_per_rank"] = sum(ok[f"memory.tensor_bytes.{c}"] for c in STATES)
    ok["fixed"] = ok[list(FIXED)].astype(str).agg(" ".join, axis=1)
    counts = ok.groupby(["fixed", "variant"])["world"].transform("nunique")
    return ok[counts >= 2].sort_values(["fixed", "variant", "world"])


def scale_out_table(rows: pd.DataFrame) -> pd.DataFrame:
    table = rows.groupby(["variant", "world"], sort=False).median(numeric_only=True).reset_index()
    return pd.DataFrame({
        "method": table["variant"], "ranks": table["world"].astype(int),
        "per-rank peak device": table[PER_RANK_DEVICE].map(format_bytes),
        "per-rank host states": table[PER_RANK_HOST].map(format_bytes),
        "peak rank's model states": table["states_per_rank"].map(format_bytes),
        "device, all ranks": table[SUM_DEVICE].map(format_bytes),
        "host, all ranks": table[SUM_HOST].map(format_bytes),
        "step time": table[STEP_TIME].map(lambda s: f"{s:.3f} s"),
        "samples/s (global)": table[SAMPLES].map(lambda s: f"{s:.1f}"),
    })


def per_rank_peak(rows: pd.DataFrame, colors: dict[str, str]) -> Figure:
    """Per-rank peak device bytes (left) and host-resident states per rank (right) against the rank count."""
    fig, (device_ax, host_ax) = plots._figure(width=11.0, ncols=2)
    for variant, runs in rows.groupby("variant", sort=False):
        line = runs.groupby("world")[[PER_RANK_DEVICE, PER_RANK_HOST]].median()
        style = plots._style(colors, variant)
        device_ax.plot(line.index, line[PER_RANK_DEVICE] / 2**20, label=variant, **style)
        host_ax.plot(line.index, line[PER_RANK_HOST] / 2**20, label=variant, **style)
    for ax, what in ((device_ax, f"per-rank {plots.DEVICE_MEMORY} (MiB)"), (host_ax, "host-resident states per "
                                                                             "rank (MiB)")):
        ax.set_xlabel("data-parallel ranks")
        ax.set_ylabel(what)
        ax.set_xticks(sorted(rows["world"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    device_ax.legend(fontsize=8)
    return plots._finish(fig, "Per-rank memory against ranks (global batch fixed)")


def scale_out(ctx: ReportContext) -> str | None:
    rows = scale_out_frame(ctx.frame)
    if rows.empty:
        return None
    text = ("## Scale-out: per-rank memory against ranks\n\nThe global batch is fixed and split evenly over the "
            "ranks. Per rank: the largest figure of any rank; all ranks: their sum. Host states are what CPU "
            "offload keeps in host memory (per rank; a node holds its ranks' sum). Throughput is global: the "
            f"samples of every rank per (slowest-rank) step.\n\n{ctx.table(scale_out_table(rows), 'scale_out')}\n")
    return text + ctx.figure(per_rank_peak(rows, ctx.colors), "per_rank_peak_vs_ranks",
                             "per-rank peak memory against ranks")



def rank_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per rank of every finished multi-rank run: where it ran (node, host) and what it held."""
    ok = frame[(frame["status"] == "ok") & (world(frame) > 1)] if "ranks.per_rank" in frame else frame.iloc[:0]
    rows = []
    for _, run in ok.iterrows():
        for rank, entry in enumerate(run["ranks.per_rank"]):
            tensors = entry["memory"]["tensor_bytes"]
            rows.append({"method": run["variant"], "point": point_label(run), "rank": rank,
                         "node": entry.get("node", 0), "host": entry.get("host") or "n/a",
                         "peak device bytes": tensors.get("device", tensors["total"]),
                         "host states bytes": tensors.get("host", 0), "peak in": tensors["phase"],
                         "median step s": entry["step_time_s"]["median"]})
    return pd.DataFrame(rows)


def ranks(ctx: ReportContext) -> str | None:
    table = rank_table(ctx.frame)
    if table.empty:
        return None
    return ("## Every rank of the multi-rank runs\n\nEach record merges its ranks, from every node: this is each "
            "rank's own peak (device tensor bytes, and the states CPU offload keeps in its node's host memory, in the "
            f"phase named), with the node and host it ran on.\n\n{ctx.table(table, 'ranks')}\n")
