"""The paper's reported numbers (kept as JSON data with their source) and our methods beside them.

Only ratios are compared: the paper's absolute figures cannot be full AdamW fine-tuning of its model (the
model-state arithmetic below is computed from the preset's parameter count), and its setup is unknown.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from revbench.reports.frame import ALLOCATED, SAMPLES, TENSOR
from revbench.reports.tables import readable
from revbench.units import BINARY

REFERENCE_FILE = "paper_reference.json"
QUALITY = {"gsm8k": "GSM8K", "mmlu": "MMLU", "mt_bench": "MT-Bench", "multilingual": "multilingual"}
BYTES_PER_VALUE = {"bfloat16": 2}
MODEL_STATES = ("weights", "gradients", "Adam first moment", "Adam second moment")


@dataclass(frozen=True)
class PaperRow:
    method: str
    label: str
    certainty: str
    peak_vram_gb: float | None
    samples_per_s: float | None
    gsm8k: float | None
    mmlu: float | None
    mt_bench: float | None
    multilingual: float | None


@dataclass(frozen=True)
class PaperReference:
    paper: dict[str, str]
    provenance: str
    provenance_detail: str
    hardware: str
    model: dict[str, str]
    baseline: str
    unknown: str
    rows: tuple[PaperRow, ...]
    claims: tuple[dict[str, Any], ...]

    def row(self, method: str) -> PaperRow | None:
        return next((r for r in self.rows if r.method == method), None)

    @property
    def citation(self) -> str:
        return f"{self.paper['title']} ({self.paper['authors']}), arXiv {self.paper['arxiv']}, {self.paper['url']}"


def load_paper_reference(path: str | Path | None = None) -> PaperReference:
    """The packaged reference data, or a file of the same shape."""
    source = Path(path) if path else resources.files("revbench.reports").joinpath(REFERENCE_FILE)
    data = json.loads(source.read_text())
    try:
        rows = tuple(PaperRow(**row) for row in data.pop("rows"))
        reference = PaperReference(rows=rows, claims=tuple(data.pop("claims")), **data)
    except (KeyError, TypeError) as exc:
        names = ", ".join(f.name for f in fields(PaperReference))
        raise ValueError(f"paper reference {str(source)!r} is malformed ({exc}); it needs {names}") from None
    if reference.row(reference.baseline) is None:
        raise ValueError(f"paper reference {str(source)!r}: baseline {reference.baseline!r} has no row")
    return reference


@functools.lru_cache(maxsize=4)
def parameter_count_of(preset: str) -> int:
    """Parameters of a preset's model, built on the meta device (no memory allocated)."""
    from revbench.models import ModelSpec, build_model, parameter_count

    return parameter_count(build_model(ModelSpec(preset, dtype="bfloat16"), device="meta"))


def model_state_note(reference: PaperReference) -> str:
    """Why the paper's absolute GB cannot be full AdamW fine-tuning: the bf16 model states alone."""
    count = parameter_count_of(reference.model["preset"])
    per_param = BYTES_PER_VALUE["bfloat16"] * len(MODEL_STATES)
    total = count * per_param
    baseline = reference.row(reference.baseline)
    revffn = reference.row("revffn")
    lines = [
        f"**Model-state arithmetic.** {reference.model['name']} (preset `{reference.model['preset']}`) has "
        f"{count:,} parameters (counted on the model built on the meta device). Full AdamW fine-tuning in bf16 "
        f"keeps {', '.join(MODEL_STATES)}: {len(MODEL_STATES)} × {BYTES_PER_VALUE['bfloat16']} bytes = "
        f"{per_param} bytes per parameter, {total / 1e9:,.1f} GB = {total / BINARY['GiB']:,.1f} GiB before a "
        "single activation.",
    ]
    if baseline and baseline.peak_vram_gb:
        times = total / (baseline.peak_vram_gb * 1e9)
        if times > 1:
            lines.append(f"That is {times:.2f} times the {baseline.peak_vram_gb} GB reported for {baseline.label}: "
                         "the reported runs cannot have held full bf16 AdamW model states on the GPU (they may "
                         "offload, shard, keep 8-bit states, update part of the model, or count memory "
                         "differently). Compare **ratios**, not absolute GB.")
        else:
            lines.append(f"That fits in the {baseline.peak_vram_gb} GB reported for {baseline.label}.")
    if baseline and revffn and baseline.peak_vram_gb and revffn.peak_vram_gb:
        cut = 1 - revffn.peak_vram_gb / baseline.peak_vram_gb
        for claim in reference.claims:
            lines.append(f"The summaries claim \"{claim['text']}\"; {baseline.peak_vram_gb} → "
                         f"{revffn.peak_vram_gb} GB is a {cut:.0%} cut, so the claim may refer to activation "
                         "memory alone.")
    return " ".join(lines)


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or pd.isna(value) or pd.isna(base) or base == 0:
        return None
    return value / base


def paper_table(point: pd.DataFrame, reference: PaperReference) -> pd.DataFrame:
    """Paper rows and our variants at one point side by side, with ratios to each side's baseline.
    Numeric (bytes, samples/s); the renderer formats it."""
    ours = point.set_index("variant")
    base = ours.loc[reference.baseline] if reference.baseline in ours.index else None
    paper_base = reference.row(reference.baseline)
    ratio = f"÷ {reference.baseline}"
    order = [r.method for r in reference.rows] + [v for v in ours.index if v not in {r.method for r in reference.rows}]
    rows = []
    for name in order:
        paper = reference.row(name)
        mine = ours.loc[name] if name in ours.index else None
        row = {
            "method": name,
            "paper: label": paper.label if paper else None,
            "paper: peak VRAM (GB)": paper.peak_vram_gb if paper else None,
            f"paper: memory {ratio}": _ratio(paper.peak_vram_gb, paper_base.peak_vram_gb) if paper else None,
            "paper: samples/s": paper.samples_per_s if paper else None,
            "ours: status": mine["status"] if mine is not None else "not run",
            "ours: peak tensor bytes": mine[TENSOR] if mine is not None else None,
            f"ours: memory {ratio}": _ratio(mine[TENSOR], base[TENSOR]) if mine is not None and base is not None
            else None,
            "ours: allocator peak bytes": mine[ALLOCATED] if mine is not None else None,
            "ours: samples/s": mine[SAMPLES] if mine is not None else None,
            f"ours: samples/s {ratio}": _ratio(mine[SAMPLES], base[SAMPLES])
            if mine is not None and base is not None else None,
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    if table["ours: allocator peak bytes"].isna().all():  # a CPU run: the allocator figure does not apply
        table = table.drop(columns="ours: allocator peak bytes")
    return table


def format_paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: ratios as ×, then bytes and numbers as every other table."""
    out = table.copy()
    for column in [c for c in out if "÷" in c]:
        out[column] = [f"{v:.2f}×" if pd.notna(v) else "n/a" for v in out[column]]
    return readable(out)


def quality_table(reference: PaperReference) -> pd.DataFrame:
    """The paper's task scores; revbench does not measure task quality."""
    return pd.DataFrame([{"method": r.label, **{label: getattr(r, key) for key, label in QUALITY.items()}}
                         for r in reference.rows]).fillna("n/a")
