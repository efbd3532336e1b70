"""Shared by the method tests: one tiny spec and a short training run that returns losses and final weights."""

from __future__ import annotations

import torch

from revbench.data import TokenStream, Workload
from revbench.methods import OptimizerSpec, TrainSpec, create_method
from revbench.models import ModelSpec

STEPS = 3


def tiny_spec(**options: object) -> TrainSpec:
    # eps 1e-6 rather than 1e-8: some gradients are mathematically zero (k_proj.bias, since softmax is
    # shift-invariant) and come out as float noise, which Adam would scale up to lr-sized steps that differ
    # between implementations summing in different orders. A larger eps keeps noise from moving weights.
    return TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2), workload=Workload(batch=2, seq=64),
                     optimizer=OptimizerSpec(lr=1e-3, eps=1e-6), options=dict(options))


def train(name: str, spec: TrainSpec, steps: int = STEPS) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train `steps` steps on distinct text batches; return the losses and the whole parameters after them."""
    method = create_method(name, spec)
    method.prepare()
    try:
        stream = TokenStream(spec.workload, method.vocab_size)
        losses = []
        for step in range(steps):
            method.zero_grad()
            losses.append(float(method.train_step(stream.batch(step))))
        return losses, method.full_parameters()
    finally:
        method.teardown()


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)
