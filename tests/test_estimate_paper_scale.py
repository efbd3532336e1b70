import json
from pathlib import Path

import pandas as pd

from revbench.reports.paper_scale import CACHE, ESTIMATES_CSV, FITS_CSV, paper_scale_section

SUITE = """
name: paper-tiny
description: the paper suite's shape on a 1-layer tiny model
device: cuda
model:
  preset: tiny-qwen2-moe
  layers: 1
workload:
  batch: 2
  seq: 64
methods: [standard, zero2-offload]
"""


def test_paper_scale_section_writes_its_tables_and_reuses_them(tmp_path: Path) -> None:
    suite = tmp_path / "paper-tiny.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "report"
    markdown = paper_scale_section(out, suite=str(suite), fit=False)
    table = pd.read_csv(out / ESTIMATES_CSV).set_index("method")
    assert table.loc["standard", "status"] == "ok" and table.loc["zero2-offload", "status"] == "ok"
    # CUDA's default AdamW (foreach) holds a temporary the size of the weights that the per-parameter loop avoids.
    assert table.loc["standard", "peak bytes"] > table.loc["standard", "peak bytes, foreach=False"]
    assert bool(table.loc["standard", "fits 80 GB"]) and bool(table.loc["zero2-offload", "fits 80 GB"])
    assert "## At paper scale" in markdown and "Model-state arithmetic" in markdown and ESTIMATES_CSV in markdown
    assert "65.4" in markdown  # the paper's reported checkpointing peak, from the paper reference data
    assert (out / FITS_CSV).is_file()
    # A second render with the same source and point reuses the figures instead of estimating again.
    figures = json.loads((out / CACHE).read_text())
    figures["seconds"] = 12345
    (out / CACHE).write_text(json.dumps(figures))
    assert "Computed in 12345 s" in paper_scale_section(out, suite=str(suite), fit=False)
