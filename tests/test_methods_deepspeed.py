"""Real DeepSpeed ZeRO on CPU (gloo, one process), on the device and with offload: same math as standard, real
state accounting, clean teardown so that several engines share one process. The first run JIT-compiles DeepSpeed's
ops (about 80 s)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from methods_util import STEPS, max_difference, tiny_spec, train

from revbench.harness import run_method
from revbench.methods import create_method
from revbench.models import build_model, parameter_count
from revbench.states.deepspeed_runtime import announce_compiles, pending_compiles
from revbench.states.zero import BASELINES_DIR, fill_config, load_config

pytestmark = pytest.mark.deepspeed
ZERO = ("zero1", "zero2", "zero3", "zero2-offload", "zero3-offload")


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[list[float], dict]]:
    return {name: train(name, tiny_spec()) for name in ("standard", *ZERO)}


@pytest.mark.parametrize("name", ZERO)
def test_zero_matches_standard_and_learns(runs, name: str) -> None:
    losses, params = runs[name]
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.05, losses
    assert losses == pytest.approx(runs["standard"][0], abs=1e-5)
    assert max_difference(runs["standard"][1], params) < 1e-5
    assert not torch.distributed.is_initialized(), "teardown destroys the process group it created"
    assert "MASTER_PORT" not in os.environ


@pytest.fixture(scope="module")
def revffn_runs() -> dict[str, tuple[list[float], dict]]:
    return {"revffn": train("revffn", tiny_spec()), "vanilla": train("revffn", tiny_spec(mode="vanilla")),
            "revffn-zero2-offload": train("revffn-zero2-offload", tiny_spec()),
            **{name: train(name, tiny_spec()) for name in ("revffn+zero3-offload+full", "revffn+zero1+full",
                                                           "revffn+zero3+full")}}


@pytest.mark.parametrize("zero", ["revffn-zero2-offload", "revffn+zero3-offload+full", "revffn+zero1+full",
                                  "revffn+zero3+full"])
def test_revffn_on_zero_matches_revffn_and_its_vanilla_mode(revffn_runs, zero: str) -> None:
    losses, params = revffn_runs[zero]
    assert losses[-1] < losses[0] - 0.05, losses
    for reference in ("revffn", "vanilla"):
        assert losses == pytest.approx(revffn_runs[reference][0], abs=1e-5)
        assert max_difference(revffn_runs[reference][1], params) < 1e-5


def test_revffn_on_zero2_offload_keeps_a_frozen_base_in_the_warmup_stage() -> None:
    plain = train("revffn", tiny_spec(stage="warmup"))
    offload = train("revffn-zero2-offload", tiny_spec(stage="warmup"))
    assert offload[0] == pytest.approx(plain[0], abs=1e-5)
    assert max_difference(plain[1], offload[1]) < 1e-5
    with pytest.raises(ValueError, match=r"stage 'two-stage'.*cannot run on it"):
        create_method("revffn-zero2-offload", tiny_spec(stage="two-stage"))


def test_zero2_offload_state_bytes_are_deepspeeds_buffers() -> None:
    spec = tiny_spec()
    n = parameter_count(build_model(spec.model))
    result = run_method("zero2-offload", spec, steps=1, warmup=1)
    measured = result.metrics["memory"]["tensor_bytes"]
    # float32 master partition + Adam's two moments, all in DeepSpeed's flat CPU buffers.
    assert measured["optimizer"] == 3 * 4 * n
    # The model's flat parameter buffer and the staging copy DeepSpeed keeps for offload.
    assert measured["params"] >= 2 * 4 * n
    assert measured["grads"] > 0
    assert result.method_stats["zero_stage"] == 2
    assert result.method_stats["ds_config"]["train_micro_batch_size_per_gpu"] == spec.workload.batch
    assert result.method_stats["ds_config"]["zero_optimization"]["reduce_bucket_size"] == 128 * 128
    # Host-resident: the float32 master partition and its gradient, Adam's moments, the bit16 staging copy and
    # the CPU gradient buffer; the device keeps the model's flat parameters, its gradients and the activations.
    assert measured["host"] >= measured["optimizer"] + 4 * n
    assert measured["device"] == measured["total"] - measured["host"]
    # What a GPU would hold is below checkpointing's peak, though the whole (device + host) is above it.
    checkpointing = run_method("checkpointing", spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    assert measured["device"] < checkpointing["device"] < measured["total"]


def test_zero_on_the_device_keeps_every_state_there() -> None:
    """ZeRO-1/2/3 at one rank: AdamW's moments and the float32 master partition on the device (K = 12 bytes per
    parameter, as in the ZeRO paper), nothing in host memory, torch's AdamW doing the update."""
    spec = tiny_spec()
    n = parameter_count(build_model(spec.model))
    for name in ("zero1", "zero2", "zero3"):
        result = run_method(name, spec, steps=1, warmup=1)
        measured = result.metrics["memory"]["tensor_bytes"]
        assert measured["optimizer"] == 3 * 4 * n + 4, name  # + AdamW's float32 step count (CPU)
        assert measured["host"] == 0 and measured["device"] == measured["total"], name
        assert result.method_stats["offload_optimizer"] == result.method_stats["offload_param"] == "none"
        assert result.method_stats["zero_stage"] == int(name[-1])


