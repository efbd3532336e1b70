import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from revbench.cli import main
from revbench.data import Workload
from revbench.estimate import estimate_method, fit_method
from revbench.estimate.scale_out import RankPeaks
from revbench.methods import parse_method
from revbench.models import ModelSpec
from revbench.reports.paper_scale import CACHE, CURVES_CSV, PLOT, TABLE_CSV, TIMELINE, Point, paper_scale_section
from revbench.reports.paper_scale_gpus import CACHE as GPUS_CACHE
from revbench.reports.paper_scale_gpus import TABLE_CSV as GPUS_CSV
from revbench.reports.paper_scale_gpus import GpusPoint, gpus_section
from revbench.reports.paper_scale_long import CACHE as LONG_CACHE
from revbench.reports.paper_scale_long import TABLE_CSV as LONG_CSV
from revbench.reports.paper_scale_long import LongPoint, long_section
from revbench.spec import TrainSpec

COMBINATIONS = ("standard", "checkpointing", "revffn", "checkpoint+adamw+chunked", "revffn+adamw+chunked",
                "zero2-offload")
POINT = Point(model="tiny-qwen2-moe", layers=1, dtype="float32", seq=64, batches=(1, 2), table_batch=2,
              combinations=COMBINATIONS, options={"chunk_tokens": 16}, budget=64 * 2**20,
              long_context=("revffn+adamw+chunked",), seq_batches=(2,), seq_cap=4096)


def test_paper_scale_section_writes_curves_table_plot_and_ratio_and_reuses_them(tmp_path: Path) -> None:
    out = tmp_path / "report"
    markdown = paper_scale_section(out, POINT)
    curves = pd.read_csv(out / CURVES_CSV)
    assert set(curves["method"]) == set(COMBINATIONS) and sorted(set(curves["tokens"])) == [64, 128]
    assert (curves["device"] > 0).all() and (curves[curves["method"] == "zero2-offload"]["host"] > 0).all()
    table = pd.read_csv(out / TABLE_CSV).set_index("method")
    assert set(table["fits 64 MiB"]) <= {"yes", "no"} and table.loc["zero2-offload", "host"] != "0"
    assert "True" not in table.to_string() and "False" not in table.to_string()
    assert (out / PLOT).is_file()
    # The longest sequence, searched for the long-context compositions only, is the estimate's own fit.
    spec = replace(POINT.spec("revffn+adamw+chunked"), workload=Workload(batch=2, seq=64, data="synthetic"))
    fit = fit_method("revffn+adamw+chunked", spec, POINT.budget, "seq", "cuda", cap=POINT.seq_cap)
    assert table.loc["revffn+adamw+chunked", "max seq @ batch 2"] == f"{fit.largest:,}"
    assert table.loc["standard", "max seq @ batch 2"] == "-"
    assert "revffn ÷ checkpointing" in markdown and "The paper's ratio" in markdown
    assert "The closest to the paper's 0.60: " in markdown
    assert "## At paper scale" in markdown and "Model-state arithmetic" in markdown
    # One step of the paper's pair and the best on-GPU composition, event by event: each peak is its curve's.
    timelines = pd.read_csv((out / TIMELINE).with_suffix(".csv"))
    assert list(dict.fromkeys(timelines["method"]))[:2] == ["checkpointing", "revffn"]
    at_table = curves[curves["batch"] == POINT.table_batch].set_index("method")["device"]
    for method, rows in timelines.groupby("method"):
        assert rows["total"].max() == at_table[method], method
    assert f"]({TIMELINE})" in markdown
    # A second render with the same source and points reuses the figures instead of estimating again.
    figures = json.loads((out / CACHE).read_text())
    figures["seconds"] = 12345
    (out / CACHE).write_text(json.dumps(figures))
    assert "Computed in 12345 s" in paper_scale_section(out, POINT)


def test_report_without_records_needs_paper_scale(capsys) -> None:
    assert main(["report"]) == 2
    assert "--paper-scale" in capsys.readouterr().err


GPUS_POINT = GpusPoint(models=("tiny-qwen2-moe",), layers=2, dtype="float32", seq=32, gpus=2, budget=40 * 2**20,
                       compositions=("fsdp2", "checkpoint+zero3-offload+full", "revffn+zero3-offload+full"), cap=64)


def test_the_multi_gpu_part_finds_each_largest_batch_and_reuses_it(tmp_path: Path) -> None:
    markdown = gpus_section(tmp_path, GPUS_POINT)
    table = pd.read_csv(tmp_path / GPUS_CSV).set_index("method")
    assert list(table.index) == list(GPUS_POINT.compositions) and "On 2 GPUs of 40 MiB" in markdown
    # Each answer is the largest per-GPU batch whose per-GPU peak (`revbench estimate --gpus 2`) fits the budget.
    spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2, dtype="float32"),
                     workload=Workload(batch=1, seq=32, data="synthetic"))
    peaks = RankPeaks(spec, "cuda", 2)
    for name in GPUS_POINT.compositions:
        batch = int(table.loc[name, "max batch per GPU"])
        assert table.loc[name, "global batch (2 GPUs)"] == 2 * batch
        composition = parse_method(name)
        assert peaks.peak(composition, 2, batch).per_gpu <= GPUS_POINT.budget
        assert peaks.peak(composition, 2, batch + 1).per_gpu > GPUS_POINT.budget
    figures = json.loads((tmp_path / GPUS_CACHE).read_text())
    figures["seconds"] = 54321
    (tmp_path / GPUS_CACHE).write_text(json.dumps(figures))
    assert "computed in 54321 s" in gpus_section(tmp_path, GPUS_POINT)


LONG_POINT = LongPoint(model="tiny-qwen2-moe", layers=2, dtype="float32", activations=("checkpoint", "revffn"),
                       tile_tokens=256, chunk_tokens=64, start=256, cap=8192, budget=24 * 2**20)


def test_the_long_context_part_finds_each_longest_sequence_tiled_and_not(tmp_path: Path) -> None:
    markdown = long_section(tmp_path, LONG_POINT)
    figures = json.loads((tmp_path / LONG_CACHE).read_text())
    assert "The longest sequence on one GPU of 24 MiB, batch 1" in markdown
    for row in figures["rows"]:
        # Each answer is the longest sequence whose estimate (with the row's options) fits the budget.
        options = {"chunk_tokens": 64, **({"tile_tokens": 256} if row["tiled"] else {})}
        spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2, dtype="float32"),
                         workload=Workload(batch=1, seq=row["largest_seq"], data="synthetic"), options=options)
        assert estimate_method(row["method"], spec, target="cuda").peak_bytes <= LONG_POINT.budget
        longer = replace(spec, workload=Workload(batch=1, seq=row["largest_seq"] + 1, data="synthetic"))
        assert estimate_method(row["method"], longer, target="cuda").peak_bytes > LONG_POINT.budget, row
    table = pd.read_csv(tmp_path / LONG_CSV).set_index("activations")
    assert list(table.index) == ["checkpoint", "revffn"]
    by = {(r["activations"], r["tiled"]): r["largest_seq"] for r in figures["rows"]}
    assert by[("revffn", True)] > by[("revffn", False)]  # tiling leaves the reversible stack's boundaries out too
    figures["seconds"] = 9876
    (tmp_path / LONG_CACHE).write_text(json.dumps(figures))
    assert "computed in 9876 s" in long_section(tmp_path, LONG_POINT)
