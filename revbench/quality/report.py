"""The quality report: held-out loss curves, the final table and the conversion table, from the records only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter

from revbench.quality.heldout import perplexity
from revbench.records import RunRecord, latest, read_records

REPORT = "README.md"



def split(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord], list[RunRecord]]:
    """(upcycle checks, conversion-only evaluations, training runs)."""
    upcycles = [r for r in records if r.method == "upcycle"]
    conversions = [r for r in records if r.method != "upcycle" and r.config.get("steps") == 0]
    runs = [r for r in records if r.method != "upcycle" and r.config.get("steps", 0) > 0]
    return upcycles, conversions, runs


def _trainable(record: RunRecord) -> str:
    stats = record.method_stats
    if "trainable_parameters" in stats:
        return f"{stats['trainable_parameters'] / 1e6:.2f}M (LoRA)"
    stage = record.config.get("options", {}).get("stage")
    return {"two-stage": "adapters, then all", "warmup": "adapters only"}.get(stage, "all")


def final_table(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per training run: held-out loss before training, after a warm-up, at the end."""
    reference = next((r.metrics.get("final_heldout_loss") for r in runs
                      if r.method == "standard" and r.status == "ok"), None)
    rows = []
    for r in runs:
        m = r.metrics
        final = m.get("final_heldout_loss")
        rows.append({
            "run": r.config["label"], "method": r.method, "status": r.status, "trains": _trainable(r),
            "lr": r.config["optimizer"]["lr"], "lr warm-up": r.config.get("lr_warmup_steps"),
            "steps": m.get("steps_done"),
            "held-out loss, step 0": m.get("initial_heldout_loss"),
            "after warm-up": m.get("warmup_heldout_loss"),
            "final held-out loss": final,
            "final perplexity": perplexity(final) if final is not None else None,
            "vs standard": final - reference if final is not None and reference is not None else None,
        })
    return pd.DataFrame(rows)


def reconstruction_line(r: RunRecord) -> str:
    """A reversible run's own account of its backward passes: how inputs were rebuilt and what fell back."""
    st = r.method_stats
    layers = [f"{i}: {n}" for i, n in enumerate(st.get("fallbacks_per_layer", [])) if n]
    by_layer = f" (by layer: {', '.join(layers)})" if layers else ""
    if r.method == "revexact":
        return (f"- {r.config['label']}: {st.get('backwards')} reversible backward passes, every layer input rebuilt "
                f"by integer arithmetic (k = {st.get('side_bits')} side bits, {st.get('side_bit_bytes'):,} "
                f"side-bit bytes per step); {st['fallbacks_total']} checksum mismatches fell back{by_layer}; "
                f"routing flips {st.get('routing_flips')}.\n")
    cache = ""
    if "recomputed_layer_forwards_total" in st:  # records from before the O(L) fallback lack these
        cache = (f" {st['recomputed_layer_forwards_total']} layer forwards recomputed in all (O(L) cache: "
                 f"{st.get('layers_from_cache_last_backward')} layers took their input from it in the last backward, "
                 f"{st.get('fallback_bytes_kept_last_backward'):,} bytes kept); worst input-sketch error "
                 f"{st.get('worst_sketch_error') or 0:.2g};")
    return (f"- {r.config['label']}: {st.get('backwards')} reversible backward passes, fixed point "
            f"{st.get('mean_iterations') or 0:.1f} iterations on average (at most {st.get('max_iterations')}); "
            f"{st['fallbacks_total']} layer inversions missed the tolerance and were recomputed exactly"
            f"{by_layer};{cache} routing flips {st.get('routing_flips')}.\n")


def conversion_table(conversions: list[RunRecord], upcycled_loss: float | None) -> pd.DataFrame:
    rows = [{"conversion": r.config["label"], "held-out loss before training": r.metrics.get("initial_heldout_loss"),
             "perplexity": perplexity(r.metrics["initial_heldout_loss"]) if r.status == "ok" else None,
             "vs upcycled model": (r.metrics["initial_heldout_loss"] - upcycled_loss
                                   if r.status == "ok" and upcycled_loss is not None else None),
             "status": r.status} for r in conversions]
    return pd.DataFrame(rows)


