"""The activation axis beside store and checkpoint: layer-selective and op-selective checkpointing.

Exact bytes on CPU in float32: each technique keeps less than the one above it and more than the one below, trains
the very same losses as `store`, and its estimate is its measured step's."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from revbench.data import Workload
from revbench.estimate import estimate_method
from revbench.harness import run_method
from revbench.methods import TrainSpec, create_method
from revbench.models import ModelSpec

SPEC = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=4), workload=Workload(batch=2, seq=512))
RNG_STATE = torch.get_rng_state().numel()  # saved per checkpointed layer on CPU; the tracker does not see it


def measure(name: str, **options: object) -> tuple[list[float], dict, dict]:
    result = run_method(name, replace(SPEC, options=options), steps=1, warmup=1)
    return result.losses, result.metrics["memory"]["tensor_bytes"], result.method_stats


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[list[float], dict, dict]]:
    return {"store": measure("standard"), "checkpoint": measure("checkpointing"),
            "every-2": measure("checkpointing", checkpoint_every=2),
            "selective": measure("selective-checkpoint+adamw+full"),
            "selective every-2": measure("selective-checkpoint+adamw+full", checkpoint_every=2)}


def test_selective_checkpointing_trains_the_same_losses(runs: dict) -> None:
    for name, (losses, _, _) in runs.items():
        assert losses == runs["store"][0], name  # recompute is the same arithmetic: bit for bit on CPU


def test_selective_checkpointing_keeps_between_store_and_checkpoint(runs: dict) -> None:
    activations = {name: tensor_bytes["activations"] for name, (_, tensor_bytes, _) in runs.items()}
    assert activations["checkpoint"] < activations["selective"] < activations["store"]
    assert activations["checkpoint"] < activations["every-2"] < activations["store"]
    assert activations["selective"] < activations["selective every-2"] < activations["store"]
    assert runs["every-2"][2] == {"checkpointed_layers": 2, "layers": 4}
    assert runs["selective"][2] == {"checkpointed_layers": 4, "layers": 4}
    for name, (_, tensor_bytes, _) in runs.items():
        assert tensor_bytes["phase"] == "backward", name  # activations, not the optimizer, make every peak


@pytest.mark.parametrize(("name", "options", "checkpointed"), [
    ("checkpointing", {"checkpoint_every": 2}, 2), ("selective-checkpoint+adamw+full", {}, 4)])
def test_selective_checkpointing_estimates_its_measured_step(runs: dict, name: str, options: dict,
                                                             checkpointed: int) -> None:
    key = {"checkpointing": "every-2"}.get(name, "selective")
    measured = runs[key][1]["total"]
    estimate = estimate_method(name, replace(SPEC, options=options), target="cpu")
    assert estimate.status == "ok", estimate.reason
    assert 0 <= measured - estimate.peak_bytes <= checkpointed * RNG_STATE + 256


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "2"])
def test_checkpoint_every_must_be_a_whole_number_of_layers(every: object) -> None:
    with pytest.raises(ValueError, match="option checkpoint_every must be a whole number of layers >= 1"):
        create_method("checkpointing", replace(SPEC, options={"checkpoint_every": every}))


def test_estimate_gives_each_method_the_options_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    from revbench.cli import main

    argv = ["estimate", "--model", "tiny-qwen2-moe", "--layers", "4", "--batch", "2", "--seq", "512", "--device", "cpu",
            "--method", "checkpointing,standard", "--option", "checkpoint_every=2", "--json", "--jobs", "1"]
    assert main(argv) == 0
    rows = {row["method"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    every_2 = estimate_method("checkpointing", replace(SPEC, options={"checkpoint_every": 2}), target="cpu")
    assert rows["checkpointing"]["device_peak_bytes"] == every_2.peak_bytes
    assert rows["standard"]["device_peak_bytes"] == estimate_method("standard", SPEC, target="cpu").peak_bytes
