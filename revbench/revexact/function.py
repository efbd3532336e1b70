"""Backprop through the integer momentum stack without per-layer activations: one autograd.Function.

Backward walks the layers from the top with the pair (x_n, x_{n+1}) and the gradients (a, b) of the loss with
respect to them. Layer n >= 1 is evaluated once, with grad, at x_n: its rounded output Q[z_n] rebuilds x_{n-1}
exactly (grid.invert) and its vector-Jacobian product gives (dL/dx_{n-1}, dL/dx_n) = (-gamma b, a + J_z^T b)
(rounding is straight-through) and the layer's parameter gradients. Layer 0 is the plain step x_1 = Q[layer_0(x_0)],
x_0 = Q[embeds]. The rebuilt x_{n-1} is checked against its forward checksum; on a mismatch (a recompute that is
not bitwise reproducible, a corrupted side bit) the fallback recomputes x_0..x_{n-1} forward from the kept stack
input, once, and the layers below take their inputs from that cache: at most L - 1 layer forwards per backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from revbench.revexact.sidebits import unpack
from revbench.revexact.stack import LayerRecord, LayerStats, StackRun, integer_forward
from revbench.revffn.inverse import ReconstructionError
from revbench.revffn.replay import BranchRng


class ExactReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: StackRun, embeds: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        run.records = [LayerRecord(BranchRng(embeds.device)) for _ in run.layers]
        (x_last_in, x_out), logits = _final_pair(run, embeds)
        ctx.run = run
        ctx.embeds_dtype = embeds.dtype
        ctx.set_materialize_grads(False)
        keep = embeds.detach() if run.options.fallback == "recompute" else None
        ctx.save_for_backward(x_last_in, x_out, keep)
        return (run.grid.real(x_out, torch.promote_types(run.dtype, torch.float32)), *logits)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor | None, *grad_logits: torch.Tensor | None) -> tuple[Any, ...]:
        run: StackRun = ctx.run
        x_cur, x_next, embeds = ctx.saved_tensors
        for rec in run.records:
            rec.rng.replaying = True
        grads: dict[int, torch.Tensor] = {}
        b = grad_out if grad_out is not None else torch.zeros(x_next.shape, dtype=torch.float32,
                                                             device=x_next.device)
        a = torch.zeros_like(b)
        cache: list[torch.Tensor] | None = None  # the fallback's recomputed streams x_0..x_{n-1}, popped as used
        counts = {"recomputed_layer_forwards": 0, "fallback_bytes_kept": 0}
        stats: list[LayerStats] = []
        with run.autocast.replay():
            for n in reversed(range(len(run.layers))):
                rec = run.records[n]
                slot = rec.logits_slot
                exact = None if rec.verify_input is None else torch.equal(x_cur, rec.verify_input)
                q, grad_h, flips = _layer_vjp(run, n, x_cur, b, grad_logits[slot] if slot is not None else None,
                                              grads)
                if n == 0:  # the plain first step: x_0 has no predecessor
                    grad_x0 = a + grad_h.float()
                    stats.append(LayerStats(n, None, False, flips, exact))
                    break
                a, b = -run.grid.gamma * b, a + grad_h.float()
                if cache is not None:  # below a fallback: the inputs are known exactly
                    x_prev, ok = cache.pop(), None
                else:
                    x_prev = run.grid.invert(x_next, q, unpack(rec.side))
                    rec.side = None  # used once: free it as the backward goes down
                    # Fake tensors (an estimate) have no values to compare: they take the exact path.
                    ok = is_fake(x_prev) or bool(torch.equal(run.checksum(x_prev), rec.checksum))
                    if not ok:
                        cache = _recompute(run, n, embeds, counts)
                        x_prev = cache.pop()
                stats.append(LayerStats(n, ok, ok is False, flips, exact))
                x_cur, x_next = x_prev, x_cur
        run.on_backward(stats[::-1], counts)
        grad_embeds = grad_x0.to(ctx.embeds_dtype) if ctx.needs_input_grad[1] else None
        return (None, grad_embeds, *(grads.get(id(p)) for p in run.params))


def _final_pair(run: StackRun, embeds: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    xs, logits = integer_forward(run, embeds, record=True)
    return (xs[-2], xs[-1]), logits


def _layer_vjp(run: StackRun, n: int, x: torch.Tensor, b: torch.Tensor, grad_logits: torch.Tensor | None,
               grads: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """One evaluation of layer n at x_n with grad: (Q[z_n], dL/dh from b and the router logits, routing flips);
    the parameter gradients are added to `grads`."""
    wanted = [p for p in run.layers[n].parameters() if p.requires_grad]
    h = run.grid.real(x, run.dtype).requires_grad_(True)
    tap = run.tap(n, record=False)
    with torch.enable_grad():
        z = run.z(n, h, tap)
    q = run.grid.quantise(z.detach(), f"layer {n} (recomputed)")
    outputs, out_grads = [z], [b.to(z.dtype)]
    if tap.logits is not None and grad_logits is not None:
        outputs.append(tap.logits)
        out_grads.append(grad_logits)
    result = torch.autograd.grad(outputs, [h, *wanted], out_grads, allow_unused=True)
    for p, grad in zip(wanted, result[1:], strict=True):
        if grad is not None:
            grads[id(p)] = grad if id(p) not in grads else grads[id(p)] + grad
    flips = None if tap.flips is None or is_fake(tap.flips) else int(tap.flips.item())
    return q, result[0], flips


def _recompute(run: StackRun, n: int, embeds: torch.Tensor | None, counts: dict[str, int]) -> list[torch.Tensor]:
    """x_0..x_{n-1} forward from the kept stack input, replaying routing and RNG (the fallback, once)."""
    if embeds is None:
        raise ReconstructionError(f"revexact layer {n}: the rebuilt input of layer {n - 1} does not match its "
                                  f"forward checksum, and fallback='raise'")
    xs, _ = integer_forward(run, embeds, record=False, stop=n - 1)
    counts["recomputed_layer_forwards"] += n - 1
    counts["fallback_bytes_kept"] += sum(x.numel() * x.element_size() for x in xs)
    return xs
