"""RevFFN's public API: conversion, options, errors, state dicts across modes, save/load, the method."""

import pytest
import torch
from test_revffn_gradients import gradients, perturb, reversible_matches_vanilla, tokens, worst_rel
from transformers import LlamaConfig, LlamaForCausalLM

from revbench.cli import main
from revbench.data import Workload
from revbench.methods import TrainSpec, create_method, option_names, parse_method
from revbench.models import ModelSpec, UnsupportedArchitectureError, build_model
from revbench.revffn import OPTION_NAMES, RevFFNForCausalLM, convert, load_revffn, save_revffn


def tiny(preset: str = "tiny-qwen2-moe", **kwargs) -> torch.nn.Module:
    return build_model(ModelSpec(preset, layers=2, hidden=64, **kwargs))


def test_conversion_reuses_the_pretrained_modules() -> None:
    hf = tiny()
    model = convert(hf)
    for block, layer in zip(model.model.layers, hf.model.layers, strict=True):
        assert block.self_attn is layer.self_attn and block.mlp is layer.mlp
    assert model.model.embed_tokens is hf.model.embed_tokens and model.lm_head is hf.lm_head
    assert model.model.norm is hf.model.norm and model.config.vocab_size == 256
    ours = {p.data_ptr() for p in model.parameters()}
    dropped = {p.data_ptr() for layer in hf.model.layers
               for p in (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)}  # folded, norm="new"
    assert {p.data_ptr() for p in hf.parameters()} - dropped <= ours  # no copies
    added = {n for n, _ in model.new_parameters()}
    assert added and all(".attn_adapter." in n or ".moe_adapter." in n or "_norm." in n for n in added)


def test_loss_adds_the_family_router_aux_loss_like_hf() -> None:
    model = convert(tiny("tiny-olmoe"))
    ids = tokens()
    out = model(input_ids=ids, labels=ids)
    plain = model(input_ids=ids, labels=ids, output_router_logits=False)
    assert len(out.router_logits) == 2 and plain.aux_loss is None
    torch.testing.assert_close(out.loss, plain.loss + model.config.router_aux_loss_coef * out.aux_loss)


def test_clear_errors() -> None:
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(UnsupportedArchitectureError, match=r"supports qwen2_moe .*mixtral"):
        convert(llama)
    with pytest.raises(ValueError, match="hidden_size 65 cannot be split"):
        convert(build_model(ModelSpec("tiny-qwen3-moe", layers=1, hidden=65)))
    with pytest.raises(ValueError, match="unknown RevFFN option colour; the options are coupling"):
        convert(tiny(), colour="blue")
    with pytest.raises(ValueError, match="coupling='sideways' is not one of cross, closed-form"):
        convert(tiny(), coupling="sideways")
    with pytest.raises(ValueError, match="fixed at conversion"):
        convert(tiny()).configure(adapters="shared")


@pytest.mark.parametrize(("adapters", "norm"),
                         [("shared", "new"), ("per-branch", "pretrained"), ("shared", "pretrained")])
def test_adapter_layouts_and_norm_placements(adapters: str, norm: str) -> None:
    model = convert(tiny("tiny-qwen3-moe"), adapters=adapters, norm=norm, verify=True).train()
    perturb(model)
    reversible_matches_vanilla(model, tokens())
    names = {n for n, _ in model.named_parameters()}
    assert any(".adapter." in n for n in names) == (adapters == "shared")
    assert any("input_layernorm" in n for n in names) == (norm == "pretrained")


def test_state_dict_moves_between_modes_and_survives_save_and_load(tmp_path) -> None:
    source = convert(tiny("tiny-mixtral"), mode="reversible").train()
    perturb(source)
    target = convert(build_model(ModelSpec("tiny-mixtral", layers=2, hidden=64), seed=5), mode="vanilla").train()
    target.load_state_dict(source.state_dict())
    ids = tokens()
    loss, rev = gradients(source, ids)
    target_loss, van = gradients(target, ids)
    torch.testing.assert_close(loss, target_loss, rtol=1e-6, atol=0)
    assert worst_rel(rev, van) <= 1e-5

    save_revffn(source, tmp_path / "ckpt")
    loaded = load_revffn(tmp_path / "ckpt")
    assert isinstance(loaded, RevFFNForCausalLM) and loaded.options == source.options
    saved = source.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    assert load_revffn(tmp_path / "ckpt", mode="vanilla").options.mode == "vanilla"
    with pytest.raises(FileNotFoundError, match="not a saved RevFFN model"):
        load_revffn(tmp_path)


def test_method_two_stage_schedule() -> None:
    spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2, hidden=64), workload=Workload(batch=2, seq=16),
                     options={"stage": "two-stage", "warmup_steps": 1, "max_iters": 40})
    method = create_method("revffn", spec)
    assert set(OPTION_NAMES) | {"stage", "warmup_steps", "tile_tokens"} == set(option_names(parse_method("revffn")))
    method.prepare()
    model = method.model
    new = {n for n, _ in model.new_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = tokens(seq=16)
    method.zero_grad()
    method.train_step(ids)  # stage 1: adapters and new norms only
    assert {n for n, p in model.named_parameters() if p.grad is not None} == new
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == new
    method.zero_grad()
    method.train_step(ids)  # stage 2: everything
    assert all(p.grad is not None for p in model.parameters())
    stats = method.stats()
    assert stats["steps"] == 2 and stats["trains_everything"] and stats["fallbacks_total"] == 0
    assert stats["mean_iterations"] >= 1 and stats["worst_residual"] <= 1e-6
    with pytest.raises(ValueError, match="unknown RevFFN stage"):
        create_method("revffn", TrainSpec(options={"stage": "later"}))


def test_bench_depth_prints_a_table(capsys) -> None:
    assert main(["bench", "depth", "--depths", "1,2", "--batch", "1", "--seq", "8", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    for column in ("act standard", "act checkpointing", "act revffn", "revffn mean iters", "revffn worst residual",
                   "time revffn/standard", "act revexact", "kept revexact", "time revexact/checkpointing",
                   "revexact fallbacks"):
        assert column in out
    assert "Step time at 2 layers relative to checkpointing" in out
    assert main(["bench", "depth", "--depths", "two"]) == 2
    assert main(["bench", "depth", "--runs", "checkpointing,revnet"]) == 2
