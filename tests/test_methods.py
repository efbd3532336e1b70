"""Methods without DeepSpeed: checkpointing against standard, LoRA's frozen base, the registry, the bench."""

from __future__ import annotations

import argparse

import pytest
from methods_util import STEPS, max_difference, tiny_spec, train

from revbench.benchmarks.methods import handle
from revbench.commands import bench
from revbench.methods import METHODS, UnknownMethodError, create_method


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[list[float], dict]]:
    return {name: train(name, tiny_spec()) for name in ("standard", "checkpointing", "lora")}


@pytest.mark.parametrize("name", ["standard", "checkpointing", "lora"])
def test_loss_goes_down(runs, name: str) -> None:
    losses = runs[name][0]
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.05, losses


def test_checkpointing_matches_standard(runs) -> None:
    standard, checkpointing = runs["standard"], runs["checkpointing"]
    assert checkpointing[0] == pytest.approx(standard[0], abs=1e-6)
    assert max_difference(standard[1], checkpointing[1]) < 1e-5


def test_lora_changes_only_adapters_and_targets_the_fused_experts(runs) -> None:
    method = create_method("lora", tiny_spec())
    method.prepare()
    before = method.full_parameters()
    method.teardown()
    after = runs["lora"][1]
    adapters = [name for name in before if ".lora_" in name]
    assert any(".mlp.experts." in name for name in adapters), "the fused 3-D expert weights carry adapters"
    assert any(".shared_expert." in name for name in adapters)
    for name, value in before.items():
        changed = not value.equal(after[name])
        assert changed == (name in adapters), name


def test_lora_options_are_checked() -> None:
    with pytest.raises(ValueError, match="option rank must be a whole number of adapter dimensions >= 1, not 0"):
        create_method("lora", tiny_spec(rank=0))
    with pytest.raises(ValueError, match="option alpha must be a finite number > 0, not nan"):
        create_method("lora", tiny_spec(alpha=float("nan")))
    with pytest.raises(ValueError, match="has no option dropout; its options are rank, alpha, experts"):
        create_method("lora", tiny_spec(dropout=0.1))


def test_unknown_method_lists_the_methods() -> None:
    with pytest.raises(UnknownMethodError) as error:
        create_method("zero4", tiny_spec())
    assert "'zero4'" in str(error.value)
    for name in METHODS:
        assert name in str(error.value)


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "methods", *argv])


def test_bench_methods_prints_a_row_per_method(capsys) -> None:
    args = bench_args("--methods", "standard,checkpointing", "--layers", "1", "--seq", "32", "--steps", "1")
    assert handle(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    for column in ("params", "grads", "optimizer", "activations", "host_peak_rss", "tokens_per_s", "first_loss",
                   "last_loss"):
        assert column in header
    assert "| standard " in out and "| checkpointing " in out
    with pytest.raises(UnknownMethodError, match="the methods are standard"):
        handle(bench_args("--methods", "standard,nope"))