@pytest.mark.parametrize("name", ZERO)
def test_prebuild_loads_every_op_a_run_loads(monkeypatch, name: str) -> None:
    """Outside the host-memory window: a compiler's processes count in a run's host figure (3.38 GiB on a fresh
    machine's smoke run when the shared-memory op compiled inside it). CPU Adam only where the optimizer is
    offloaded."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    monkeypatch.setattr(OpBuilder, "_loaded_ops", {})
    create_method(name, tiny_spec()).prebuild()
    assert "deepspeed_shm_comm" in OpBuilder._loaded_ops
    assert ("cpu_adam" in OpBuilder._loaded_ops) == name.endswith("-offload")


def test_compile_notice_when_the_op_cache_is_empty(tmp_path, monkeypatch, capsys) -> None:
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder.builder import OpBuilder

    if installed_ops.get("cpu_adam"):
        pytest.skip("cpu_adam was prebuilt at install: nothing is ever compiled")
    assert pending_compiles(["CPUAdamBuilder"]) == [], "loaded by the runs above"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(OpBuilder, "_loaded_ops", {})
    assert pending_compiles(["CPUAdamBuilder"]) == ["cpu_adam"]
    announce_compiles(["CPUAdamBuilder"])
    assert "DeepSpeed is JIT-compiling its cpu_adam op" in capsys.readouterr().err


def test_config_files_are_checked(tmp_path) -> None:
    shipped = load_config(BASELINES_DIR / "zero3-offload.json", stage=3, offload_optimizer=True, offload_param=True)
    filled = fill_config(shipped, batch=4, dtype=torch.bfloat16, hidden=64)
    assert filled["bf16"] == {"enabled": True} and filled["train_micro_batch_size_per_gpu"] == 4
    assert filled["zero_optimization"]["stage3_param_persistence_threshold"] == 640
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**shipped, "train_batch_size": 8}))
    with pytest.raises(ValueError, match="sets train_batch_size; revbench fills these in"):
        load_config(bad, stage=3, offload_optimizer=True, offload_param=True)
    with pytest.raises(ValueError, match=r"must have zero_optimization\.stage 2, got 3"):
        load_config(BASELINES_DIR / "zero3-offload.json", stage=2, offload_optimizer=True, offload_param=False)
    # A device method given an offload config (and the other way round) is told which device the key must name.
    with pytest.raises(ValueError, match=r"offload_optimizer\.device must be none for this method, got 'cpu'"):
        create_method("zero2", tiny_spec(config=str(BASELINES_DIR / "zero2-offload.json"))).prepare()
    with pytest.raises(ValueError, match=r"offload_optimizer\.device must be cpu for this method, got 'none'"):
        create_method("zero2-offload", tiny_spec(config=str(BASELINES_DIR / "zero2.json"))).prepare()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_method("zero2-offload", tiny_spec(config=str(tmp_path / "missing.json"))).prepare()
