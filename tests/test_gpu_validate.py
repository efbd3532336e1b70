"""scripts/gpu_validate.sh in its CPU mode: the GPU validation path end to end, without a GPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_validate_script_runs_end_to_end_in_cpu_mode(tmp_path: Path) -> None:
    out = tmp_path / "gv"
    proc = subprocess.run(
        ["bash", "scripts/gpu_validate.sh", "--device", "cpu", "--methods", "standard", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OUT": ""},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["config"]["workload"]["seq"] for r in records) == [32, 64]
    assert all(r["status"] == "ok" and r["suite"] == "gpu" for r in records)
    assert (out / "report" / "report.md").is_file()
    assert json.loads((out / "env.json").read_text())["torch"]
    # The summary table comes last.
    summary = proc.stdout.split("== summary (cpu) ==")[1]
    assert summary.count("| standard") == 2
