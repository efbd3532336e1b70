"""Regression checks: compare the records of a run against reference records, metric by metric.

Runs are matched by what they measured: suite, model, method (with its options), workload, plus the
repeat, GPU count and memory budget. Each metric has a direction and a default tolerance:
- exact tensor bytes are deterministic, so any growth fails (tolerance 0 %);
- the CUDA allocator's and NVML's figures move a little between runs, so they get a percentage;
- host RSS, step time, throughput and the final loss are noisy or legitimately change: they are
  reported, and gate only when a tolerance is given for them (`--tolerance tokens_per_s=10`).
A change beyond the tolerance in the good direction passes as "improved" (the reference is then stale).

Records from different device kinds are never compared (`device_kind`): the check refuses instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revbench.records import RunRecord, latest, read_records, run_config_problem

if TYPE_CHECKING:  # pandas is imported where a table is built, not by `revbench --help`
    import pandas as pd

LOWER, HIGHER, EITHER = "lower", "higher", "either"  # which direction is better
REPORT_ONLY = "report only"


@dataclass(frozen=True)
class Metric:
    name: str  # the flattened path in a record's metrics (as in the reports), or "loss.last"
    better: str
    tolerance_pct: float | None  # None: reported only, unless a tolerance is asked for
    is_bytes: bool = True


METRICS = (
    *(Metric(f"memory.tensor_bytes.{c}", LOWER, 0.0)
      for c in ("total", "device", "host", "params", "grads", "optimizer", "workspace", "activations")),
    Metric("memory.cuda_allocator.max_allocated_bytes", LOWER, 2.0),
    Metric("memory.cuda_allocator.max_reserved_bytes", LOWER, 5.0),
    Metric("memory.nvml.device_used_peak_bytes", LOWER, 5.0),
    Metric("memory.nvml.process_used_peak_bytes", LOWER, 5.0),
    Metric("memory.host.peak_rss_bytes", LOWER, None),
    Metric("step_time_s.median", LOWER, None, is_bytes=False),
    Metric("samples_per_s", HIGHER, None, is_bytes=False),
    Metric("tokens_per_s", HIGHER, None, is_bytes=False),
    Metric("loss.last", EITHER, None, is_bytes=False),
)


Tolerances = dict[tuple[str | None, str], float | None]  # (method or None for all, metric) -> percent


def parse_tolerances(items: Iterable[str]) -> Tolerances:
    """`[method:]metric=pct` overrides. A metric by its full name or any dotted part of it (`tensor_bytes`,
    `cuda_allocator`, `tokens_per_s`); a method prefix limits it to that method's runs; `pct` may be `off`
    to report a metric without gating it."""
    out: Tolerances = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--tolerance {item!r}: write [method:]metric=percent, e.g. tokens_per_s=10")
        method, _, metric = key.strip().rpartition(":")
        if method:
            from revbench.methods import METHODS  # torch comes with it: only when a method is named

            if method not in METHODS:
                raise ValueError(f"--tolerance {item!r}: no method {method!r}; the methods are {', '.join(METHODS)}")
        matched = [m.name for m in METRICS if _matches(metric, m.name)]
        if not matched:
            raise ValueError(f"--tolerance {item!r}: no metric {metric!r}; the metrics are "
                             f"{', '.join(m.name for m in METRICS)}")
        try:
            pct = None if value.strip() == "off" else float(value.strip().rstrip("%"))
        except ValueError:
            raise ValueError(f"--tolerance {item!r}: {value!r} is not a percentage (or off)") from None
        if pct is not None and pct < 0:
            raise ValueError(f"--tolerance {item!r}: a tolerance cannot be negative")
        out.update(dict.fromkeys([(method or None, name) for name in matched], pct))
    return out


def tolerance_for(tolerances: Tolerances, method: str, metric: Metric) -> float | None:
    for key in ((method, metric.name), (None, metric.name)):
        if key in tolerances:
            return tolerances[key]
    return metric.tolerance_pct


def _matches(key: str, name: str) -> bool:
    parts = name.split(".")
    return key == name or any(".".join(parts[i:j]) == key for i in range(len(parts))
                              for j in range(i + 1, len(parts) + 1))


def device_kind(record: RunRecord) -> str:
    """What a record may be compared across: 'cpu', or 'cuda:<GPU name>' (the GPU of the run's
    environment stamp). Tensor bytes agree across CPUs; allocator and NVML figures, kernels and so bytes
    differ between GPU models, so each GPU model is its own kind."""
    device = str(record.config.get("device", "cpu"))
    if not device.startswith("cuda"):
        return "cpu"
    return f"cuda:{record.env.get('gpu') or 'unknown GPU'}"


def _label(config: dict[str, Any]) -> tuple[str, str, str]:
    model, workload, options = config.get("model", {}), config.get("workload", {}), config.get("options") or {}
    model_label = f"{model.get('preset')} L{model.get('layers')} {model.get('dtype')}"
    workload_label = f"{workload.get('batch')}×{workload.get('seq')}"
    extras = [f"{k}={v}" for k, v in sorted(options.items())]
    return model_label, ", ".join(extras), workload_label


def run_key(record: RunRecord) -> tuple[str, ...]:
    """The identity of what a record measured (everything but the device and when it ran)."""
    config = record.config
    return (record.suite, json.dumps(config.get("model"), sort_keys=True), record.method,
            json.dumps(config.get("options") or {}, sort_keys=True),
            # A workload field left at None (e.g. `tokenizer`, added later) matches records written before it existed.
            json.dumps({k: v for k, v in (config.get("workload") or {}).items() if v is not None}, sort_keys=True),
            str(config.get("repeat", 0)), str(config.get("gpus", 1)), str(config.get("memory_budget_bytes")),
            str(config.get("ranks", 1)), str(config.get("nodes", 1)))


def run_label(record: RunRecord) -> str:
    model, options, workload = _label(record.config)
    method = f"{record.method} ({options})" if options else record.method
    label = f"{record.suite} · {model} · {method} · {workload}"
    if record.config.get("ranks", 1) > 1:
        label += f" · {record.config['ranks']} ranks"
    if record.config.get("nodes", 1) > 1:
        label += f" · {record.config['nodes']} nodes"
    if record.config.get("memory_budget_bytes"):
        label += f" · budget {record.config['memory_budget_bytes'] / 2**20:,.0f} MiB"
    repeat = record.config.get("repeat", 0)
    return label + (f" · r{repeat}" if repeat else "")


# Config fields that must agree between matched runs for their figures to mean the same thing.
_SAME_SETUP = ("optimizer", "seed", "steps", "warmup")


def metric_value(record: RunRecord, name: str) -> float | None:
    if name == "loss.last":
        return record.losses[-1] if record.losses else None
    value: Any = record.metrics
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load(path: str | Path) -> list[RunRecord]:
    """The last record of each run id (a retried run is appended again)."""
    records = latest(read_records(path, run_config_problem))
    if not records:
        raise ValueError(f"{str(path)!r} holds no run records")
    return records


@dataclass
class CheckResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per metric or run that moved or failed
    notes: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["verdict"] in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> pd.DataFrame:
        """Runs and gated figures that changed, failures first."""
        import pandas as pd

        columns = ["run", "metric", "reference", "current", "change", "tolerance", "verdict"]
        order = {v: i for i, v in enumerate((*FAILING, "improved", "moved", "new run", "figure lost", "new figure"))}
        rows = sorted((r for r in self.rows if r["tolerance"] != REPORT_ONLY),
                      key=lambda r: order.get(r["verdict"], len(order)))
        return pd.DataFrame(rows, columns=columns)

    def reported(self) -> pd.DataFrame:
        """The ungated figures' changes in percent, one row per run."""
        import pandas as pd

        rows = [r for r in self.rows if r["tolerance"] == REPORT_ONLY and "pct" in r]
        if not rows:
            return pd.DataFrame()
        table = pd.DataFrame(rows).pivot(index="run", columns="metric", values="pct")
        return table.apply(lambda column: column.map(lambda v: "" if pd.isna(v) else percent(v)))


