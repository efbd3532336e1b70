"""Tables of the records. Each builder returns raw numbers (bytes, seconds) for CSV; `readable` turns a
table into one for Markdown with one byte unit per column."""

from __future__ import annotations

import re

import pandas as pd

from revbench.reports.frame import (
    ALLOCATED,
    CATEGORIES,
    CATEGORY_COLUMNS,
    DEVICE,
    HOST_ACTIVATIONS,
    HOST_RSS,
    HOST_STATES,
    NVML_USED,
    PHASE,
    POINT,
    RESERVED,
    SAMPLES,
    STEP_TIME,
    TENSOR,
    TOKENS,
)
from revbench.units import BINARY, unit_for


def results_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The main table: per point and method, status, peak memory, speed and loss."""
    return pd.DataFrame({
        "method": summary["variant"],
        "config": summary["point"],
        "status": summary["status"],
        "peak device bytes": summary[DEVICE],
        "host-resident bytes": summary[HOST_STATES],
        "host activations bytes": summary[HOST_ACTIVATIONS],
        "peak in": summary[PHASE],
        "allocator peak bytes": summary[ALLOCATED],
        "step time (s)": summary[STEP_TIME],
        "samples/s": summary[SAMPLES],
        "tokens/s": summary[TOKENS],
        "loss first": summary["loss_first"],
        "loss last": summary["loss_last"],
    })


def memory_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Every memory figure the harness measures, each by its own name, with the category breakdown."""
    table = pd.DataFrame({"method": summary["variant"], "config": summary["point"], "status": summary["status"]})
    for category, column in zip(CATEGORIES, CATEGORY_COLUMNS, strict=True):
        table[f"{category} bytes"] = summary[column]
    table["peak tensor bytes"] = summary[TENSOR]
    table["host-resident bytes"] = summary[HOST_STATES]
    table["host activations bytes"] = summary[HOST_ACTIVATIONS]
    table["peak device bytes"] = summary[DEVICE]
    table["peak in"] = summary[PHASE]
    table["allocator max allocated bytes"] = summary[ALLOCATED]
    table["allocator max reserved bytes"] = summary[RESERVED]
    table["NVML device used peak bytes"] = summary[NVML_USED]
    table["host peak RSS bytes"] = summary[HOST_RSS]
    return table


def failures_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish; a budget probe that hit OOM is not one (it is how the search narrows down)."""
    probe_oom = frame["search_key"].notna() & (frame["status"] == "oom")
    failed = frame[(frame["status"] != "ok") & ~probe_oom]
    return pd.DataFrame({"run_id": failed["run_id"], "method": failed["variant"], "config": failed["point"],
                         "status": failed["status"], "error": failed["error"].fillna("")})


def budget_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per searched field and method: the largest value whose run fit, and the smallest above it that hit OOM."""
    probes = frame[frame["search_key"].notna()]
    rows = []
    for key in dict.fromkeys(probes["search_key"]):
        searched = key.rsplit(".", 1)[-1]
        if searched not in POINT:
            continue
        fixed = [c for c in POINT if c != searched]
        for _, runs in probes[probes["search_key"] == key].groupby(["variant", *fixed], sort=False, dropna=False):
            fits = runs.loc[runs["status"] == "ok", searched]
            largest = fits.max() if not fits.empty else None
            ooms = runs.loc[(runs["status"] == "oom") & (runs[searched] > (largest or 0)), searched]
            first = runs.iloc[0]
            budget = first["memory_budget_bytes"]
            rows.append({
                "searched": searched,
                "method": first["variant"],
                "at": ", ".join(f"{c} {first[c]}" for c in ("preset", "layers", "batch", "seq") if c != searched),
                "budget": f"{budget / 2**20:,.0f} MiB" if pd.notna(budget) else "none",
                "largest fit": largest,
                "first OOM": ooms.min() if not ooms.empty else None,
                "probes": len(runs),
                "search path": " → ".join(f"{r[searched]} {'fits' if r['status'] == 'ok' else r['status'].upper()}"
                                          for _, r in runs.iterrows()),
                "other failures": ", ".join(f"{r[searched]}: {r['status']}" for _, r in runs.iterrows()
                                            if r["status"] not in ("ok", "oom")) or "none",
            })
    return pd.DataFrame(rows)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """Byte columns in MiB or GiB (the unit in the header), numbers rounded, blanks as n/a."""
    out = table.copy()
    for column in [c for c in out if c.endswith("bytes")]:
        unit = unit_for(out[column])
        out[column] = [f"{v / BINARY[unit]:,.1f}" if pd.notna(v) else "n/a" for v in out[column]]
        out = out.rename(columns={column: column.replace("bytes", f"({unit})")})
    for column in out.select_dtypes("number"):
        out[column] = [_number(v) for v in out[column]]
    return out.astype("object").where(out.notna(), "n/a")


def _number(value: float) -> str:
    if pd.isna(value):
        return "n/a"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{value:,.0f}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.1f}"


_NUMBER = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?(e[-+]?[0-9]+)?×?$")


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table that prints values as given (no re-parsing of "4.0" into 4), numbers right-aligned."""
    def numeric(column: pd.Series) -> bool:
        values = [str(v) for v in column if str(v) != "n/a"]
        return bool(values) and all(_NUMBER.match(v) for v in values)

    align = ["right" if numeric(table[c]) else "left" for c in table]
    return table.to_markdown(index=False, disable_numparse=True, colalign=align)
