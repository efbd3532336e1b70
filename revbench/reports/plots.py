"""PNG plots of the records (matplotlib): each function returns a figure, or None when the records hold
nothing it could show (e.g. no depth sweep)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (or present on CI)

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox

from revbench.reports.frame import (
    CATEGORIES,
    CATEGORY_COLUMNS,
    DEVICE,
    HOST_ACTIVATIONS,
    HOST_COLUMNS,
    PHASE,
    POINT,
    TENSOR,
    TOKENS,
    TOKENS_P10,
    TOKENS_P90,
)
from revbench.units import BINARY, unit_for

AXES = {"layers": "depth (decoder layers)", "seq": "sequence length (tokens)", "batch": "batch size (sequences)"}
CATEGORY_COLORS = {"params": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868", "workspace": "#8172b3",
                   "activations": "#c44e52"}
# Every memory axis is the device's: host-resident (offloaded) states are shown apart, never mixed in.
DEVICE_MEMORY = "peak device memory"


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def variant_colors(variants: list[str]) -> dict[str, str]:
    """One color per variant, the same in every plot of a report."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(dict.fromkeys(variants))}


def _style(colors: dict[str, str], name: str) -> dict[str, str]:
    """Color, marker and line style of a variant: lines that coincide (equal losses) stay visible."""
    index = list(colors).index(name) if name in colors else 0
    return {"color": colors.get(name, "gray"), "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)]}


def _spread(rows: pd.DataFrame) -> list[pd.Series]:
    """Throughput error bars from p10 to p90 of the timed steps (zero where a run has no spread)."""
    return [(rows[TOKENS] - rows[TOKENS_P10]).clip(lower=0).fillna(0),
            (rows[TOKENS_P90] - rows[TOKENS]).clip(lower=0).fillna(0)]


def _figure(width: float = 8.0, height: float = 5.0, ncols: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def _finish(fig: Figure, title: str) -> Figure:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def memory_vs_throughput(summary: pd.DataFrame, colors: dict[str, str]) -> Figure | None:
    """One point per variant and config: where each method sits between memory and speed."""
    ran = summary[summary[DEVICE].notna() & summary[TOKENS].notna()]
    if ran.empty:
        return None
    unit = unit_for(ran[DEVICE])
    fig, (ax,) = _figure(width=10.0)
    several_points = ran["point"].nunique() > 1
    for name, rows in ran.groupby("variant", sort=False):  # rows in sweep order: the line follows the sweep
        style = _style(colors, name)
        ax.errorbar(rows[TOKENS], rows[DEVICE] / BINARY[unit], xerr=_spread(rows), color=style["color"],
                    marker=style["marker"], linestyle=style["linestyle"] if len(rows) > 1 else "none",
                    linewidth=1.0, markersize=8, markeredgecolor="black", markeredgewidth=0.5, elinewidth=1.0,
                    capsize=3, alpha=0.85, label=name, zorder=3)
    if ran[TOKENS].max() > 20 * ran[TOKENS].min():
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, ran[TOKENS_P90].fillna(ran[TOKENS]).max() * 1.3)
    ax.set_ylim(0, (ran[DEVICE] / BINARY[unit]).max() * 1.15)
    _label_points(ax, ran, unit, several_points)
    ax.set_xlabel("throughput (tokens/s, median step)")
    ax.set_ylabel(f"{DEVICE_MEMORY} ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    subtitle = ("one point per method and config, joined in sweep order" if several_points
                else ran["point"].iloc[0]) + "; bars: p10-p90 of the timed steps"
    return _finish(fig, f"Peak device memory vs throughput\n{subtitle}")


# Where a point's label may go, tried in turn: (x, y) offset in points and horizontal alignment.
_LABEL_SPOTS = ((6, 4, "left"), (6, -11, "left"), (-6, 4, "right"), (-6, -11, "right"), (0, 9, "center"))


def _label_points(ax: plt.Axes, ran: pd.DataFrame, unit: str, several_points: bool) -> None:
    """Name each point (its method, or its config when there are several) in the first spot beside it
    where the label overprints no other; a point with no free spot keeps only its legend entry."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the axes transforms so label boxes can be measured
    renderer = fig.canvas.get_renderer()
    centers = ax.transData.transform(list(zip(ran[TOKENS], ran[DEVICE] / BINARY[unit], strict=True)))
    taken = [Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in centers]  # the markers themselves
    for _, row in ran.iterrows():
        xy = (row[TOKENS], row[DEVICE] / BINARY[unit])
        text = f"L{row['layers']} {row['batch']}×{row['seq']}" if several_points else row["variant"]
        if row.get(PHASE):
            text += f" · peak in {row[PHASE]}"
        for dx, dy, align in _LABEL_SPOTS:
            label = ax.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), ha=align, fontsize=7,
                                color="dimgray")
            box = label.get_window_extent(renderer).expanded(1.05, 1.2)
            inside = ax.bbox.contains(*box.p0) and ax.bbox.contains(*box.p1)  # a clipped label is no label
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            label.remove()


def memory_vs_axis(summary: pd.DataFrame, axis: str, colors: dict[str, str]) -> Figure | None:
    """Peak memory and throughput against one of depth, sequence length and batch, the rest held fixed.
    A line needs two or more values of `axis` at otherwise equal settings."""
    ran = summary[summary[DEVICE].notna()]
    fixed = [c for c in POINT if c != axis]
    lines = [(key, rows.sort_values(axis)) for key, rows in ran.groupby(["variant", *fixed], sort=False, dropna=False)
             if rows[axis].nunique() >= 2]
    if not lines:
        return None
    unit = unit_for(ran[DEVICE])
    fig, (mem_ax, tok_ax) = _figure(width=12.0, ncols=2)
    per_variant = pd.Series([key[0] for key, _ in lines]).value_counts()
    for key, rows in lines:
        name = key[0]
        label = name
        if per_variant[name] > 1:  # the same method at several fixed settings: say which
            first = rows.iloc[0]
            label += " · " + ", ".join(f"{c} {first[c]}" for c in ("layers", "batch", "seq") if c != axis)
        style = {**_style(colors, name), "label": label}
        mem_ax.plot(rows[axis], rows[DEVICE] / BINARY[unit], **style)
        tok_ax.errorbar(rows[axis], rows[TOKENS], yerr=_spread(rows), capsize=3, elinewidth=1.0, **style)
    for ax, ylabel in ((mem_ax, f"{DEVICE_MEMORY} ({unit})"), (tok_ax, "throughput (tokens/s, median step)")):
        ax.set_xlabel(AXES[axis])
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ran[axis].unique()), labels=[str(v) for v in sorted(ran[axis].unique())])
        ax.grid(alpha=0.3)
    mem_ax.set_title(DEVICE_MEMORY)
    tok_ax.set_title("throughput (bars: p10-p90 of the timed steps)")
    mem_ax.legend(title="method", fontsize=8, loc="best")
    return _finish(fig, f"Memory and throughput vs {AXES[axis]}")


def memory_breakdown(point: pd.DataFrame, title: str) -> Figure | None:
    """Stacked bars: what the peak holds, by category, one bar per variant at one point. The device's share
    stands on the axis; host-resident states (CPU offload) are stacked above it, hatched, and labelled apart."""
    ran = point[point[TENSOR].notna()]
    if ran.empty:
        return None
    unit = unit_for(ran[TENSOR])
    fig, (ax,) = _figure(width=max(6.0, 1.2 * len(ran) + 3))
    bottom = pd.Series(0.0, index=ran.index)
    host = {c: ran[column].fillna(0) for c, column in HOST_COLUMNS.items()}
    for category, column in zip(CATEGORIES, CATEGORY_COLUMNS, strict=True):
        heights = (ran[column].fillna(0) - host.get(category, 0)) / BINARY[unit]
        ax.bar(ran["variant"], heights, bottom=bottom, label=f"{category} (device)", color=CATEGORY_COLORS[category])
        bottom += heights
    device_top = bottom.copy()
    # An activation offload's host copies peak at the end of forward, not at the device's peak: stacked last.
    host["activations"] = ran[HOST_ACTIVATIONS].fillna(0)
    for category, heights in host.items():
        if heights.any():
            label = f"{category} (host{', own peak' if category == 'activations' else ''})"
            ax.bar(ran["variant"], heights / BINARY[unit], bottom=bottom, label=label,
                   color=CATEGORY_COLORS[category], alpha=0.35, hatch="//", edgecolor="black", linewidth=0.3)
            bottom += heights / BINARY[unit]
    for x, (device, total) in enumerate(zip(device_top, bottom, strict=True)):
        text = f"device {device:,.1f}" + (f"\n+ host {total - device:,.1f}" if total > device else "")
        ax.annotate(text, (x, total), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel(f"peak tensor memory, device then host ({unit})")
    ax.set_xlabel("method")
    ax.tick_params(axis="x", labelrotation=25)
    ax.set_ylim(0, bottom.max() * 1.2)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # top category first, as stacked
    ax.legend(handles[::-1], labels[::-1], title="category", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _finish(fig, f"Peak tensor memory by category, device and host\n{title}")


def loss_curves(point: pd.DataFrame, title: str, colors: dict[str, str]) -> Figure | None:
    """Training loss of every step (warm-up, profiled and timed) per variant at one point."""
    ran = point[point["losses"].map(lambda v: isinstance(v, list) and len(v) > 0)]
    if ran.empty:
        return None
    fig, (ax,) = _figure(width=10.0)
    for _, row in ran.iterrows():
        steps = range(1, len(row["losses"]) + 1)
        ax.plot(steps, row["losses"], markersize=5, alpha=0.85, label=row["variant"], **_style(colors, row["variant"]))
    first = ran.iloc[0]
    if pd.notna(first["warmup"]):  # the step phases of the harness: warm-up, one profiled step, timed steps
        profiled = int(first["warmup"]) + 1
        ax.axvspan(0.5, profiled - 0.5, color="gray", alpha=0.08, label="warm-up (not measured)")
        ax.axvspan(profiled - 0.5, profiled + 0.5, color="gold", alpha=0.15, label="profiled step (bytes)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (cross-entropy + router aux loss)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _finish(fig, f"Loss per step\n{title}")


def largest_fit(budget: pd.DataFrame, frame: pd.DataFrame, colors: dict[str, str]) -> Figure | None:
    """The budget search: per searched field, the largest value each variant fits, with every probe of the
    search on its bar (a dot where the run fitted, a cross where it hit OOM, numbered in the order run)."""
    if budget.empty:
        return None
    keys = list(dict.fromkeys(budget["searched"]))
    fig, axes = _figure(width=7.5 * len(keys), ncols=len(keys))
    for ax, key in zip(axes, keys, strict=True):
        rows = budget[budget["searched"] == key]
        values = rows["largest fit"].fillna(0)
        ax.barh(rows["method"], values, color=[colors.get(v, "gray") for v in rows["method"]])
        for y, (value, oom) in enumerate(zip(values, rows["first OOM"], strict=True)):
            note = f"{value:,.0f}" + (f" (OOM at {oom:,.0f})" if pd.notna(oom) else " (no OOM seen)")
            ax.annotate(note, (value, y + 0.25), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize=8)
        _probes(ax, frame, key, list(rows["method"]))
        ax.set_xlabel(f"largest {AXES.get(key, key)} that fits")
        ax.set_ylabel("method")
        ax.invert_yaxis()
        probed = _probe_rows(frame, key)[key]
        ax.set_xlim(0, max(values.max(), probed.max() if not probed.empty else 0, 1) * 1.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{key} under {rows['budget'].iloc[0]}")
    return _finish(fig, "Largest value that fits the memory budget, found by real runs\n"
                   "(dot: probe fitted, cross: probe hit OOM, number: order run)")


def _probe_rows(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The runs of the budget search over `key` (e.g. batch, from search_key workload.batch), in run order."""
    return frame[frame["search_key"].map(lambda k: isinstance(k, str) and k.rsplit(".", 1)[-1] == key)]


def _probes(ax: plt.Axes, frame: pd.DataFrame, key: str, variants: list[str]) -> None:
    probes = _probe_rows(frame, key)
    for y, name in enumerate(variants):
        runs = probes[probes["variant"] == name]
        for order, (_, run) in enumerate(runs.iterrows(), 1):
            fitted = run["status"] == "ok"
            ax.plot(run[key], y, marker="o" if fitted else "x", color="black" if fitted else "#c44e52",
                    markersize=6, linestyle="none", zorder=3)
            ax.annotate(str(order), (run[key], y), xytext=(0, 6), textcoords="offset points", ha="center",
                        fontsize=7, color="black")


def figure_with_budget(frame: pd.DataFrame, x: str, y: str, budget: int, title: str, xlabel: str,
                       ylabel: str) -> Figure | None:
    """One line of `y` (bytes) against `x` per method, a dashed line at the memory budget, log-2 x axis."""
    if frame.empty:
        return None
    colors = variant_colors(list(frame["method"]))
    fig, (ax,) = _figure(width=10.0, height=6.0)
    for name, rows in frame.groupby("method", sort=False):
        rows = rows.sort_values(x)
        ax.plot(rows[x], rows[y] / BINARY["GiB"], label=name, **_style(colors, name))
    ax.axhline(budget / BINARY["GiB"], color="black", linestyle="--", linewidth=1)
    ax.annotate(f"{budget / BINARY['GiB']:,.0f} GiB", (frame[x].min(), budget / BINARY["GiB"]), xytext=(2, 3),
                textcoords="offset points", fontsize=8)
    ax.set_xscale("log", base=2)
    ticks = sorted(frame[x].unique())
    ax.set_xticks(ticks, labels=[f"{t:,}" for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(title="method", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _finish(fig, title)
