"""A step's memory timeline (revbench/measure/timeline.py): every event's live bytes by category, drawn by
`revbench estimate --timeline` and kept in every run's record; its largest total is the reported peak, to the byte."""

import json
from pathlib import Path

import pandas as pd

from revbench.cli import main
from revbench.estimate import estimate_method
from revbench.harness import run_method
from revbench.measure.categories import CATEGORIES
from revbench.measure.phases import PhaseRanges
from revbench.measure.profiler_bytes import ProfiledStep
from revbench.measure.timeline import RECORD_POINTS, downsample, expand
from revbench.methods import TrainSpec
from revbench.models import ModelSpec
from revbench.workload import Workload

METHODS = ("standard", "checkpointing", "revffn", "revexact", "checkpoint+adamw-8bit-in-backward+chunked")


def test_estimate_timeline_peaks_equal_the_estimates_to_the_byte(tmp_path: Path, capsys) -> None:
    picture = tmp_path / "timeline.png"
    argv = ["estimate", "--model", "tiny-qwen2-moe", "--layers", "2", "--device", "cpu", "--batch", "2", "--seq",
            "64", "--method", ",".join([*METHODS, "zero3-offload"]), "--jobs", "1", "--timeline", str(picture)]
    assert main(argv) == 0
    assert picture.stat().st_size > 10_000
    frame = pd.read_csv(picture.with_suffix(".csv"))
    assert set(frame["method"]) == set(METHODS)  # ZeRO offload is a layout model, with no event order
    assert "zero3-offload: none (DeepSpeed ZeRO, offloaded or not," in capsys.readouterr().err
    spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2), workload=Workload(2, 64))
    for method, rows in frame.groupby("method"):
        assert rows["total"].max() == estimate_method(method, spec, target="cpu").peak_bytes, method
        assert (rows[list(CATEGORIES)].sum(axis=1) == rows["total"]).all()
        assert rows["event"].tolist() == list(range(len(rows)))
        assert {"forward", "backward", "optimizer"} <= set(rows["phase"].dropna())


def test_downsampling_keeps_the_peak_and_the_ends() -> None:
    totals = [5, 7, 3, 9, 2, 2, 8, 1, 4, 6, 30, 5, 1]
    frame = pd.DataFrame({"event": range(len(totals)), "total": totals})
    small = downsample(frame, points=5)
    assert len(small) <= 5
    assert small["total"].max() == 30
    assert small["event"].iloc[0] == 0 and small["event"].iloc[-1] == len(totals) - 1
    assert downsample(frame, points=100).equals(frame)


def test_timeline_wants_a_picture_path_and_one_gpu(capsys) -> None:
    assert main(["estimate", "--model", "tiny-qwen2-moe", "--timeline", "out.csv"]) == 2
    assert "give a picture's path ending in .png, .svg, .pdf" in capsys.readouterr().err
    assert main(["estimate", "--model", "tiny-qwen2-moe", "--gpus", "2", "--timeline", "out.png"]) == 2
    assert "--timeline draws one GPU's step" in capsys.readouterr().err


def test_a_run_keeps_its_timeline_in_its_record_small_and_exact() -> None:
    for method in ("standard", "revffn"):
        spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2), workload=Workload(2, 128))
        memory = run_method(method, spec, steps=1, warmup=1).metrics["memory"]
        timeline = memory["timeline"]
        frame = expand(timeline)
        assert frame["total"].max() == memory["tensor_bytes"]["total"], method  # the profiled step's peak
        assert len(frame) <= RECORD_POINTS and timeline["events"] > len(frame)
        assert len(json.dumps(timeline)) < 16_000
        assert pd.isna(frame["phase"].iloc[0]) and {"forward", "backward", "optimizer"} <= set(frame["phase"])


def test_the_profiler_timeline_follows_the_events_it_replays() -> None:
    # Three device allocations over states allocated before the window: the timeline starts at the states and
    # moves by each allocation and free, the free of a block from before the window not reported (as the profiler).
    step = ProfiledStep(None, "cpu", [(1, 100, 10), (2, 50, 20), (1, -100, 30), (9, -7, 40), (3, 20, 50)],
                        PhaseRanges([(0, 25, "forward"), (26, 60, "backward")]),
                        before={("cpu", 7): ("params", 1000)}, after={("cpu", 7): ("params", 1000),
                                                                     ("cpu", 3): ("grads", 20)}, host=set())
    frame = step.timeline()
    assert frame["total"].tolist() == [1000, 1100, 1150, 1050, 1070]
    assert frame["grads"].tolist() == [0, 0, 0, 0, 20]  # allocated in the window and still live: a gradient
    assert frame["total"].max() == step.peak().total
    assert frame["phase"].fillna("-").tolist() == ["-", "forward", "forward", "backward", "backward"]
