"""FSDP2 (`fully_shard` per decoder layer) on the model-state axis, one CPU rank over gloo: what it refuses, that it
trains as plain AdamW does, and where its bytes sit with its options."""

from __future__ import annotations

import pytest
from methods_util import max_difference, train

from revbench.data import Workload
from revbench.harness import run_method
from revbench.methods import OptimizerSpec, TrainSpec, create_method
from revbench.models import ModelSpec


def spec(**options: object) -> TrainSpec:
    return TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2), workload=Workload(batch=2, seq=64),
                     optimizer=OptimizerSpec(lr=1e-3, eps=1e-6), options=dict(options))


@pytest.mark.parametrize("activations", ["revffn", "revexact"])
def test_reversible_stacks_are_refused_with_the_reason(activations: str) -> None:
    with pytest.raises(ValueError, match="outside the module hooks by which FSDP2 gathers"):
        create_method(f"{activations}+fsdp2+full", spec())


def test_a_bad_option_names_itself() -> None:
    with pytest.raises(ValueError, match="reshard_after_forward must be true or false, got 'maybe'"):
        create_method("store+fsdp2+full", spec(reshard_after_forward="maybe"))


@pytest.mark.parametrize("states", ["fsdp2", "fsdp2-offload"])
def test_one_rank_trains_as_adamw(states: str) -> None:
    reference, reference_params = train("standard", spec())
    losses, params = train(f"store+{states}+full", spec())
    assert losses == pytest.approx(reference, rel=1e-6)
    assert max_difference(reference_params, params) < 1e-6


def test_offload_keeps_the_shards_gradients_and_adamw_states_in_host_memory() -> None:
    memory = run_method("store+fsdp2-offload+full", spec(), steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    on_device = run_method("store+fsdp2+full", spec(), steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    assert (memory["host_params"], memory["host_grads"], memory["host_optimizer"]) == (
        memory["params"], memory["grads"], memory["optimizer"])
    assert on_device["host"] == 0 and memory["total"] == on_device["total"]  # on CPU the host is the device


def test_mixed_precision_computes_in_bfloat16_over_float32_shards() -> None:
    result = run_method("store+fsdp2+full", spec(param_dtype="bfloat16", reduce_dtype="float32"), steps=2, warmup=1)
    assert all(0 < loss < 10 for loss in result.losses)
    assert result.method_stats["param_dtype"] == "torch.bfloat16"
    assert result.method_stats["fsdp_units"] == 3  # two decoder layers and the root
