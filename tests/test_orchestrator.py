"""`revbench run` end to end: real runs in child processes, records, resume, OOM, crash, timeout, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from matplotlib import image

from revbench.cli import main
from revbench.data import Workload
from revbench.measure.phases import PHASES
from revbench.models import ModelSpec
from revbench.orchestrator import Suite, plan_run
from revbench.orchestrator.launch import execute
from revbench.records import SCHEMA, read_records

ROOT = Path(__file__).resolve().parent.parent
# One layer, one sequence of 32 tokens, one timed step: each run is a few seconds on 2 cores.
TINY = """
model: {preset: tiny-qwen2-moe, layers: 1}
workload: {batch: 1, seq: 32}
device: cpu
steps: 1
warmup: 1
timeout_s: 300
"""


def suite_file(tmp_path: Path, body: str, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{TINY}{body}")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def workers_of(process: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in process.children(recursive=True):
        try:
            if "revbench.orchestrator.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # ended while we looked
            continue
    return found


def test_two_methods_end_to_end_records_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = suite_file(tmp_path, "methods: [standard, checkpointing]\n")
    out, report_dir = tmp_path / "results", tmp_path / "report"
    assert main(["run", str(suite), "--out", str(out), "--report-dir", str(report_dir)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "results.jsonl") in printed and str(report_dir / "report.md") in printed

    records = list(read_records(out))
    assert [r.method for r in records] == ["standard", "checkpointing"]
    for record in records:
        assert record.schema == SCHEMA and record.suite == "tiny" and record.status == "ok" and record.error is None
        assert record.config["model"]["layers"] == 1 and record.config["model"]["dtype"] == "float32"
        assert record.config["workload"]["seq"] == 32 and record.config["device"] == "cpu"
        assert len(record.losses) == 3  # warm-up, profiled, timed
        assert record.env["torch"] and record.duration_s > 0
        tensor = record.metrics["memory"]["tensor_bytes"]
        categories = ("params", "grads", "optimizer", "workspace", "activations")
        assert tensor["total"] == sum(tensor[c] for c in categories) > 0
        assert tensor["device"] == tensor["total"] and tensor["host"] == 0 and tensor["phase"] in PHASES
        assert record.metrics["memory"]["cuda_allocator"]["max_allocated_bytes"] is None  # n/a on CPU: null
        assert record.metrics["tokens_per_s"] > 0 and record.metrics["samples_per_s"] > 0
        assert (out / "logs" / f"{record.run_id}.log").is_file()
    # both methods hold the same model states; only activations may differ
    states = [{k: r.metrics["memory"]["tensor_bytes"][k] for k in ("params", "grads", "optimizer")} for r in records]
    assert states[0] == states[1]

    index = (report_dir / "report.md").read_text()
    for name in ("results", "memory", "paper"):
        assert f"({name}.md)" in index and (report_dir / f"{name}.csv").is_file()
    assert "from summaries, baseline rows uncertain" in index and "14,315,784,192 parameters" in index
    results_md = (report_dir / "results.md").read_text()
    assert "standard" in results_md and "checkpointing" in results_md
    assert "peak device (MiB)" in results_md and "peak in" in results_md
    # the paper table's ratio is computed from the records
    paper = pd.read_csv(report_dir / "paper.csv").set_index("method")
    totals = [r.metrics["memory"]["tensor_bytes"]["total"] for r in records]
    assert paper.loc["standard", "ours: memory ÷ checkpointing"] == pytest.approx(totals[0] / totals[1])
    assert paper.loc["revffn", "paper: memory ÷ checkpointing"] == pytest.approx(39.5 / 65.4)
    pngs = sorted(report_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"memory_vs_throughput.png", "memory_breakdown.png", "loss_curves.png"}
    for png in pngs:
        assert f"]({png.name})" in index
        pixels = image.imread(png)
        assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600 and pixels.std() > 0  # drawn, not blank


def test_killed_sweep_resumes_without_duplicates_and_oom_is_a_status(tmp_path: Path) -> None:
    # Three runs; the second exceeds a 1 MiB budget of tensor bytes and must end as `oom`.
    suite = suite_file(tmp_path, "methods: [standard]\nsweeps:\n  - {memory_budget: [null, 1MiB]}\n"
                                 "  - {workload.seq: [24]}\n")
    out = tmp_path / "results"
    results = out / "results.jsonl"
    sweep = subprocess.Popen([sys.executable, "-m", "revbench", "run", str(suite), "--out", str(out), "--no-report"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (results.is_file() and lines(results)):
        assert sweep.poll() is None and time.monotonic() < deadline, "the sweep ended before its first record"
        time.sleep(0.2)
    workers = workers_of(psutil.Process(sweep.pid))
    sweep.kill()  # SIGKILL: no cleanup in the parent at all
    sweep.wait()
    first = lines(results)
    assert len(first) == 1
    for worker in workers:  # the orphaned worker notices and exits rather than run on
        worker.wait(timeout=30)

    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    records = lines(results)
    assert records[0] == first[0]  # nothing lost or rewritten
    assert len(records) == 3 and len({r["run_id"] for r in records}) == 3  # no duplicate
    statuses = {r["config"]["memory_budget_bytes"]: r["status"] for r in records}
    assert statuses == {None: "ok", 2**20: "oom"}
    oom = next(r for r in records if r["status"] == "oom")
    assert "exceed the memory budget of 1,048,576 bytes" in oom["error"]
    assert oom["losses"]  # the steps before the budget check are kept

    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0  # all done: nothing runs again
    assert len(lines(results)) == 3


def _tiny_run(timeout_s: float = 300.0):
    suite = Suite(name="t", model=ModelSpec(layers=1), workload=Workload(batch=1, seq=16), methods=["standard"],
                  device="cpu", steps=1, timeout_s=timeout_s)
    return plan_run(suite, "standard")


def test_a_crashed_worker_still_gets_a_record(tmp_path: Path) -> None:
    run = _tiny_run()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("record", execute(run, tmp_path, {"env": "parent"})))
    thread.start()
    while not (workers := workers_of(psutil.Process())):
        time.sleep(0.05)
    os.kill(workers[0].pid, signal.SIGSEGV)
    thread.join(timeout=60)
    record = box["record"]
    assert record.status == "error" and record.run_id == run.run_id
    assert "killed by SIGSEGV" in record.error and record.env == {"env": "parent"}
    assert record.config == run.config


def test_a_run_past_its_timeout_is_killed_and_recorded(tmp_path: Path) -> None:
    record = execute(_tiny_run(timeout_s=1.0), tmp_path, {})
    assert record.status == "timeout"
    assert "no result after the 1 s timeout" in record.error
    assert not workers_of(psutil.Process())


@pytest.mark.slow
def test_budget_search_finds_the_largest_batch_by_real_runs(tmp_path: Path) -> None:
    suite = suite_file(tmp_path, "methods: [standard]\nmemory_budget: 24MiB\n"
                                 "search:\n  - {key: workload.batch, start: 4, max: 64, resolution: 4}\n",
                       name="budget")
    out, report_dir = tmp_path / "results", tmp_path / "report"
    assert main(["run", str(suite), "--out", str(out), "--report-dir", str(report_dir)]) == 0
    records = list(read_records(out))
    fits = [r.config["workload"]["batch"] for r in records if r.status == "ok"]
    ooms = [r.config["workload"]["batch"] for r in records if r.status == "oom"]
    assert {r.status for r in records} <= {"ok", "oom"} and fits and ooms
    first_oom = min(b for b in ooms if b > max(fits))
    assert max(fits) + 4 == first_oom  # bisected down to the resolution
    assert all(r.metrics["memory"]["tensor_bytes"]["total"] <= 24 * 2**20 for r in records if r.status == "ok")
    assert all(r.config["search_key"] == "workload.batch" for r in records)
    table = pd.read_csv(report_dir / "budget.csv")
    assert table.loc[0, "largest fit"] == max(fits) and table.loc[0, "first OOM"] == first_oom
    assert (report_dir / "largest_fit.png").is_file()
