import copy
import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from revbench.check import check, device_kind, parse_tolerances, percent
from revbench.cli import main
from revbench.data import Workload
from revbench.env import environment_stamp
from revbench.harness import BudgetExceededError, RunResult, run_method
from revbench.methods import TrainSpec
from revbench.models import ModelSpec
from revbench.records import RunRecord, append_record, run_id


def record(batch: int, budget: int | None = None) -> RunRecord:
    """A record of a real short run, shaped as the orchestrator writes them."""
    spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=1), workload=Workload(batch=batch, seq=32))
    config = {**spec.to_dict(), "steps": 1, "warmup": 1, "repeat": 0, "gpus": 1, "memory_budget_bytes": budget}
    result, status, error = RunResult(), "ok", None
    try:
        run_method("standard", spec, steps=1, warmup=1, budget_bytes=budget, result=result)
    except BudgetExceededError as exc:
        status, error = "oom", f"{type(exc).__name__}: {exc}"
    return RunRecord(run_id=run_id("smoke", "standard", config, 0), suite="smoke", method="standard", status=status,
                     config=config, env=environment_stamp(), error=error, losses=result.losses,
                     metrics=result.metrics)


def same_run_as(source: RunRecord, target: RunRecord) -> RunRecord:
    """`source`'s outcome filed under `target`'s configuration: what a change that makes the same run use
    more memory (or no longer fit its budget) would record."""
    out = copy.deepcopy(source)
    out.config, out.run_id = copy.deepcopy(target.config), target.run_id
    return out


@pytest.fixture(scope="module")
def runs() -> dict[str, RunRecord]:
    reference = record(batch=2)
    budget = reference.metrics["memory"]["tensor_bytes"]["total"]
    return {
        "reference": reference,
        "again": record(batch=2),
        "bigger": record(batch=8),
        "budget_ok": record(batch=2, budget=budget),
        "budget_oom": record(batch=8, budget=budget),
    }


def write(directory: Path, *records: RunRecord) -> str:
    for r in records:
        append_record(directory, r)
    return str(directory)


def test_identical_measurements_pass(runs, tmp_path, capsys) -> None:
    result = check([runs["again"]], [runs["reference"]])
    assert result.passed and result.compared == 1
    # The exact bytes of two real runs agree; only the (reported, ungated) timing may have moved.
    assert {r["metric"] for r in result.rows} <= {"step_time_s.median", "samples_per_s", "tokens_per_s",
                                                  "memory.host.peak_rss_bytes"}
    code = main(["check", write(tmp_path / "cur", runs["again"]), "--against", write(tmp_path / "ref",
                                                                                      runs["reference"])])
    assert code == 0 and "PASS" in capsys.readouterr().out


def test_growing_bytes_fail_naming_the_metric(runs, tmp_path, capsys) -> None:
    grown = same_run_as(runs["bigger"], runs["reference"])
    result = check([grown], [runs["reference"]])
    regressions = {r["metric"] for r in result.failures if r["verdict"] == "REGRESSION"}
    assert {"memory.tensor_bytes.total", "memory.tensor_bytes.activations"} <= regressions
    assert "memory.tensor_bytes.params" not in regressions  # the same model: its parameters did not grow
    code = main(["check", write(tmp_path / "cur", grown), "--against", write(tmp_path / "ref", runs["reference"])])
    out = capsys.readouterr().out
    assert code == 1 and "memory.tensor_bytes.total" in out and "REGRESSION" in out and "FAIL" in out
    # The other way round the same change is an improvement, which passes.
    assert check([runs["reference"]], [grown]).passed


