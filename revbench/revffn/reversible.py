"""Backprop over the whole decoder stack without per-layer activations: one autograd.Function.

Forward (under no_grad) keeps the stack output, per layer the routing indices, a per-token sketch of its input
(and RNG snapshots of random branches), and, only for fallback="recompute", the stack input. Backward walks the
layers in reverse, each reconstructed and backpropagated by `inverse.layer_backward`, with the forward's autocast
state re-entered.

Gradients are returned through the Function, not accumulated into .grad behind autograd's back, so
torch.autograd.grad, gradient hooks and ZeRO's reduce hooks see them as any other gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from revbench.revffn.inverse import layer_backward
from revbench.revffn.replay import BranchRng
from revbench.revffn.stack import FallbackCache, LayerRecord, LayerStats, StackRun, run_forward, split


class ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: StackRun, hidden: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        run.records = [LayerRecord(BranchRng(hidden.device)) for _ in run.blocks]
        x1, x2, logits = run_forward(run, hidden)
        out = torch.cat([x1, x2], dim=-1)
        ctx.run = run
        ctx.hidden_dtype = hidden.dtype
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(out, hidden if run.options.fallback == "recompute" else None)
        return (out, *logits)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor | None, *grad_logits: torch.Tensor | None) -> tuple[Any, ...]:
        run: StackRun = ctx.run
        out, hidden = ctx.saved_tensors
        for rec in run.records:
            rec.rng.replaying = True
        run.cache = FallbackCache()
        grads: dict[int, torch.Tensor] = {}
        y = split(out.detach())
        g = split(grad_out if grad_out is not None else torch.zeros_like(out))
        stats: list[LayerStats] = []
        with run.autocast.replay():
            for i in reversed(range(len(run.blocks))):
                slot = run.records[i].logits_slot
                layer = layer_backward(run, i, y, g, grad_logits[slot] if slot is not None else None, hidden)
                for key, grad in layer.params.items():
                    grads[key] = grad if key not in grads else grads[key] + grad
                y, g = layer.x, layer.grad_x
                stats.append(layer.stats)
        run.on_stats(stats[::-1], run.cache.counts())
        run.cache = FallbackCache()  # free what the fallbacks kept
        grad_hidden = torch.cat(g, dim=-1).to(ctx.hidden_dtype) if ctx.needs_input_grad[1] else None
        return (None, grad_hidden, *(grads.get(id(p)) for p in run.params))
