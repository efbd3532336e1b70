"""Run records as one pandas table: a row per run, the config spread into columns, the metrics flattened
under the harness's own names (`memory.tensor_bytes.total`, `samples_per_s`, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from revbench.records import RunRecord, latest, read_records, run_config_problem

# The harness's figures that tables and plots use, by their names in `metrics`.
TENSOR = "memory.tensor_bytes.total"  # device + host-resident: what the step holds anywhere
DEVICE = "memory.tensor_bytes.device"  # "peak device memory": the accelerator's share
HOST_STATES = "memory.tensor_bytes.host"  # model states a CPU offload keeps in host memory
# Activations an activation offload keeps in host memory, at their own peak (the end of forward)
HOST_ACTIVATIONS = "memory.tensor_bytes.host_activations"
PHASE = "memory.tensor_bytes.phase"  # forward, backward or optimizer: where in the step the peak fell
CATEGORIES = ("params", "grads", "optimizer", "workspace", "activations")
CATEGORY_COLUMNS = tuple(f"memory.tensor_bytes.{c}" for c in CATEGORIES)
HOST_COLUMNS = {c: f"memory.tensor_bytes.host_{c}" for c in ("params", "grads", "optimizer")}
ALLOCATED = "memory.cuda_allocator.max_allocated_bytes"
RESERVED = "memory.cuda_allocator.max_reserved_bytes"
NVML_USED = "memory.nvml.device_used_peak_bytes"
HOST_RSS = "memory.host.peak_rss_bytes"
STEP_TIME = "step_time_s.median"
SAMPLES = "samples_per_s"
TOKENS = "tokens_per_s"
# Throughput at the slow (p90) and fast (p10) step times: the spread of the timed steps, for error bars.
TOKENS_P10, TOKENS_P90 = "tokens_per_s.p10", "tokens_per_s.p90"
METRICS = (TENSOR, DEVICE, HOST_STATES, HOST_ACTIVATIONS, *CATEGORY_COLUMNS, *HOST_COLUMNS.values(), ALLOCATED,
           RESERVED, NVML_USED, HOST_RSS, STEP_TIME, SAMPLES, TOKENS, TOKENS_P10, TOKENS_P90)
# What makes two runs the same measurement point, apart from the method and the repeat.
POINT = ("preset", "layers", "hidden", "experts", "top_k", "dtype", "device", "gpus", "ranks", "nodes", "batch", "seq",
         "data", "steps", "warmup", "memory_budget_bytes")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out



def load_records(results_dir: str | Path) -> list[RunRecord]:
    records = latest(list(read_records(results_dir, run_config_problem)))
    if not records:
        raise ValueError(f"{str(results_dir)!r} holds no run records")
    return records


def variant(method: str, options: dict[str, Any]) -> str:
    """The method, with its options when it has any: runs of one method with other options are other rows."""
    if not options:
        return method
    return f"{method} ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})"


def point_label(row: pd.Series) -> str:
    label = f"{row['preset']} L{row['layers']} · {row['batch']}×{row['seq']} · {row['dtype']} · {row['device']}"
    count, unit = (row["ranks"], "rank") if row["device"].startswith("cpu") else (row["gpus"], "GPU")
    if row.get("nodes", 1) > 1:
        label += f" · {row['nodes']} nodes × {count} {unit}{'s' if count > 1 else ''}"
    elif count > 1:
        label += f" ×{count} {unit}s"
    if pd.notna(row["memory_budget_bytes"]):
        label += f" · budget {row['memory_budget_bytes'] / 2**20:,.0f} MiB"
    return label


def record_row(record: RunRecord) -> dict[str, Any]:
    config = record.config
    model, workload = config["model"], config["workload"]
    losses = record.losses
    row = {
        "run_id": record.run_id, "suite": record.suite, "method": record.method,
        "variant": variant(record.method, config.get("options") or {}), "status": record.status,
        "error": record.error, "repeat": config.get("repeat", 0),
        "preset": model["preset"], "layers": model["layers"], "hidden": model["hidden"],
        "experts": model["experts"], "top_k": model["top_k"], "dtype": model["dtype"], "device": config["device"],
        "gpus": config.get("gpus", 1), "ranks": config.get("ranks", 1),
        "nodes": config.get("nodes", 1), "batch": workload["batch"],
        "seq": workload["seq"], "data": workload["data"],
        "tokens_per_step": workload["batch"] * workload["seq"], "steps": config.get("steps"),
        "warmup": config.get("warmup"), "memory_budget_bytes": config.get("memory_budget_bytes"),
        "search_key": config.get("search_key"), "options": json.dumps(config.get("options") or {}, sort_keys=True),
        "gpu_name": record.env.get("gpu"), "duration_s": record.duration_s,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "losses": losses,
    }
    row.update(flatten(record.metrics))
    for column, step_time in ((TOKENS_P10, "step_time_s.p90"), (TOKENS_P90, "step_time_s.p10")):
        seconds = row.get(step_time)
        row[column] = row["tokens_per_step"] / seconds if isinstance(seconds, (int, float)) and seconds > 0 else None
    return row


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run; every column in METRICS exists (NaN where a run has no such figure)."""
    frame = pd.DataFrame([record_row(r) for r in records])
    for column in METRICS:
        if column not in frame:
            frame[column] = float("nan")
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    # Records from before the device/host split hold no offloaded states apart: all of it was the device's.
    frame[DEVICE] = frame[DEVICE].fillna(frame[TENSOR])
    for column in (HOST_STATES, HOST_ACTIVATIONS, *HOST_COLUMNS.values(), "memory.tensor_bytes.workspace"):
        frame[column] = frame[column].where(frame[TENSOR].isna(), frame[column].fillna(0))
    if PHASE not in frame:
        frame[PHASE] = None
    frame["memory_budget_bytes"] = frame["memory_budget_bytes"].astype("object").where(
        frame["memory_budget_bytes"].notna(), None)
    frame["point"] = frame.apply(point_label, axis=1)
    return frame


def status_summary(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    if len(counts) == 1 and len(statuses) == 1:
        return str(statuses.iloc[0])
    return ", ".join(f"{status} {count}/{len(statuses)}" for status, count in counts.items())


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (point, variant): the status of its repeats and the median of each figure over the
    repeats that ran; figures are NaN where no repeat ran."""
    keys = ["point", "variant"]
    ok = frame[frame["status"] == "ok"]
    first = frame.groupby(keys, sort=False).first()
    out = first[["method", *POINT, "tokens_per_step", "search_key", "error"]].copy()
    out["status"] = frame.groupby(keys, sort=False)["status"].agg(status_summary)
    out["runs"] = frame.groupby(keys, sort=False).size()
    medians = ok.groupby(keys, sort=False)[[*METRICS, "loss_first", "loss_last"]].median()
    out = out.join(medians)
    out["losses"] = ok.groupby(keys, sort=False)["losses"].first()
    out[PHASE] = ok.groupby(keys, sort=False)[PHASE].agg(lambda phases: "/".join(sorted(set(phases.dropna()))))
    return out.reset_index()


def headline_point(summary: pd.DataFrame) -> str | None:
    """The point the single-point tables and plots show: the one where most variants ran, then the
    largest step (tokens), then the deepest model."""
    ran = summary[summary[TENSOR].notna()]
    if ran.empty:
        return None
    ranked = ran.groupby("point").agg(n=("variant", "size"), tokens=("tokens_per_step", "max"),
                                      layers=("layers", "max"))
    return ranked.sort_values(["n", "tokens", "layers"], ascending=False).index[0]
