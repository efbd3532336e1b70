"""The composable techniques: each axis value against its reference, exactly, on tiny models in float32."""

from __future__ import annotations

import math

import pytest
import torch
from methods_util import max_difference, train

from revbench.data import TokenStream, Workload
from revbench.harness import run_method
from revbench.methods import (
    Composition,
    OptimizerSpec,
    TrainSpec,
    UnknownMethodError,
    create_method,
    parse_method,
)
from revbench.models import ModelSpec

WIDE = "tiny-qwen2-moe-32k-vocab"  # logits dominate, as at full scale


def spec(preset: str = "tiny-qwen2-moe", seq: int = 64, **options: object) -> TrainSpec:
    return TrainSpec(model=ModelSpec(preset, layers=2), workload=Workload(batch=2, seq=seq),
                     optimizer=OptimizerSpec(lr=1e-3, eps=1e-6), options=dict(options))


def loss_and_grads(name: str, train_spec: TrainSpec) -> tuple[float, dict[str, torch.Tensor]]:
    method = create_method(name, train_spec)
    method.prepare()
    try:
        batch = TokenStream(train_spec.workload, method.vocab_size).batch(0)
        loss = method.loss(method.forward, batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None}
    finally:
        method.teardown()


def test_presets_are_compositions_and_compositions_are_named_by_their_preset() -> None:
    assert parse_method("checkpointing") == Composition("checkpoint", "adamw", "full")
    assert parse_method("revffn+zero2-offload+full").name == "revffn-zero2-offload"
    assert parse_method("checkpoint+adamw-8bit-in-backward+chunked").name == "checkpoint+adamw-8bit-in-backward+chunked"
    with pytest.raises(UnknownMethodError, match="unknown states technique 'adam'; choose one of adamw"):
        parse_method("store+adam+full")
    with pytest.raises(UnknownMethodError, match="ACTIVATIONS\\+STATES\\+LOSS"):
        parse_method("checkpoint+chunked")


def test_combinations_that_cannot_work_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="RevFFN's newly initialised stream adapters would never train"):
        create_method("revffn+lora+full", spec())
    with pytest.raises(ValueError, match="its gradient reaches ZeRO-3 twice in one step"):
        create_method("revffn+zero3-offload+full", spec(adapters="shared"))
    with pytest.raises(ValueError, match="'adamw-8bit' does not use"):
        create_method("store+adamw-8bit+full", TrainSpec(optimizer=OptimizerSpec(implementation="fused")))
    with pytest.raises(ValueError, match="has no option rank; its options are chunk_tokens, tile_tokens"):
        create_method("store+adamw+chunked", spec(rank=4))


@pytest.mark.parametrize("activations", ["store", "checkpoint", "revffn", "revexact"])
def test_chunked_loss_equals_the_full_loss_and_its_gradients(activations: str) -> None:
    full_loss, full_grads = loss_and_grads(f"{activations}+adamw+full", spec(WIDE))
    # 40 does not divide 2 x 64 tokens: the last chunk is short.
    chunked_loss, chunked_grads = loss_and_grads(f"{activations}+adamw+chunked", spec(WIDE, chunk_tokens=40))
    assert chunked_loss == pytest.approx(full_loss, rel=1e-6)
    assert full_grads.keys() == chunked_grads.keys()
    for name, grad in full_grads.items():
        scale = grad.abs().max().item()
        assert (chunked_grads[name] - grad).abs().max().item() <= 1e-6 * max(scale, 1e-12) + 1e-9, name


@pytest.mark.parametrize("implementation", ["foreach", "fused", "for-loop"])
def test_adamw_in_backward_follows_adamw(implementation: str) -> None:
    train_spec = spec()
    train_spec.optimizer = OptimizerSpec(lr=1e-3, eps=1e-6, implementation=implementation)
    reference, reference_params = train("standard", train_spec)
    in_backward, params = train("store+adamw-in-backward+full", train_spec)
    assert in_backward == pytest.approx(reference, rel=1e-6)
    assert max_difference(reference_params, params) < 1e-6


def test_8bit_adamw_trains_with_about_two_bytes_a_parameter() -> None:
    pytest.importorskip("bitsandbytes")
    losses, _ = train("store+adamw-8bit+full", spec(seq=128))
    assert losses[-1] < losses[0] - 0.05, losses
    result = run_method("store+adamw-8bit+full", spec(seq=128), steps=1, warmup=1)
    method = create_method("standard", spec(seq=128))
    method.prepare()
    sizes = [p.numel() for p in method.model.parameters()]
    method.teardown()
    # bitsandbytes keeps tensors under 4,096 elements in 32 bits; the others in uint8 with a float32 absmax
    # per 256-element block, and one 256-entry float32 code map per moment for the whole optimizer.
    quantized = [n for n in sizes if n >= 4096]
    expected = sum(2 * n + 2 * 4 * math.ceil(n / 256) for n in quantized) + sum(8 * n for n in sizes if n < 4096)
    measured = result.metrics["memory"]["tensor_bytes"]["optimizer"]
    assert expected <= measured <= expected + 2 * 4 * 256
    assert measured < 2.1 * sum(quantized) + 8 * sum(n for n in sizes if n < 4096) + 2048


def _peak(name: str, train_spec: TrainSpec) -> dict:
    return run_method(name, train_spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]


def test_exact_bytes_of_the_techniques_on_a_wide_vocabulary() -> None:
    train_spec = spec(WIDE, seq=128)
    b, s, v = 2, 128, 32768
    logits = b * s * v * 4  # float32 logits of the batch
    standard = _peak("standard", train_spec)
    chunked = _peak("store+adamw+chunked", spec(WIDE, seq=128, chunk_tokens=32))
    in_backward = _peak("store+adamw-in-backward+full", train_spec)
    # The full loss's peak holds the logits; the chunked loss never makes them, so it saves at least their size.
    assert standard["activations"] > logits
    assert standard["total"] - chunked["total"] >= logits
    assert chunked["activations"] < logits // 8
    # Stepping in backward frees each gradient at once: at most one parameter's gradient is ever live.
    method = create_method("standard", train_spec)
    method.prepare()
    largest = max(p.numel() * p.element_size() for p in method.model.parameters())
    method.teardown()
    assert in_backward["grads"] <= largest
    # The optimizer step's temporaries are workspace, not activations.
    assert chunked["phase"] == "optimizer" and chunked["workspace"] > 0
    assert standard["phase"] == "backward" and standard["workspace"] == 0
    assert all(figure["host"] == 0 and figure["device"] == figure["total"]
               for figure in (standard, chunked, in_backward))


def test_8bit_adamw_estimate_is_bitsandbytes_layout() -> None:
    pytest.importorskip("bitsandbytes")
    from revbench.estimate import estimate_method

    train_spec = spec(seq=128)
    measured = _peak("store+adamw-8bit+full", train_spec)
    estimate = estimate_method("store+adamw-8bit+full", train_spec, target="cpu")
    assert estimate.status == "ok", estimate.reason
    got = estimate.tensor_bytes
    assert (got.params, got.optimizer) == (measured["params"], measured["optimizer"])
    # bitsandbytes' CPU update is plain torch that dequantizes each tensor's two moments (and computes in) float32;
    # the estimate models the CUDA kernel, which updates in place. The gap is at most a few float32 copies of the
    # largest parameter.
    method = create_method("standard", train_spec)
    method.prepare()
    largest = max(p.numel() for p in method.model.parameters())
    method.teardown()
    assert 0 <= measured["total"] - got.total <= 5 * 4 * largest
