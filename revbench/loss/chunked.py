"""`chunked`: the LM head and cross-entropy run over chunks of tokens, and each chunk's logits are recomputed in
backward, so the B x S x V logits (and their float32 copies) never exist at once.

The model's `lm_head` is replaced by `ChunkedCrossEntropyHead`, which holds the very same weight and returns the
mean next-token loss instead of logits. Every wrapper the forward runs through (a PEFT model, a DeepSpeed engine,
RevFFN) still calls `lm_head`, so ZeRO-3 gathers its weight as usual. The router's auxiliary loss is added as
the Hugging Face causal LM adds it. torchtune's `CEWithChunkedOutputLoss`, Liger's fused linear cross-entropy and
Apple's Cut Cross-Entropy do the same; this is the plain torch path, which runs everywhere.

The chunks are one autograd Function, not a checkpoint each: backward writes each chunk's gradient into one buffer
for the hidden states and adds it to the weight's, where a checkpointed slice would make a zero-filled gradient
of all the hidden states per chunk and add it up (work quadratic in the tokens), and the autograd engine would
run a dozen nodes per chunk.

On fake tensors (`revbench estimate`) the loops take the first and the last chunk only. Every chunk allocates and
frees the same tensors (the last one's may be shorter) on top of the same live ones, so the step's peak and every
category at it are the same to the byte; a long step's estimate then costs two chunks' ops, not thousands
(tests/test_estimate_extrapolation.py holds the two equal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from revbench.loss.full import FullLoss
from revbench.spec import TrainSpec

IGNORE_INDEX = -100  # what transformers' ForCausalLMLoss pads the shifted labels with


def _chunks(hidden: torch.Tensor, size: int) -> Iterator[slice]:
    """The chunks of `hidden`'s tokens; of fake tensors, the first and the last (see the module's docstring)."""
    starts = range(0, hidden.shape[0], size)
    if _is_fake(hidden) and len(starts) > 2:
        starts = starts[:: len(starts) - 1]
    return (slice(start, start + size) for start in starts)


def _is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor)


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
    """One chunk's summed cross-entropy; its logits are freed on return, so every chunk starts on the same live
    tensors."""
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _chunk_backward(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                    scale: torch.Tensor, grads: tuple[torch.Tensor | None, ...]) -> None:
    """Write one chunk's gradients into `grads` (its rows of the hidden states' gradient, and the weight's and
    bias's sums, each None where not wanted). The gradient of the summed cross-entropy with respect to the logits
    is (softmax minus the target's one-hot) x `scale` (the loss's gradient, 0 on ignored tokens), computed in place
    on one float32 copy of the logits; `targets` (tokens x 1) is clamped, an ignored token's row scaled to 0."""
    logits = F.linear(hidden, weight, bias).float()
    grad = logits.sub_(logits.logsumexp(-1, keepdim=True)).exp_()
    grad.scatter_add_(1, targets, torch.ones_like(scale).neg_())
    grad = grad.mul_(scale).to(weight.dtype)
    grad_hidden, grad_weight, grad_bias = grads
    if grad_hidden is not None:
        torch.mm(grad, weight, out=grad_hidden)
    if grad_weight is not None:
        grad_weight.addmm_(grad.t(), hidden)
    if grad_bias is not None:
        grad_bias.add_(grad.sum(0))


class ChunkedCrossEntropy(torch.autograd.Function):
    """The summed next-token cross-entropy of `hidden` (tokens x hidden size) through `head`'s weight, a chunk of
    tokens at a time. Backward reads the weight from `head` again, as a recomputation would, so ZeRO-3 may release
    it between forward and backward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, head: ChunkedCrossEntropyHead) -> torch.Tensor:
        ctx.head = head
        ctx.save_for_backward(hidden, targets)
        total = hidden.new_zeros((), dtype=torch.float32)
        for chunk in _chunks(hidden, head.chunk_tokens):
            total += _chunk_loss(hidden[chunk], weight, bias, targets[chunk])
        return total

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, targets = ctx.saved_tensors
        weight, bias = ctx.head.weight, ctx.head.bias
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        grad_weight = torch.zeros_like(weight) if wants_weight else None
        grad_bias = torch.zeros_like(bias) if wants_bias else None
        # Per token, once for all chunks: where its target's one-hot goes, and its scale.
        scale = (targets != IGNORE_INDEX).unsqueeze(1) * grad_loss
        targets = targets.clamp(min=0).unsqueeze(1)
        for chunk in _chunks(hidden, ctx.head.chunk_tokens):
            rows = grad_hidden[chunk] if grad_hidden is not None else None
            _chunk_backward(hidden[chunk], weight, bias, targets[chunk], scale[chunk], (rows, grad_weight, grad_bias))
        return grad_hidden, grad_weight, grad_bias, None, None


class ChunkedCrossEntropyHead(nn.Module):
    """An LM head that returns the mean next-token cross-entropy of `targets`, `chunk_tokens` tokens at a time."""

    def __init__(self, head: nn.Linear, chunk_tokens: int) -> None:
        super().__init__()
        self.weight = head.weight  # the same Parameter: names, optimizer and checkpoints are unchanged
        self.bias = head.bias
        self.chunk_tokens = chunk_tokens
        self.targets: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            raise RuntimeError("the chunked loss head needs its targets: run it through ChunkedLoss")
        labels = self.targets.to(hidden.device)
        shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
        flat = hidden.reshape(-1, hidden.shape[-1])
        total = ChunkedCrossEntropy.apply(flat, self.weight, self.bias, shifted, self)
        return total / (shifted != IGNORE_INDEX).sum()


class ChunkedLoss(FullLoss):
    name = "chunked"
    option_names = ("chunk_tokens",)

    def __init__(self, spec: TrainSpec) -> None:
        super().__init__(spec)
        self.chunk_tokens = spec.count_option("chunk_tokens", "tokens", 1024)
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