def percent(pct: float) -> str:
    """A signed change in percent that reads at a glance: +0.4 %, -12.0 %, +3,512.3 % (never 3.51e+03)."""
    return "new" if math.isinf(pct) else f"{pct:+,.1f} %"


class MixedDevicesError(ValueError):
    """Records from different device kinds, which are never compared."""


FAILING = ("REGRESSION", "MISSING RUN", "STATUS CHANGED", "SETUP CHANGED", "FIGURE LOST")


def _fmt(value: float | None, is_bytes: bool) -> str:
    if value is None:
        return "n/a"
    return f"{int(value):,} B" if is_bytes else f"{value:,.4g}"


def _compare(metric: Metric, ref: float | None, cur: float | None, tolerance: float | None) -> dict[str, Any] | None:
    tol_text = REPORT_ONLY if tolerance is None else f"{tolerance:g} %"
    row = {"metric": metric.name, "reference": _fmt(ref, metric.is_bytes), "current": _fmt(cur, metric.is_bytes),
           "tolerance": tol_text}
    if ref is None and cur is None:
        return None
    if cur is None:  # e.g. NVML stopped reading: a gated figure that disappears fails
        return {**row, "change": "", "verdict": "FIGURE LOST" if tolerance is not None else "figure lost"}
    if ref is None:
        return {**row, "change": "", "verdict": "new figure"}
    if cur == ref:
        return None
    pct = (cur - ref) / abs(ref) * 100 if ref else math.inf
    delta = f"{cur - ref:+,.0f} B" if metric.is_bytes else f"{cur - ref:+,.4g}"
    row["change"], row["pct"] = f"{delta} ({percent(pct)})", pct
    worse = {LOWER: pct > 0, HIGHER: pct < 0, EITHER: True}[metric.better]
    beyond = tolerance is not None and abs(pct) > tolerance
    row["verdict"] = ("REGRESSION" if worse else "improved") if beyond else "moved"
    return row


