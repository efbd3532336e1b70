"""Suites: the shipped files load, grids expand, overrides apply, and bad fields are named. No runs here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from revbench.data import Workload
from revbench.methods import METHODS
from revbench.models import ModelSpec
from revbench.orchestrator import Search, Suite, SuiteError, grid_points, grid_runs, load_suite, plan_run
from revbench.orchestrator.launch import worker_command
from revbench.orchestrator.plan import PlannedRun, train_spec
from revbench.orchestrator.schema import parse_bytes
from revbench.orchestrator.search import largest_fitting
from revbench.orchestrator.suite import shipped_suites


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_suites_load_and_smoke_lists_every_method() -> None:
    assert {"budget", "gpu", "paper", "scaling", "smoke"} <= set(shipped_suites())
    for name in ("budget", "gpu", "handoff", "offload", "scaling", "smoke"):
        assert load_suite(name).name == name
    smoke = load_suite()  # the default
    assert smoke.name == "smoke" and smoke.methods == list(METHODS)
    assert smoke.model.preset == "tiny-qwen2-moe"
    paper = load_suite("paper")
    assert paper.model.preset == "qwen1.5-moe-a2.7b" and paper.model.dtype == "bfloat16"
    assert {"checkpointing", "revffn"} <= set(paper.methods)
    budget = load_suite("budget")
    assert budget.memory_budget == 96 * 2**20 and [s.key for s in budget.search] == ["workload.batch", "workload.seq"]


def test_scaling_grid_pools_the_sweeps_and_names_runs_stably() -> None:
    suite = load_suite("scaling", methods=["standard"])
    points = grid_points(suite)
    # three one-axis sweeps of four values share the base point (4 layers, 2 x 128): 4 + 3 + 3
    assert len(points) == 10
    assert sorted({p.model.layers for p in points}) == [1, 2, 4, 8]
    runs = grid_runs(suite)
    assert len({r.run_id for r in runs}) == len(runs) == 10
    assert [r.run_id for r in grid_runs(suite)] == [r.run_id for r in runs]  # stable: resume relies on it


def test_set_overrides_fields_and_fixes_a_swept_key() -> None:
    suite = load_suite("scaling", ["workload.seq=64", "model.layers=2", "optimizer.lr=1e-2"], methods=["standard"])
    points = grid_points(suite)
    assert {p.workload.seq for p in points} == {64} and {p.model.layers for p in points} == {2}
    assert sorted(p.workload.batch for p in points) == [1, 2, 4, 8]
    assert suite.optimizer.lr == 0.01


def test_config_is_fully_resolved_and_round_trips_to_a_train_spec() -> None:
    run = plan_run(Suite(name="t", model=ModelSpec(), workload=Workload(batch=1, seq=16), device="auto"), "standard")
    config = run.config
    assert config["device"] == "cpu" and config["model"]["dtype"] == "float32"
    assert config["model"]["layers"] == 4 and config["model"]["experts"] == 8 and config["model"]["top_k"] == 2
    assert config["steps"] == 3 and config["warmup"] == 1 and config["repeat"] == 0
    spec = train_spec(config)
    assert spec.model.layers == 4 and spec.workload.seq == 16
    longer = plan_run(Suite(name="t", workload=Workload(batch=1, seq=16), timeout_s=5000.0), "standard")
    assert longer.run_id == run.run_id  # the timeout is not part of what a run measures
    other = plan_run(Suite(name="t", workload=Workload(batch=1, seq=32)), "standard")
    assert other.run_id != run.run_id


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("modle: {layers: 2}\n", "modle: unknown field"),
        ("model: {layerz: 2}\n", "model.layerz: unknown field"),
        ("model: {preset: tiny-nothing}\n", "model: unknown model preset 'tiny-nothing'"),
        ("workload: {batch: two}\n", "workload.batch: expected an integer"),
        ("workload: {seq: 1}\n", "workload: batch must be >= 1 and seq >= 2"),
        ("methods: [standard, sgd]\n", "methods[1]: unknown method 'sgd'"),
        ("methods: []\n", "methods: must list at least one method"),
        ("options: {sgd: {a: 1}}\n", "options.sgd: names no method or technique of this suite"),
        ("steps: 0\n", "steps: must be >= 1"),
        ("device: gpu\n", "device: expected auto, cpu, cuda or cuda:N"),
        ("memory_budget: lots\n", "memory_budget: cannot read 'lots' as a size"),
        ("optimizer: {betas: [0.9]}\n", "optimizer.betas: expected a list of 2 values"),
        ("sweeps: [{model.layerz: [1, 2]}]\n", "sweeps[0].model.layerz: unknown field"),
        ("sweeps: [{methods: [[standard]]}]\n", "sweeps[0].methods: methods cannot be swept"),
        ("sweeps: [{workload.seq: []}]\n", "sweeps[0].workload.seq: must list at least one value"),
        ("search: [{key: workload.data}]\n", "search[0].key: 'workload.data' is not an integer field"),
        ("search: [{key: workload.batch, start: 8, max: 4}]\n", "search[0].start: must satisfy"),
    ],
)
def test_a_bad_field_gets_an_error_naming_it(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(SuiteError, match="^suite 'suite' .*" + re.escape(named)):
        load_suite(write(tmp_path, text))


def test_bad_values_in_a_sweep_and_bad_set_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"sweeps\[0\] at \{'model.layers': 'x'\}\): model.layers: expected an integ"):
        grid_points(load_suite(write(tmp_path, "sweeps: [{model.layers: [1, x]}]\n")))
    with pytest.raises(SuiteError, match=r"--set workload.sq: unknown field; the fields here are batch, seq"):
        load_suite("smoke", ["workload.sq=64"])
    with pytest.raises(SuiteError, match="--set takes key=value"):
        load_suite("smoke", ["workload.seq"])
    with pytest.raises(SuiteError, match="unknown suite 'nope'; the shipped suites are activations, budget, gpu, "
                                         "handoff, offload, paper"):
        load_suite("nope")
    with pytest.raises(SuiteError, match="must hold a mapping"):
        load_suite(write(tmp_path, "- standard\n"))
    with pytest.raises(SuiteError, match=r"options.standard.foo: unknown option; standard takes tile_tokens"):
        from revbench.orchestrator.plan import check_options

        check_options(load_suite(write(tmp_path, "options: {standard: {foo: 1}}\n")))


def test_devices_that_are_not_here_are_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SuiteError, match="asks for 'cuda' but CUDA is not available here"):
        grid_runs(load_suite("paper"))
    with pytest.raises(SuiteError, match="gpus: asks for 2 GPUs, but this machine has 0 CUDA device"):
        grid_runs(load_suite("smoke", ["gpus=2"]))


def test_several_gpus_launch_through_torchrun(tmp_path: Path) -> None:
    config = {**plan_run(Suite(name="t"), "standard").config, "gpus": 4, "device": "cuda"}
    command = worker_command(PlannedRun("t", "standard", config), tmp_path / "s", tmp_path / "r", tmp_path / "p")
    assert command[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone"]
    assert "revbench.orchestrator.worker" in command


def test_bytes_take_units() -> None:
    assert parse_bytes("64MiB", "x") == 64 * 2**20
    assert parse_bytes("1.5 GiB", "x") == 3 * 2**29
    assert parse_bytes("80GB", "x") == 80 * 10**9
    assert parse_bytes(1000, "x") == 1000


@pytest.mark.parametrize(("limit", "search", "expected"), [
    (37, Search("workload.batch", start=1, max=256), (37, 38, None)),
    (37, Search("workload.batch", start=1, max=20), (20, None, None)),
    (0, Search("workload.batch", start=1, max=256), (None, 1, None)),
    (700, Search("workload.seq", start=64, max=8192, resolution=64), (640, 704, None)),
])
def test_search_finds_the_largest_value_that_fits(limit: int, search: Search, expected: tuple) -> None:
    probed: list[int] = []

    def fits(value: int) -> bool:
        probed.append(value)
        return value <= limit

    found = largest_fitting(search, fits)
    assert (found.largest_fit, found.first_oom, found.stopped) == expected
    assert len(probed) == len(set(probed))  # no value is run twice


def test_search_stops_at_a_run_that_failed_otherwise() -> None:
    found = largest_fitting(Search("workload.batch"), lambda v: None if v == 4 else True)
    assert (found.largest_fit, found.stopped) == (2, 4)
