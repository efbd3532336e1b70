"""Activation offloading: `offload-activations` (every saved tensor of a decoder layer) and `checkpoint-offload` (only
the checkpointed boundaries) to host memory.

Exact bytes on CPU in float32: the same losses as `store`, the host copies counted as host memory and never in the
device's peak, the estimate equal to the measured step, both for the device and for the host copies."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from revbench.data import Workload
from revbench.estimate import estimate_method
from revbench.harness import run_method
from revbench.measure.phases import PhaseRanges
from revbench.measure.profiler_bytes import running_peak, split_residency
from revbench.measure.storage_tracker import StorageTracker
from revbench.measure.timeline import expand
from revbench.methods import TrainSpec, create_method
from revbench.models import ModelSpec, build_config

SPEC = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=4), workload=Workload(batch=2, seq=512))
RNG_STATE = torch.get_rng_state().numel()  # saved per checkpointed layer on CPU; the tracker does not see it
BOUNDARY = 2 * 512 * build_config(SPEC.model).hidden_size * 4  # one layer's input, float32
RUNS = {"store": ("standard", {}), "offload": ("offload-activations+adamw+full", {}),
        "checkpoint": ("checkpointing", {}), "checkpoint-offload": ("checkpoint-offload+adamw+full", {}),
        "checkpoint-offload all": ("checkpoint-offload+adamw+full", {"offload_last_layer": True})}


@pytest.fixture(scope="module")
def runs() -> dict[str, object]:
    return {key: run_method(name, replace(SPEC, options=options), steps=1, warmup=1)
            for key, (name, options) in RUNS.items()}


def test_offloading_trains_the_same_losses(runs: dict) -> None:
    for key, result in runs.items():
        assert result.losses == runs["store"].losses, key  # copies out and back are exact: bit for bit


def test_checkpoint_offload_moves_exactly_the_boundaries(runs: dict) -> None:
    memory = {key: result.metrics["memory"]["tensor_bytes"] for key, result in runs.items()}
    assert memory["checkpoint"]["host_activations"] == 0
    assert memory["checkpoint-offload"]["host_activations"] == 3 * BOUNDARY  # the last layer's stays on the device
    assert memory["checkpoint-offload all"]["host_activations"] == 4 * BOUNDARY
    stats = runs["checkpoint-offload"].method_stats
    assert stats == {"checkpointed_layers": 4, "layers": 4, "offloaded_layers": 3,
                     "host_copies_peak_bytes": 3 * BOUNDARY}  # the offload's own count, as the profiler's
    # Here the device peaks at layer 0's backward, where checkpointing too holds one boundary: the same peak.
    assert memory["checkpoint-offload"]["total"] <= memory["checkpoint"]["total"]


def test_offload_activations_moves_what_layers_save_off_the_device(runs: dict) -> None:
    store, offload = (runs[key].metrics["memory"]["tensor_bytes"] for key in ("store", "offload"))
    assert offload["host_activations"] > 0
    assert offload["activations"] < store["activations"] - offload["host_activations"] / 2
    assert offload["total"] < store["total"]
    stats = runs["offload"].method_stats
    assert stats == {"offloaded_layers": 3, "layers": 4, "host_copies_peak_bytes": offload["host_activations"]}


def test_the_timeline_draws_the_host_copies(runs: dict) -> None:
    for key in ("offload", "checkpoint-offload"):
        frame = expand(runs[key].metrics["memory"]["timeline"])
        measured = runs[key].metrics["memory"]["tensor_bytes"]
        assert frame["host_activations"].max() == measured["host_activations"], key
        assert frame["device"].max() == measured["device"], key  # the host copies are never the device's


@pytest.mark.parametrize("key", ["offload", "checkpoint-offload", "checkpoint-offload all"])
def test_offloading_estimates_its_measured_step(runs: dict, key: str) -> None:
    name, options = RUNS[key]
    measured = runs[key].metrics["memory"]["tensor_bytes"]
    estimate = estimate_method(name, replace(SPEC, options=options), target="cpu")
    assert estimate.status == "ok", estimate.reason
    assert 0 <= measured["total"] - estimate.peak_bytes <= (4 * RNG_STATE if "checkpoint" in key else 0) + 256
    assert estimate.tensor_bytes.host_activations == measured["host_activations"]
    assert estimate.host_peak_bytes == measured["host_activations"]


@pytest.mark.parametrize("value", [1, "yes", None])
def test_offload_last_layer_must_be_true_or_false(value: object) -> None:
    with pytest.raises(ValueError, match="option offload_last_layer must be true or false"):
        create_method("offload-activations+adamw+full", replace(SPEC, options={"offload_last_layer": value}))


def test_a_tensor_saved_by_several_ops_is_copied_once() -> None:
    from revbench.activations.offload import HostOffload

    x = torch.randn(64, 32, requires_grad=True)
    weights = [torch.nn.Parameter(torch.randn(32, 32)) for _ in range(3)]

    def step(hooks: bool) -> list[torch.Tensor]:
        offload = HostOffload()
        tracker = StorageTracker()
        with tracker, (offload.hooks() if hooks else torch.autograd.graph.saved_tensors_hooks(lambda t: t,
                                                                                               lambda t: t)):
            hidden = x * 2  # saved by the three matmuls below as views of one storage
            loss = sum((hidden.view(2, 32, 32) @ w).sum() for w in weights)
        tracker.finish()
        assert tracker.host_peak == (hidden.numel() * 4 if hooks else 0)
        return list(torch.autograd.grad(loss, [x, *weights]))

    for offloaded, kept in zip(step(hooks=True), step(hooks=False), strict=True):
        assert torch.equal(offloaded, kept)


def test_the_profiler_splits_host_copies_from_the_device() -> None:
    host = PhaseRanges([(10, 20, "host")])
    # (device type, pointer, bytes, time): a copy made at t=15 inside the range, freed at t=40
    events = [("cpu", 1, 100, 5), ("cpu", 2, 50, 15), ("cpu", 3, 30, 25), ("cpu", 2, -50, 40), ("cpu", 1, -100, 45)]
    device, on_host, missed = split_residency(events, "cpu", host)
    assert on_host == [(2, 50, 15), (2, -50, 40)]
    assert device == [(1, 100, 5), (3, 30, 25), (1, -100, 45)]
    assert (running_peak(on_host), running_peak(device), missed) == (50, 130, 0)
    # On a GPU the CPU's other allocations are no one's; the device's are the CUDA ones.
    cuda = [("cuda", 7, 64, 12), *events]
    device, on_host, _ = split_residency(cuda, "cuda", host)
    assert (device, on_host) == ([(7, 64, 12)], [(2, 50, 15), (2, -50, 40)])


def test_estimate_says_what_the_offload_holds_on_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from revbench.cli import main

    argv = ["estimate", "--model", "tiny-qwen2-moe", "--layers", "4", "--batch", "2", "--seq", "512", "--device", "cpu",
            "--method", "checkpointing,checkpoint-offload+adamw+full", "--json", "--jobs", "1"]
    assert main(argv) == 0
    rows = {row["method"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["checkpointing"]["host_activations"] == rows["checkpointing"]["host_peak_bytes"] == 0
    offload = rows["checkpoint-offload+adamw+full"]
    assert offload["host_activations"] == offload["host_peak_bytes"] == 3 * BOUNDARY
    assert offload["device_peak_bytes"] <= rows["checkpointing"]["device_peak_bytes"]


@pytest.mark.parametrize(("name", "options"), [
    ("checkpoint-offload+adamw+full", {"checkpoint_every": 2}),  # the layers between checkpoints offload everything
    ("offload-activations+adamw+full", {"tile_tokens": 128}),  # each chunk's inputs offloaded
    ("checkpoint-offload+adamw+full", {"tile_tokens": 128})])
def test_offloading_composes_with_selective_checkpointing_and_tiling(runs: dict, name: str, options: dict) -> None:
    spec = replace(SPEC, options=options)
    result = run_method(name, spec, steps=1, warmup=1)
    assert result.losses == runs["store"].losses
    measured = result.metrics["memory"]["tensor_bytes"]
    assert measured["host_activations"] == result.method_stats["host_copies_peak_bytes"] > 0
    estimate = estimate_method(name, spec, target="cpu")
    assert estimate.tensor_bytes.host_activations == measured["host_activations"]
    # A tiled step's estimate is within 1 % (test_tiling.py: the observer effect on chunk gradients' accumulation).
    assert abs(measured["total"] - estimate.peak_bytes) <= (0.01 * measured["total"] if "tile_tokens" in options
                                                            else 4 * RNG_STATE + 256)
