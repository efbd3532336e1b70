"""`chunked`: the LM head and cross-entropy run over chunks of tokens, and each chunk's logits are recomputed in
backward, so the B x S x V logits (and their float32 copies) never exist at once.

The model's `lm_head` is replaced by `ChunkedCrossEntropyHead`, which holds the very same weight and returns the
mean next-token loss instead of logits. Every wrapper the forward runs through (a PEFT model, a DeepSpeed engine,
RevFFN) still calls `lm_head`, so ZeRO-3 gathers its weight as usual. The router's auxiliary loss is added as
the Hugging Face causal LM adds it. torchtune's `CEWithChunkedOutputLoss` and Apple's Cut Cross-Entropy do the
same; this is the plain torch path, which runs everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from revbench.loss.full import FullLoss
from revbench.spec import TrainSpec

IGNORE_INDEX = -100  # what transformers' ForCausalLMLoss pads the shifted labels with


class ChunkedCrossEntropyHead(nn.Module):
    """An LM head that returns the mean next-token cross-entropy of `targets`, `chunk_tokens` tokens at a time."""

    def __init__(self, head: nn.Linear, chunk_tokens: int) -> None:
        super().__init__()
        self.weight = head.weight  # the same Parameter: names, optimizer and checkpoints are unchanged
        self.bias = head.bias
        self.chunk_tokens = chunk_tokens
        self.targets: torch.Tensor | None = None

    def _chunk_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight, self.bias).float()
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            raise RuntimeError("the chunked loss head needs its targets: run it through ChunkedLoss")
        labels = self.targets.to(hidden.device)
        shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
        flat = hidden.reshape(-1, hidden.shape[-1])
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, flat.shape[0], self.chunk_tokens):
            chunk = slice(start, start + self.chunk_tokens)
            # No RNG inside, so no RNG state to save; non-reentrant so the weight's gradient flows.
            total = total + checkpoint(self._chunk_loss, flat[chunk], shifted[chunk], use_reentrant=False,
                                       preserve_rng_state=False)
        return total / (shifted != IGNORE_INDEX).sum()


class ChunkedLoss(FullLoss):
    name = "chunked"
    option_names = ("chunk_tokens",)

    def __init__(self, spec: TrainSpec) -> None:
        super().__init__(spec)
        self.chunk_tokens = int(spec.options.get("chunk_tokens", 1024))
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        self.head: ChunkedCrossEntropyHead | None = None
        self.config: Any = None

    def install(self, model: nn.Module) -> None:
        head = getattr(model, "lm_head", None)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"the chunked loss needs a model with a linear lm_head; {type(model).__name__} has "
                            f"{type(head).__name__}")
        self.head = ChunkedCrossEntropyHead(head, self.chunk_tokens)
        model.lm_head = self.head
        self.config = model.config

    def __call__(self, forward: Callable[..., Any], input_ids: torch.Tensor) -> torch.Tensor:
        assert self.head is not None, "install() first"
        self.head.targets = input_ids
        try:
            output = forward(input_ids=input_ids)  # no labels: the model computes no loss of its own
        finally:
            self.head.targets = None
        loss = output.logits  # what the head returned: the mean cross-entropy
        if getattr(output, "aux_loss", None) is not None:
            loss = loss + self.config.router_aux_loss_coef * output.aux_loss.to(loss.device)
        return loss
