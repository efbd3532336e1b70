"""Both reversible stacks hand each layer's gradients to autograd as soon as they exist (revffn/handoff.py).

On every family: the hooks of layer n's parameters fire before anything of layer n-1, so an in-backward optimizer
holds one layer's gradients at a time; `loss.backward()` and `torch.autograd.grad` give the same bits; in-backward
steps after 2 steps equal one AdamW over all parameters, bit for bit; and at 8 layers the measured peak of
revexact with 8-bit AdamW in backward is below checkpointing's with it, holding at most one layer's gradients.
Under DeepSpeed ZeRO-2 and ZeRO-3 offload, DeepSpeed's own reduce hook takes each layer's gradients between its
rebuild and the next, and ZeRO-3 (which partitions the weights, RevFFN's directly read norms included) trains as
ZeRO-2 does.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from methods_util import max_difference, tiny_spec, train

from revbench import revexact, revffn
from revbench.benchmarks.handoff import gradient_bound
from revbench.harness import run_method
from revbench.methods import create_method
from revbench.models import TINY_PRESETS, ModelSpec, build_model
from revbench.revexact.function import ExactWalk
from revbench.revffn.handoff import Walk, gathered
from revbench.revffn.reversible import RevFFNWalk
from revbench.states.zero import BASELINES_DIR

DESIGNS = {"revffn": revffn.convert, "revexact": revexact.convert}
WALKS = {"revffn": RevFFNWalk, "revexact": ExactWalk}
CASES = [pytest.param(d, p, id=f"{d}-{p}") for d in DESIGNS for p in TINY_PRESETS]
LAYER = re.compile(r"\.layers\.(\d+)\.")


def converted(design: str, preset: str, layers: int = 3) -> torch.nn.Module:
    return DESIGNS[design](build_model(ModelSpec(preset, layers=layers), seed=0)).train()


def layer_of(name: str) -> int | None:
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("design", "preset"), CASES)
def test_each_layer_hands_off_before_the_next_is_reconstructed(design: str, preset: str) -> None:
    model = converted(design, preset)
    names = {p: n for n, p in model.named_parameters()}
    fired: list[int | None] = []
    live: list[set[int]] = []

    def step(param: torch.Tensor) -> None:  # what an in-backward optimizer does: use the gradient, free it
        fired.append(layer_of(names[param]))
        live.append({layer_of(n) for n, p in model.named_parameters()
                     if p.grad is not None and layer_of(n) is not None})
        param.grad = None

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(step)
    ids = tokens()
    model(input_ids=ids, labels=ids).loss.backward()
    order = [n for n in fired if n is not None]
    runs = [n for i, n in enumerate(order) if i == 0 or order[i - 1] != n]
    assert runs == [2, 1, 0], runs  # top layer first, each layer's hooks together
    assert all(len(layers) <= 1 for layers in live)  # never two layers' gradients at once
    assert len(fired) == sum(p.requires_grad for p in model.parameters())  # every hook exactly once


@pytest.mark.parametrize(("design", "preset"), CASES)
def test_backward_and_autograd_grad_give_the_same_bits(design: str, preset: str) -> None:
    model = converted(design, preset)
    ids = tokens()
    model(input_ids=ids, labels=ids).loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    by_grad = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params, allow_unused=True)
    for p, grad in zip(params, by_grad, strict=True):
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)


@pytest.mark.parametrize("preset", TINY_PRESETS)
@pytest.mark.parametrize("design", DESIGNS)
def test_in_backward_steps_equal_one_adamw_after_two_steps(design: str, preset: str) -> None:
    spec = replace(tiny_spec(), model=ModelSpec(preset, layers=2))
    losses, weights = train(f"{design}+adamw+full", spec, steps=2)
    in_backward = train(f"{design}+adamw-in-backward+full", spec, steps=2)
    assert in_backward[0] == losses
    assert all(torch.equal(weights[k], in_backward[1][k]) for k in weights)


def test_revexact_with_8bit_adamw_in_backward_peaks_below_checkpointing_at_8_layers() -> None:
    spec = replace(tiny_spec(chunk_tokens=32), model=ModelSpec("tiny-qwen2-moe", layers=8))
    peaks = {name: run_method(name, spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
             for name in ("revexact+adamw-8bit-in-backward+chunked", "checkpoint+adamw-8bit-in-backward+chunked")}
    ours, theirs = peaks["revexact+adamw-8bit-in-backward+chunked"], peaks["checkpoint+adamw-8bit-in-backward+chunked"]
    assert ours["total"] < theirs["total"], (ours, theirs)
    assert ours["grads"] <= gradient_bound(spec), ours  # one layer's parameters plus those outside the stack


@pytest.mark.parametrize("design", DESIGNS)
def test_frozen_embeddings_still_walk_the_stack_and_record_its_statistics(design: str) -> None:
    ids = tokens()
    reference = converted(design, "tiny-qwen2-moe")
    reference(input_ids=ids, labels=ids).loss.backward()
    model = converted(design, "tiny-qwen2-moe")
    model.model.embed_tokens.weight.requires_grad_(False)  # the stack input then takes no gradient
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.reconstruction_summary()["backwards"] == 1
    expected = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.grad, expected[name].grad), name
    assert model.model.embed_tokens.weight.grad is None


@pytest.fixture(scope="module")
def zero3_partitioning_norms(tmp_path_factory: pytest.TempPathFactory) -> str:
    """ZeRO-3's own config with no persistent parameters: the norm weights (which RevFFN reads outside their
    modules' calls) are then partitioned too, as they are in a model whose hidden size passes the threshold."""
    config = json.loads((BASELINES_DIR / "zero3-offload.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path_factory.mktemp("zero3") / "zero3-no-persistent.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.deepspeed
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-norms", "partitioned-norms"])
@pytest.mark.parametrize("design", DESIGNS)
def test_under_zero3_offload_each_design_follows_zero2_offload(design: str, persistent: bool,
                                                               zero3_partitioning_norms: str) -> None:
    """ZeRO-3 partitions the layer weights: each layer is gathered for its reconstruction (its modules by ZeRO-3's
    hooks, RevFFN's norm weights around their reads) and hands its gradients over while gathered."""
    zero2 = train(f"{design}+zero2-offload+full", tiny_spec())
    zero3 = train(f"{design}+zero3-offload+full",
                  tiny_spec() if persistent else tiny_spec(config=zero3_partitioning_norms))
    assert zero3[0] == pytest.approx(zero2[0], rel=1e-6)
    assert max_difference(zero2[1], zero3[1]) < 1e-5  # DeepSpeed's reduction order differs by stage


@pytest.mark.deepspeed
def test_gathered_makes_a_partitioned_norm_weight_whole_and_gives_it_back(zero3_partitioning_norms: str) -> None:
    """What RevFFN reads outside module calls is gathered only while partitioned away, and partitioned again after."""
    method = create_method("revffn+zero3-offload+full", tiny_spec(config=zero3_partitioning_norms))
    method.prepare()
    try:
        method.zero_grad()
        method.train_step(tokens())
        block = method.model.model.layers[0]
        norm = block.attn_norm.weight
        assert norm in block.read_directly() and norm.shape == (0,)  # partitioned away between steps
        with gathered(block.read_directly()):
            assert norm.shape == norm.ds_shape
        assert norm.shape == (0,)
    finally:
        method.teardown()


@pytest.mark.deepspeed
@pytest.mark.parametrize("states", ["zero2-offload", "zero3-offload"])
@pytest.mark.parametrize("design", DESIGNS)
def test_zero_reduces_and_offloads_each_layer_as_the_walk_hands_it_off(design: str, states: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed's own reduce hook (what buckets, reduces and offloads a gradient) takes each layer's gradients
    after the walk has rebuilt that layer and before it rebuilds the one below; every parameter once."""
    events: list[tuple[str, int | None]] = []  # ("walk", n) as layer n is rebuilt, ("reduce", layer) per gradient
    walk = WALKS[design]
    rebuild = walk.layer_backward

    def rebuilding(self: Walk, n: int) -> dict[int, torch.Tensor]:
        events.append(("walk", n))
        return rebuild(self, n)

    monkeypatch.setattr(walk, "layer_backward", rebuilding)
    method = create_method(f"{design}+{states}+full", replace(tiny_spec(), model=ModelSpec("tiny-qwen2-moe", layers=3)))
    method.prepare()
    try:
        optimizer = method.states.optimizer
        names = {p: n for n, p in method.model.named_parameters()}
        reduced: list[str] = []
        reduce = optimizer.reduce_ready_partitions_and_remove_grads

        def reducing(param: torch.nn.Parameter, *rest: object) -> None:
            reduced.append(names[param])
            events.append(("reduce", layer_of(names[param])))
            reduce(param, *rest)

        monkeypatch.setattr(optimizer, "reduce_ready_partitions_and_remove_grads", reducing)
        method.zero_grad()
        method.train_step(tokens())
    finally:
        method.teardown()
    walked = {n: i for i, (kind, n) in enumerate(events) if kind == "walk"}
    assert list(walked) == [2, 1, 0]
    for i, (kind, n) in enumerate(events):
        if kind == "reduce" and n is not None:
            assert walked[n] < i < walked.get(n - 1, len(events)), events
    assert sorted(reduced) == sorted(n for p, n in names.items() if p.requires_grad)


def test_revexact_with_lora_follows_lora_on_the_unconverted_model() -> None:
    """Adapters go into the unchanged layers; the quantised stack then follows the plain model within its grid."""
    plain, _ = train("store+lora+full", tiny_spec())
    ours, _ = train("revexact+lora+full", tiny_spec())
    assert ours == pytest.approx(plain, abs=5e-3)
