import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from revbench.cli import main
from revbench.data import Workload
from revbench.estimate import fit_method
from revbench.reports.paper_scale import CACHE, CURVES_CSV, PLOT, TABLE_CSV, TIMELINE, Point, paper_scale_section

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
