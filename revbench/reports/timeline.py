"""A step's memory timeline as a picture: live bytes at every event of one training step, stacked by category,
the step's phases shaded and the peak marked, one panel per method on one y scale so that two compositions compare
by eye. Host-resident (offloaded) states and activations get a panel of their own under their method's, never mixed
into the device's stack. The data are measure/timeline.py's frames; the CSV beside the picture holds them all.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from revbench.measure.categories import CATEGORIES, STATE_CATEGORIES
from revbench.measure.timeline import HOST_ACTIVATIONS, HOST_COLUMNS
from revbench.reports.plots import CATEGORY_COLORS, plt
from revbench.units import BINARY, format_bytes, unit_for

PHASE_COLORS = {"forward": "#9ecae1", "backward": "#fdae6b", "optimizer": "#a1d99b"}


def device_stack(frame: pd.DataFrame) -> pd.DataFrame:
    """Each category's device bytes: a model state's less its host-resident part."""
    stack = frame[list(CATEGORIES)].copy()
    for category, host in zip(STATE_CATEGORIES, HOST_COLUMNS, strict=True):
        stack[category] -= frame[host]
    return stack


def phase_spans(frame: pd.DataFrame) -> list[tuple[int, int, str]]:
    """(first event, last event, phase) of each run of events in one phase."""
    phases = frame["phase"].where(frame["phase"].notna(), None)
    runs = (phases != phases.shift()).cumsum()
    return [(int(group["event"].iloc[0]), int(group["event"].iloc[-1]), phase)
            for (_, phase), group in frame.assign(phase=phases).groupby([runs, phases], sort=False, dropna=False)
            if phase in PHASE_COLORS]


def draw_timelines(frames: dict[str, pd.DataFrame], title: str) -> Figure:
    """One device panel per method (and a host panel under it where it offloads), on one y scale."""
    host = {name: bool(frame["host"].any() or frame[HOST_ACTIVATIONS].any()) for name, frame in frames.items()}
    heights = [h for name in frames for h in ((3, 1) if host[name] else (3,))]
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, 1.0 + 0.9 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    axes = list(axes[:, 0])
    top = max(int(device_stack(frame).sum(axis=1).max()) for frame in frames.values()) or 1
    unit = unit_for([top])
    scale = BINARY[unit]
    for name, frame in frames.items():
        ax = axes.pop(0)
        stack = device_stack(frame) / scale
        ax.stackplot(frame["event"], *(stack[c] for c in CATEGORIES), labels=CATEGORIES,
                     colors=[CATEGORY_COLORS[c] for c in CATEGORIES], linewidth=0, zorder=2)
        for start, end, phase in phase_spans(frame):
            ax.axvspan(start, end, color=PHASE_COLORS[phase], alpha=0.35, linewidth=0, zorder=0)
        peak = frame["device"].idxmax()  # often one event wide: a marker shows it where the area cannot
        ax.plot(frame.at[peak, "event"], frame.at[peak, "device"] / scale, marker="v", color="black", zorder=3)
        ax.annotate(f"device peak {format_bytes(int(frame.at[peak, 'device']))} ({frame.at[peak, 'phase'] or '-'})",
                    (frame.at[peak, "event"], frame.at[peak, "device"] / scale), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)
        ax.set_ylim(0, top / scale * 1.08)
        ax.set_ylabel(f"device ({unit})")
        ax.set_title(name, fontsize=10, loc="left")
        if host[name]:
            on_host = [*HOST_COLUMNS, HOST_ACTIVATIONS]
            below, host_unit = axes.pop(0), unit_for([frame[on_host].sum(axis=1).max()])
            below.stackplot(frame["event"], *(frame[h] / BINARY[host_unit] for h in on_host),
                            colors=[CATEGORY_COLORS[c] for c in (*STATE_CATEGORIES, "activations")], linewidth=0)
            below.set_ylabel(f"host ({host_unit})")
    last = fig.axes[-1]
    last.set_xlabel("allocation and free events of one training step")
    handles = [plt.Rectangle((0, 0), 1, 1, color=CATEGORY_COLORS[c]) for c in CATEGORIES]
    handles += [plt.Rectangle((0, 0), 1, 1, color=color, alpha=0.25) for color in PHASE_COLORS.values()]
    inch = 1 / fig.get_figheight()  # the title and the legend take the same inches whatever the panels
    fig.suptitle(title, fontsize=11, x=0.01, y=1 - 0.08 * inch, ha="left", va="top")
    fig.legend(handles, [*CATEGORIES, *PHASE_COLORS], loc="upper left", bbox_to_anchor=(0.005, 1 - 0.35 * inch),
               ncol=8, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.65 * inch))
    return fig


def write_timelines(frames: dict[str, pd.DataFrame], path: str | Path, title: str) -> tuple[Path, Path]:
    """The picture at `path` and every frame, a `method` column first, in a CSV beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv = path.with_suffix(".csv")
    pd.concat([frame.assign(method=name) for name, frame in frames.items()])[
        ["method", *next(iter(frames.values())).columns]].to_csv(csv, index=False)
    fig = draw_timelines(frames, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, csv
