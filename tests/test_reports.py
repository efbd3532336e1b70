"""Reports from records: paper reference data, the model-state arithmetic, tables, every plot, sections.

The records here are built in the test (configs from the real planner, figures chosen to vary with depth,
sequence and batch) so that every plot and table has something to show without minutes of real runs; the
end-to-end test in test_orchestrator.py renders a report from real runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib import image

from revbench.data import Workload
from revbench.models import ModelSpec
from revbench.orchestrator import Suite, plan_run
from revbench.records import RunRecord, append_record
from revbench.reports import render, sections
from revbench.reports.frame import load_records, runs_frame, summarize
from revbench.reports.paper import load_paper_reference, model_state_note, parameter_count_of
from revbench.reports.tables import budget_table, readable

MiB = 2**20


def make_record(method: str, layers: int = 2, batch: int = 2, seq: int = 64, status: str = "ok",
                budget: str | None = None, search_key: str | None = None) -> RunRecord:
    suite = Suite(name="fixture", model=ModelSpec(layers=layers), workload=Workload(batch=batch, seq=seq),
                  methods=[method], device="cpu", memory_budget=budget)
    run = plan_run(suite, method, search_key=search_key)
    saves = 0.25 if method == "checkpointing" else 1.0
    params = layers * 2 * MiB
    activations = int(layers * batch * seq * 1024 * saves)
    step_s = 0.01 * layers * batch * seq / 64 / saves ** 0.5
    metrics = {} if status != "ok" else {
        "steps_timed": 1, "step_time_s": {"median": step_s, "p10": step_s, "p90": step_s, "min": step_s, "max": step_s},
        "samples_per_s": batch / step_s, "tokens_per_s": batch * seq / step_s,
        "memory": {
            "tensor_bytes": {"params": params, "grads": params, "optimizer": 2 * params, "activations": activations,
                             "method": "profiler", "total": 4 * params + activations},
            "cuda_allocator": {"max_allocated_bytes": None, "unavailable": "no CUDA allocator on device 'cpu'"},
            "nvml": {"device_used_peak_bytes": None, "unavailable": "NVML reads NVIDIA GPUs only"},
            "host": {"peak_rss_bytes": 500 * MiB, "start_rss_bytes": 450 * MiB, "samples": 10},
            # the step as measure/timeline.compact keeps it: states, forward's activations, backward's gradients
            "timeline": {"events": 3, "columns": ["event", "params", "grads", "optimizer", "activations"],
                         "phases": "-fbo", "rows": [[0, params, 0, 2 * params, 0],
                                                    [1, params, 0, 2 * params, activations],
                                                    [2, params, params, 2 * params, activations],
                                                    [3, params, params, 2 * params, 0]], "seconds": 0.001},
        },
    }
    losses = [5.5 - 0.2 * i for i in range(3)] if status == "ok" else [5.5]
    error = None if status == "ok" else "BudgetExceededError: peak tensor bytes exceed the memory budget"
    return RunRecord(run_id=run.run_id, suite="fixture", method=method, status=status, config=run.config,
                     env={"torch": "test", "cpu": "test cpu"}, error=error, losses=losses, metrics=metrics,
                     started="2026-01-01T00:00:00+00:00", duration_s=1.0)


def sweep_records() -> list[RunRecord]:
    records = []
    for method in ("standard", "checkpointing"):
        records += [make_record(method, layers=n) for n in (1, 2, 4)]
        records += [make_record(method, seq=s) for s in (32, 128)]
        records += [make_record(method, batch=b) for b in (1, 4)]
    # a budget search over batch: standard fits 1, 2 and 3, not 4; checkpointing fits up to 8
    for batch, status in ((1, "ok"), (2, "ok"), (4, "oom"), (3, "ok")):
        records.append(make_record("standard", batch=batch, status=status, budget="64MiB", search_key="workload.batch"))
    for batch in (1, 2, 4, 8):
        records.append(make_record("checkpointing", batch=batch, budget="64MiB", search_key="workload.batch"))
    return records


def write_results(directory: Path, records: list[RunRecord]) -> Path:
    for record in records:
        append_record(directory, record)
    return directory


def test_paper_reference_holds_the_reported_numbers_with_their_source() -> None:
    reference = load_paper_reference()
    assert reference.provenance == "from summaries, baseline rows uncertain"
    assert reference.paper["arxiv"] == "2512.20920v1" and reference.baseline == "checkpointing"
    baseline, revffn = reference.row("checkpointing"), reference.row("revffn")
    assert baseline.peak_vram_gb == 65.4 and "uncertain" in baseline.certainty
    assert (revffn.peak_vram_gb, revffn.samples_per_s) == (39.5, 24.6)
    assert (revffn.gsm8k, revffn.mmlu, revffn.mt_bench, revffn.multilingual) == (75.1, 66.7, 7.65, 38.8)
    assert "H800" in reference.hardware


def test_model_state_arithmetic_is_computed_from_the_preset() -> None:
    reference = load_paper_reference()
    count = parameter_count_of("qwen1.5-moe-a2.7b")
    assert count == 14_315_784_192  # Qwen1.5-MoE-A2.7B's published size, 14.3B
    note = model_state_note(reference)
    assert f"{count:,} parameters" in note and "8 bytes per parameter" in note
    assert f"{count * 8 / 2**30:,.1f} GiB" in note  # about 107 GiB
    assert f"{count * 8 / 65.4e9:.2f} times the 65.4 GB" in note and "cannot have held" in note
    assert "a 40% cut" in note  # 65.4 -> 39.5, against the claimed ~49%


def test_a_retried_run_is_reported_by_its_latest_record(tmp_path: Path) -> None:
    failed = make_record("standard", status="oom")
    retried = make_record("standard")
    assert failed.run_id == retried.run_id
    records = load_records(write_results(tmp_path, [failed, retried]))
    assert [r.status for r in records] == ["ok"]


def test_summary_merges_repeats_and_budget_table_reads_the_search() -> None:
    frame = runs_frame(sweep_records())
    summary = summarize(frame)
    assert not summary.duplicated(["point", "variant"]).any()
    table = budget_table(frame).set_index("method")
    assert table.loc["standard", "largest fit"] == 3 and table.loc["standard", "first OOM"] == 4
    assert table.loc["checkpointing", "largest fit"] == 8 and pd.isna(table.loc["checkpointing", "first OOM"])
    assert table.loc["standard", "budget"] == "64 MiB"


def test_readable_tables_put_one_byte_unit_in_each_header() -> None:
    table = readable(pd.DataFrame({"peak bytes": [512 * MiB, 3 * 2**30], "small bytes": [MiB, math.nan]}))
    assert list(table.columns) == ["peak (GiB)", "small (MiB)"]
    assert list(table["peak (GiB)"]) == ["0.5", "3.0"] and list(table["small (MiB)"]) == ["1.0", "n/a"]


def test_report_of_a_sweep_draws_every_plot_and_table(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", sweep_records())
    index = render.render_report(results, tmp_path / "report")
    text = index.read_text()
    expected = ["memory_vs_throughput", "memory_vs_layers", "memory_vs_seq", "memory_vs_batch", "memory_breakdown",
                "loss_curves", "largest_fit", "memory_timeline"]
    for name in expected:
        png = index.parent / f"{name}.png"
        assert f"]({name}.png)" in text
        pixels = image.imread(png)
        assert pixels.shape[0] >= 400 and pixels.std() > 0
    for name in ("results", "memory", "budget", "paper", "runs"):
        assert (index.parent / f"{name}.csv").is_file()
    assert "## What fits the memory budget" in text and "not drawn" not in text
    # the search's OOM probe is its answer, shown as a step of the search, not as a run that failed
    assert "## Runs that did not finish" not in text and not (index.parent / "failures.csv").exists()
    budget = pd.read_csv(index.parent / "budget.csv").set_index("method")
    assert budget.loc["standard", "search path"] == "1 fits → 2 fits → 4 OOM → 3 fits"


def test_a_rerender_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", sweep_records())
    report = tmp_path / "report"
    render.render_report(results, report)
    (report / "notes.txt").write_text("mine")  # not revbench's: kept
    failed = make_record("standard", batch=2, status="error", budget="64MiB", search_key="workload.batch")
    write_results(tmp_path / "results", [failed])  # its failures table appears
    render.render_report(results, report)
    assert (report / "failures.csv").is_file()
    only = write_results(tmp_path / "other", [make_record("standard")])
    render.render_report(only, report)  # one run: no sweep, budget or failures any more
    for stale in ("failures.csv", "budget.csv", "largest_fit.png", "memory_vs_layers.png"):
        assert not (report / stale).exists(), stale
    assert (report / "notes.txt").read_text() == "mine" and (report / "report.md").is_file()


def test_a_section_is_added_by_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sections, "SECTIONS", list(sections.SECTIONS))

    def at_paper_scale(ctx: render.ReportContext) -> str:
        return f"## At paper scale\n\n{len(ctx.records)} records seen.\n"

    render.add_section(at_paper_scale, after="paper_comparison")
    with pytest.raises(ValueError, match="no report section 'nope'"):
        render.add_section(at_paper_scale, after="nope")
    results = write_results(tmp_path / "results", [make_record("standard"), make_record("checkpointing")])
    text = render.render_report(results, tmp_path / "report").read_text()
    assert "## At paper scale\n\n2 records seen." in text
    assert text.index("## Beside the paper") < text.index("## At paper scale") < text.index("## Plots")
