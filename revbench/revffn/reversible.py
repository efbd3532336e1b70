"""Backprop over the whole decoder stack without per-layer activations, one layer's gradients at a time.

Forward (under no_grad) keeps the stack output, per layer the routing indices, a per-token sketch of its input
(and RNG snapshots of random branches), and, only for fallback="recompute", the stack input. Backward walks the
layers in reverse, each reconstructed and backpropagated by `inverse.layer_backward`, with the forward's autocast
state re-entered; each layer's parameter gradients leave through its own graph node (handoff.py), so gradient
hooks, in-backward optimizers and ZeRO's reduce hooks see them layer by layer.
"""

from __future__ import annotations

import torch

from revbench.revffn.handoff import Walk, gathered
from revbench.revffn.inverse import layer_backward
from revbench.revffn.replay import BranchRng
from revbench.revffn.stack import FallbackCache, LayerRecord, LayerStats, StackRun, run_forward, split


class RevFFNWalk(Walk):
    """The RevFFN stack's forward and its backward walk (handoff.py): it reconstructs down from the output."""

    keeps_output = True

    def __init__(self, run: StackRun) -> None:
        super().__init__(run.blocks)
        self.run = run
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        run = self.run
        run.records = [LayerRecord(BranchRng(hidden.device)) for _ in run.blocks]
        x1, x2, logits = run_forward(run, hidden)
        self.hidden_dtype = hidden.dtype
        self.hidden = hidden.detach() if run.options.fallback == "recompute" else None
        return torch.cat([x1, x2], dim=-1), logits

    def begin_backward(self, out: torch.Tensor | None, grad_out: torch.Tensor | None) -> None:
        run = self.run
        for rec in run.records:
            rec.rng.replaying = True
        run.cache = FallbackCache()
        self.y = split(out.detach())
        self.g = split(grad_out if grad_out is not None else torch.zeros_like(out))
        self.stats: list[LayerStats] = []

    def layer_backward(self, n: int) -> dict[int, torch.Tensor]:
        run = self.run
        grad_logits = self.logits_grad(run.records[n].logits_slot)
        with gathered(run.blocks[n].read_directly()), run.autocast.replay():
            layer = layer_backward(run, n, self.y, self.g, grad_logits, self.hidden)
        self.y, self.g = layer.x, layer.grad_x
        self.stats.append(layer.stats)
        return layer.params

    def end_backward(self) -> torch.Tensor | None:
        run = self.run
        run.on_stats(self.stats[::-1], run.cache.counts())
        run.cache = FallbackCache()  # free what the fallbacks kept
        grad = torch.cat(self.g, dim=-1).to(self.hidden_dtype) if self.input_needs_grad else None
        self.y = self.g = ()
        self.hidden = None
        return grad