def test_json_and_junit_say_the_same_verdict(runs, tmp_path, capsys) -> None:
    grown = same_run_as(runs["bigger"], runs["reference"])
    current, reference = write(tmp_path / "cur", grown), write(tmp_path / "ref", runs["reference"])
    junit = tmp_path / "check.xml"
    assert main(["check", current, "--against", reference, "--json", "--junit", str(junit)]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert not verdict["passed"] and verdict["exit_code"] == 1 and verdict["compared"] == 1
    failing = {row["metric"] for row in verdict["rows"] if row["verdict"] == "REGRESSION"}
    assert "memory.tensor_bytes.total" in failing
    suite = ElementTree.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "1" and suite.get("failures") == "1"
    failures = suite.findall("testcase/failure")
    assert {f.get("type") for f in failures} == {"REGRESSION"} and len(failures) == len(failing)


def test_unchanged_throughput_reads_as_a_small_signed_percentage() -> None:
    assert percent(0.4321) == "+0.4 %" and percent(-12.04) == "-12.0 %" and percent(3512.3) == "+3,512.3 %"


def test_a_tolerance_lets_a_small_growth_pass(runs) -> None:
    grown = same_run_as(runs["bigger"], runs["reference"])
    ref, cur = (r.metrics["memory"]["tensor_bytes"]["activations"] for r in (runs["reference"], grown))
    enough = (cur - ref) / ref * 100 + 1
    assert check([grown], [runs["reference"]], parse_tolerances([f"tensor_bytes={enough}"])).passed
    assert check([grown], [runs["reference"]], parse_tolerances([f"standard:tensor_bytes={enough}"])).passed
    assert not check([grown], [runs["reference"]], parse_tolerances([f"lora:tensor_bytes={enough}"])).passed


def test_status_change_fails(runs, tmp_path, capsys) -> None:
    assert runs["budget_ok"].status == "ok" and runs["budget_oom"].status == "oom"
    now_oom = same_run_as(runs["budget_oom"], runs["budget_ok"])
    result = check([now_oom], [runs["budget_ok"]])
    assert [(r["verdict"], r["reference"], r["current"]) for r in result.failures] == [("STATUS CHANGED", "ok", "oom")]
    code = main(["check", write(tmp_path / "cur", now_oom), "--against", write(tmp_path / "ref", runs["budget_ok"])])
    assert code == 1 and "STATUS CHANGED" in capsys.readouterr().out


def test_a_reference_from_before_a_new_workload_field_still_matches(runs) -> None:
    older = copy.deepcopy(runs["reference"])
    del older.config["workload"]["tokenizer"]  # recorded before Workload had the field
    assert check([runs["again"]], [older]).compared == 1
    tokenized = copy.deepcopy(runs["again"])
    tokenized.config["workload"]["tokenizer"] = "smollm2"  # a different measurement: not matched
    assert check([tokenized], [older]).compared == 0


def test_missing_run_fails_and_new_run_is_reported(runs) -> None:
    result = check([runs["reference"]], [runs["reference"], runs["budget_ok"]])
    assert [r["verdict"] for r in result.failures] == ["MISSING RUN"]
    result = check([runs["reference"], runs["budget_ok"]], [runs["reference"]])
    assert result.passed and "new run" in {r["verdict"] for r in result.rows}


def test_mixed_environments_are_refused(runs, tmp_path, capsys) -> None:
    on_gpu = copy.deepcopy(runs["reference"])
    on_gpu.config["device"], on_gpu.env["gpu"] = "cuda:0", "NVIDIA H200"
    assert (device_kind(on_gpu), device_kind(runs["reference"])) == ("cuda:NVIDIA H200", "cpu")
    with pytest.raises(ValueError, match=r"refusing to compare.*cpu.*cuda:NVIDIA H200"):
        check([runs["reference"]], [on_gpu])
    code = main(["check", write(tmp_path / "cur", runs["reference"]), "--against", write(tmp_path / "ref", on_gpu)])
    assert code == 3 and "refusing to compare" in capsys.readouterr().err


def test_tolerance_errors_name_the_problem() -> None:
    assert parse_tolerances(["tokens_per_s=10", "zero3-offload:nvml=off"]) == {
        (None, "tokens_per_s"): 10.0, ("zero3-offload", "memory.nvml.device_used_peak_bytes"): None,
        ("zero3-offload", "memory.nvml.process_used_peak_bytes"): None}
    with pytest.raises(ValueError, match="no metric 'speed'"):
        parse_tolerances(["speed=5"])
    with pytest.raises(ValueError, match="no method 'adam'"):
        parse_tolerances(["adam:tensor_bytes=5"])
    with pytest.raises(ValueError, match="not a percentage"):
        parse_tolerances(["tokens_per_s=fast"])
