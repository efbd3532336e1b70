"""The per-rank layout arithmetic of `revbench estimate --gpus` (measured against real ranks in
test_scale_out_ranks.py), the smallest-N search, the command, and the scale-out report section."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from revbench.cli import main
from revbench.estimate.sharding import ModelShape, rank_states, smallest_ranks, zero12_largest_piece
from revbench.estimate.zero3_gather import FetchUnit
from revbench.models import ModelSpec
from revbench.reports.scale_out import PER_RANK_DEVICE, scale_out_frame, scale_out_table

ODD = ModelShape(numels=(7, 1000, 3), units=(FetchUnit(0, (7, 1000, 3), leaf=False, views=0),), buffer_bytes=0,
                 element_bytes=2, hidden=16, dtype=torch.bfloat16)


def test_zero3_pads_each_parameter_and_zero2_the_flat_group() -> None:
    three = rank_states("zero3-offload", ODD, 4)
    part = math.ceil(7 / 4) + math.ceil(1000 / 4) + math.ceil(3 / 4)  # 2 + 250 + 1
    assert three.host_params == 2 * part and three.host_optimizer == 12 * part and three.host_grads == 6 * part
    # Every parameter is under the persistence threshold (10 x hidden = 160)... but the 1000-element one.
    assert three.params - three.host_params == 2 * (7 + 3)
    two = rank_states("zero2-offload", ODD, 4)
    padded = math.ceil(1010 / 8) * 8  # a multiple of 2 x ranks
    assert two.host_optimizer == 12 * padded // 4 and two.host_params == 2 * padded // 4


def test_the_offloads_copy_a_gradient_piece_in_float64_for_its_norm() -> None:
    """DeepSpeed takes each reduced gradient's norm in float64 before it goes to the host: ZeRO-2 offload of the
    largest piece of one parameter in one rank's flat partition, ZeRO-3 offload of the largest parameter's
    partition."""
    assert zero12_largest_piece((7, 1000, 3), 1) == 1000
    assert zero12_largest_piece((7, 1000, 3), 4) == 254  # shares of 254 elements: the second is all inside it
    assert zero12_largest_piece((100, 1000), 2) == 550  # shares of 550: the second parameter has 450 in the first
    tiny = ModelShape.of(ModelSpec(layers=2), "cpu")
    gate_up = 8 * 512 * 128
    # At 2 ranks each share holds one layer's gate_up_proj whole; at 4 its largest piece is the second layer's, in
    # the third share, 482,976 of its elements (shares of 533,344 from 1,066,688; that gate_up starts at 1,117,056).
    assert zero12_largest_piece(tiny.numels, 2) == gate_up
    assert zero12_largest_piece(tiny.numels, 4) == 3 * 533_344 - 1_117_056 == 482_976
    assert rank_states("zero2-offload", tiny, 4, "cpu").norm_copy == 8 * 482_976
    assert rank_states("zero3-offload", tiny, 4, "cpu").norm_copy == 8 * gate_up // 4
    assert rank_states("zero2", tiny, 2, "cpu").norm_copy == rank_states("zero3", tiny, 2, "cpu").norm_copy == 0


def test_partitioned_states_halve_and_replicated_ones_do_not() -> None:
    shape = ModelShape.of(ModelSpec(layers=2), "cpu")
    assert shape.parameters == 2_133_376
    for states in ("zero2-offload", "zero3-offload"):
        one, two = rank_states(states, shape, 1, "cpu"), rank_states(states, shape, 2, "cpu")
        assert two.host_optimizer * 2 == one.host_optimizer == 12 * shape.parameters
    ddp = [rank_states("adamw-ddp", shape, n, "cpu") for n in (1, 2, 8)]
    assert ddp[0] == ddp[1] == ddp[2] and ddp[0].host == 0
    with pytest.raises(ValueError, match="'adamw' does not shard"):
        rank_states("adamw", shape, 2)


def test_the_states_shard_the_model_the_activation_technique_trains() -> None:
    """RevFFN's stream adapters are parameters too: ZeRO and DDP shard and replicate them with the rest."""
    from revbench.data import Workload
    from revbench.estimate.scale_out import RankPeaks
    from revbench.methods.composition import Composition
    from revbench.spec import TrainSpec

    peaks = RankPeaks(TrainSpec(model=ModelSpec(layers=2), workload=Workload(batch=1, seq=16)), "cpu")
    plain = peaks.trained_shape(Composition("store", "zero2", "full"))
    revffn = peaks.trained_shape(Composition("revffn", "zero2", "full"))
    assert plain.parameters == peaks.shape.parameters == 2_133_376
    assert revffn.parameters == 2_198_656  # 65,280 adapter parameters over the 2 layers
    revexact = peaks.trained_shape(Composition("revexact", "zero2", "full"))
    assert sorted(revexact.numels) == sorted(plain.numels)  # the unchanged layers
    two = rank_states("zero2", revffn, 2, "cpu")
    assert two.optimizer == 6 * revffn.parameters + 4  # float32 masters, momentum and variance, halved, + step