def curves_figure(runs: list[RunRecord]) -> plt.Figure:
    """Held-out loss against step (left) and the training loss per step (right), on log axes so that runs
    many nats apart stay readable; a marker and dash per run keep coinciding curves (checkpointing) visible."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, r in enumerate(runs):
        curve = r.metrics.get("heldout", {})
        style = {"marker": "osD^vP"[i % 6], "linestyle": ("-", "--", "-.", ":")[i % 4], "label": r.config["label"]}
        (line,) = left.plot(curve.get("step", []), curve.get("loss", []), **style)
        right.plot(range(1, len(r.losses) + 1), r.losses, color=line.get_color(), alpha=0.8,
                   linestyle=style["linestyle"], label=r.config["label"])
        warm = r.config.get("options", {}).get("warmup_steps") if r.config.get("options", {}).get("stage") else None
        if warm is not None:
            left.axvline(warm, color=line.get_color(), linestyle=":", alpha=0.6)
    left.set(xlabel="optimizer step", ylabel="held-out cross-entropy (nats/token)", title="held-out loss")
    right.set(xlabel="optimizer step", ylabel="training loss (incl. router aux loss)", title="training loss")
    for ax in (left, right):
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _md(frame: pd.DataFrame) -> str:
    """Markdown with 4 significant digits and a dash for a missing value (a run without a warm-up...)."""
    def cell(value: Any) -> Any:
        if isinstance(value, float):
            return "–" if pd.isna(value) else f"{value:.4g}"
        return "–" if value is None else value
    return frame.map(cell).to_markdown(index=False, disable_numparse=True, stralign="right")


def _setup(r: RunRecord) -> str:
    c = r.config
    up, w = c["upcycle"], c["workload"]
    depth = "all layers" if up["layers"] is None else f"first {up['layers']} layers"
    return (f"SmolLM2-135M ({c['source']}, {depth}) upcycled into {up['family']} with {up['experts']} experts, "
            f"top-{up['top_k']}; {c['tokenizer']}; batch {w['batch']} x seq {w['seq']} on CPython's pydoc topics "
            f"(last {w['heldout_fraction']:.0%} of the tokens held out; {c['eval_batches']} fixed held-out "
            f"batches); device {c['device']}")


def render(results_dir: str | Path, out_dir: str | Path) -> Path:
    """Write README.md, final.csv, conversion.csv and curves.png into `out_dir`; returns README.md."""
    records = latest(list(read_records(results_dir)))
    if not records:
        raise ValueError(f"no quality records in {str(results_dir)!r}")
    upcycles, conversions, runs = split(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = ["# Fine-tuning quality on real pretrained weights\n", _setup(records[-1]) + ".\n",
                        f"From the records in `{Path(results_dir).as_posix()}`; `revbench quality` reproduces them "
                        "(suite: `revbench/suites/quality.yaml`).\n"]
    upcycled_loss: Any = None
    for u in upcycles:
        upcycled_loss = u.metrics["upcycled_heldout_loss"]
        parts.append(f"Upcycling check: dense held-out loss {u.metrics['dense_heldout_loss']:.5f}, upcycled MoE "
                     f"{upcycled_loss:.5f} (|difference| {u.metrics['abs_difference']:.1e}).\n")
    if runs:
        table = final_table(runs)
        table.to_csv(out / "final.csv", index=False)
        curves_figure(runs).savefig(out / "curves.png", dpi=120)
        plt.close("all")
        parts += ["## Final table\n", _md(table) + "\n",
                  "Held-out loss is next-token cross-entropy only; the training loss of the MoE models also holds "
                  "the router's load-balancing term. `vs standard` is the final held-out loss minus standard "
                  "fine-tuning's.\n", "![held-out and training loss curves](curves.png)\n"]
        parts += [reconstruction_line(r) for r in runs if "fallbacks_total" in r.method_stats]
        failed = [r for r in runs if r.status != "ok"]
        parts += [f"- {r.config['label']}: {r.status}: {(r.error or '').splitlines()[0]}\n" for r in failed]
    if conversions:
        table = conversion_table(conversions, upcycled_loss)
        table.to_csv(out / "conversion.csv", index=False)
        parts += ["## How far RevFFN conversion moves the pretrained model\n", _md(table) + "\n"]
    path = out / REPORT
    path.write_text("\n".join(parts))
    return path
