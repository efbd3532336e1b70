"""Held-out language-model loss: next-token cross-entropy only, without the MoE load-balancing term."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch (labels = input_ids, shifted by one)."""
    logits = model(input_ids=input_ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Token-weighted mean cross-entropy over fixed held-out batches, in eval mode; the mode is restored."""
    if not batches:
        raise ValueError("no held-out batches to evaluate on")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total = sum(float(lm_loss(model, ids.to(device))) * ids[:, 1:].numel() for ids in batches)
    finally:
        model.train(was_training)
    return total / sum(ids[:, 1:].numel() for ids in batches)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