def test_smallest_ranks_is_the_first_n_under_the_budget() -> None:
    assert smallest_ranks(lambda n: 1000 // n <= 90) == 11  # 1000 // 10 = 100 does not fit, 1000 // 11 = 90 does
    assert smallest_ranks(lambda n: 1000 // n <= 1000) == 1
    assert smallest_ranks(lambda n: False, cap=64) is None


def test_estimate_gpus_prints_every_combination(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--model", "tiny-qwen2-moe", "--layers", "1", "--batch", "2", "--seq", "16",
                 "--device", "cpu", "--gpus", "2", "--budget", "12MiB", "--fit"]) == 0
    out = capsys.readouterr().out
    assert "Per-GPU bytes at 2 ranks: tiny-qwen2-moe" in out and "global batch 2 (1 per rank)" in out
    for name in ("store+adamw-ddp+full", "zero2-offload", "zero3-offload", "checkpoint+zero3-offload+full",
                 "revffn-zero2-offload", "revffn+adamw-ddp+full", "revffn+zero3-offload+full",
                 "revexact+zero3-offload+full", "fsdp2", "checkpoint+fsdp2-offload+full"):
        assert f"| {name} " in out
    # Both reversible designs run on every DDP and ZeRO layout; FSDP2 alone refuses them, with the reason.
    refused = [line.split(":")[0] for line in out.splitlines() if ": refused: " in line]
    assert refused == [f"{design}+{states}+full" for design in ("revffn", "revexact")
                       for states in ("fsdp2", "fsdp2-offload")]
    assert "outside the module hooks by which FSDP2 gathers" in out
    assert "none up to 4096" in out  # DDP replicates: no rank count shrinks it


def test_estimate_gpus_refuses_a_batch_that_does_not_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--model", "tiny-qwen2-moe", "--batch", "3", "--gpus", "2"]) != 0
    assert "--batch 3 is the global batch and must split evenly over --gpus 2" in capsys.readouterr().err


def test_the_report_section_keeps_methods_run_at_two_rank_counts() -> None:
    base = {"status": "ok", "device": "cpu", "gpus": 1, "preset": "p", "layers": 1, "dtype": "float32", "batch": 2,
            "seq": 8, "data": "text", "steps": 1, "warmup": 1, "memory.tensor_bytes.params": 4,
            "memory.tensor_bytes.grads": 4, "memory.tensor_bytes.optimizer": 8, "step_time_s.median": 0.5,
            "samples_per_s": 4.0}
    rows = [{**base, "variant": "zero3-offload", "ranks": 1, "memory.tensor_bytes.device": 100,
             "memory.tensor_bytes.host": 50},
            {**base, "variant": "zero3-offload", "ranks": 2, "memory.tensor_bytes.device": 70,
             "memory.tensor_bytes.host": 25, PER_RANK_DEVICE: 80, "ranks.max.tensor_bytes.host": 25,
             "ranks.sum.tensor_bytes.device": 150, "ranks.sum.tensor_bytes.host": 50},
            {**base, "variant": "standard", "ranks": 1, "memory.tensor_bytes.device": 90,
             "memory.tensor_bytes.host": 0}]
    rows = [{**row, **{k: v * 2**20 for k, v in row.items() if k.endswith(("device", "host"))}} for row in rows]
    kept = scale_out_frame(pd.DataFrame(rows))
    assert list(kept["variant"]) == ["zero3-offload", "zero3-offload"]  # standard ran at one rank count only
    assert list(kept[PER_RANK_DEVICE]) == [100 * 2**20, 80 * 2**20]  # a single rank is its own maximum
    table = scale_out_table(kept)
    assert list(table["ranks"]) == [1, 2] and list(table["device, all ranks"]) == ["100.00 MiB", "150.00 MiB"]
