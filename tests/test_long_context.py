"""Long sequences: no S x S matrix anywhere in a step (the attention path said in words), and a sequence search that
goes past the model's positions only when asked (`--max-seq`)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from revbench.cli import main
from revbench.data import Workload
from revbench.estimate.fake_step import MethodStep
from revbench.methods import TrainSpec
from revbench.models import ModelSpec, build_config
from revbench.models.attention import attention_path

SEQ = 2048


class SquareWatch(TorchDispatchMode):
    """The ops whose output has two dimensions of SEQ or more: an S x S mask or score matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.square: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and sum(size >= SEQ for size in t.shape) >= 2:
                self.square.append(f"{func}: {tuple(t.shape)}")
        return out


@pytest.mark.parametrize("name", ["checkpointing", "revffn", "revexact"])
def test_no_step_holds_an_s_by_s_matrix(name: str) -> None:
    # tiny-qwen2-moe: transformers' Qwen2-MoE would build a sliding-window mask no layer reads (models/attention.py)
    spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=1), workload=Workload(batch=1, seq=SEQ))
    step = MethodStep(name, spec, "cpu")
    watch = SquareWatch()
    with step.context(), watch:
        step.method.zero_grad()
        step.train(1, SEQ)
    assert not watch.square, watch.square[:3]


def test_the_attention_path_is_said() -> None:
    config = build_config(ModelSpec("qwen1.5-moe-a2.7b"))
    assert attention_path(config, 524288) == "SDPA, causal without a mask: the flash or memory-efficient kernel, " \
                                             "no S x S matrix"
    config._attn_implementation = "eager"
    assert attention_path(config, 4096).startswith("eager attention: an S x S score matrix")
    sliding = build_config(ModelSpec("tiny-mixtral", config={"sliding_window": 1024}))
    assert "explicit sliding-window mask" in attention_path(sliding, 4096)
    assert "no S x S matrix" in attention_path(sliding, 512)  # within the window: causal in the kernel


def estimate_json(*flags: str, capsys: pytest.CaptureFixture[str]) -> dict:
    argv = ["estimate", "--model", "tiny-qwen2-moe", "--layers", "1", "--method", "revffn", "--batch", "1",
            "--device", "cpu", "--json", "--jobs", "1", *flags]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_the_sequence_search_stops_at_the_positions_unless_lifted(capsys: pytest.CaptureFixture[str]) -> None:
    positions = build_config(ModelSpec("tiny-qwen2-moe")).max_position_embeddings
    row = estimate_json("--budget", "1GiB", "--fit", "seq", capsys=capsys)
    assert (row["largest_seq"], row["largest_seq_capped"], row["max_seq"]) == (positions, True, positions)
    lifted = estimate_json("--budget", "1GiB", "--fit", "seq", "--max-seq", str(4 * positions), capsys=capsys)
    assert positions < lifted["largest_seq"] <= 4 * positions and lifted["max_seq"] == 4 * positions
    assert lifted["attention"].startswith("SDPA, causal without a mask")


def test_max_seq_needs_a_sequence_search(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--model", "tiny-qwen2-moe", "--max-seq", "65536"]) == 2
    assert "--max-seq caps the sequence search: give it with --fit" in capsys.readouterr().err