def check(current: list[RunRecord], reference: list[RunRecord],
          tolerances: Tolerances | None = None) -> CheckResult:
    """Compare `current` against `reference`. Raises MixedDevicesError when their device kinds differ."""
    tolerances = tolerances or {}
    kinds_cur = sorted({device_kind(r) for r in current})
    kinds_ref = sorted({device_kind(r) for r in reference})
    if kinds_cur != kinds_ref:
        raise MixedDevicesError(f"refusing to compare records of different device kinds: the current records ran on "
                         f"{', '.join(kinds_cur)}, the reference on {', '.join(kinds_ref)}; compare against a "
                         "reference recorded on the same kind of device")
    result = CheckResult()
    cur_by_key = {run_key(r): r for r in current}
    ref_by_key = {run_key(r): r for r in reference}
    for key, ref in ref_by_key.items():
        label = run_label(ref)
        cur = cur_by_key.get(key)
        if cur is None:
            result.rows.append({"run": label, "metric": "status", "reference": ref.status, "current": "absent",
                                "change": "", "tolerance": "", "verdict": "MISSING RUN"})
            continue
        result.compared += 1
        setup = [f"{k} {ref.config.get(k)!r} -> {cur.config.get(k)!r}" for k in _SAME_SETUP
                 if ref.config.get(k) != cur.config.get(k)]
        if setup:
            result.rows.append({"run": label, "metric": "config", "reference": "", "current": "; ".join(setup),
                                "change": "", "tolerance": "", "verdict": "SETUP CHANGED"})
            continue
        if cur.status != ref.status:
            result.rows.append({"run": label, "metric": "status", "reference": ref.status, "current": cur.status,
                                "change": (cur.error or "").splitlines()[0][:80] if cur.error else "",
                                "tolerance": "", "verdict": "STATUS CHANGED"})
            continue
        if cur.status != "ok":
            continue
        for metric in METRICS:
            tolerance = tolerance_for(tolerances, ref.method, metric)
            row = _compare(metric, metric_value(ref, metric.name), metric_value(cur, metric.name), tolerance)
            if row:
                result.rows.append({"run": label, **row})
    for key, cur in cur_by_key.items():
        if key not in ref_by_key:
            result.rows.append({"run": run_label(cur), "metric": "status", "reference": "absent",
                                "current": cur.status, "change": "", "tolerance": "", "verdict": "new run"})
    result.notes += _env_notes(current, reference)
    return result


def _env_notes(current: list[RunRecord], reference: list[RunRecord]) -> list[str]:
    """Version differences do not refuse a check (catching their effect is its point) but are named."""
    notes = []
    for key in ("torch", "transformers", "deepspeed", "peft", "cuda", "driver", "cpu"):
        cur = sorted({str(r.env.get(key)) for r in current})
        ref = sorted({str(r.env.get(key)) for r in reference})
        if cur != ref:
            notes.append(f"{key}: reference {', '.join(ref)}; current {', '.join(cur)}")
    return notes
