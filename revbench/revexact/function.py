"""Backprop through the integer momentum stack without per-layer activations, one layer's gradients at a time.

Backward walks the layers from the top with the pair (x_n, x_{n+1}) and the gradients (a, b) of the loss with
respect to them. Layer n >= 1 is evaluated once, with grad, at x_n: its rounded output Q[z_n] rebuilds x_{n-1}
exactly (grid.invert_) and its vector-Jacobian product gives (dL/dx_{n-1}, dL/dx_n) = (-gamma b, a + J_z^T b)
(rounding is straight-through) and the layer's parameter gradients. Layer 0 is the plain step x_1 = Q[layer_0(x_0)],
x_0 = Q[embeds]. The rebuilt x_{n-1} is checked against its forward checksum; on a mismatch (a recompute that is
not bitwise reproducible, a corrupted side bit) the fallback recomputes x_0..x_{n-1} forward from the kept stack
input, once, and the layers below take their inputs from that cache: at most L - 1 layer forwards per backward.
Each layer's parameter gradients leave through its own graph node (revffn/handoff.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from revbench.revexact.grid import Grid
from revbench.revexact.sidebits import unpack
from revbench.revexact.stack import LayerRecord, LayerStats, StackRun, integer_forward
from revbench.revffn.handoff import Walk, layer_grads
from revbench.revffn.inverse import ReconstructionError
from revbench.revffn.replay import BranchRng


class ExactWalk(Walk):
    """The exact stack's forward and its backward walk (revffn/handoff.py).

    Backward state: the pair (x_cur, x_next) = (x_n, x_{n+1}) and the gradients (a, b) of the loss with respect
    to them, stepped down one layer per graph node. The pair is kept from the forward: the stack's output (its
    float32 image) is not."""

    keeps_output = False

    def __init__(self, run: StackRun) -> None:
        super().__init__(run.layers)
        self.run = run

    def forward(self, embeds: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        run = self.run
        run.records = [LayerRecord(BranchRng(embeds.device)) for _ in run.layers]
        (self.x_cur, self.x_next), logits = _final_pair(run, embeds)
        self.embeds_dtype = embeds.dtype
        self.embeds = embeds.detach() if run.options.fallback == "recompute" else None
        return run.grid.real(self.x_next, torch.promote_types(run.dtype, torch.float32)), logits

    def begin_backward(self, out: torch.Tensor | None, grad_out: torch.Tensor | None) -> None:
        for rec in self.run.records:
            rec.rng.replaying = True
        self.b = grad_out if grad_out is not None else torch.zeros(self.x_next.shape, dtype=torch.float32,
                                                                   device=self.x_next.device)
        self.a: torch.Tensor | None = None  # zero above the top layer: not allocated
        self.cache: list[torch.Tensor] | None = None  # the fallback's recomputed streams x_0..x_{n-1}, popped
        self.counts = {"recomputed_layer_forwards": 0, "fallback_bytes_kept": 0}
        self.stats: list[LayerStats] = []

    def layer_backward(self, n: int) -> dict[int, torch.Tensor]:
        """Layer n evaluated once with grad; x_{n-1} is rebuilt from its rounded output *before* its backward
        runs, so that the rounded output, the layer's side bits and x_{n+1} (overwritten in place) are gone when
        the layer's backward sets the walk's peak."""
        run, rec = self.run, self.run.records[n]
        grad_logits = self.logits_grad(rec.logits_slot)
        exact = None if rec.verify_input is None else torch.equal(self.x_cur, rec.verify_input)
        with run.autocast.replay():
            layer = _LayerEval(run, n, self.x_cur)
        ok = None
        if n > 0 and self.cache is None:
            self.x_next = run.grid.invert_(self.x_next, layer.q, unpack(rec.side))  # now x_{n-1}
            rec.side = None  # used once: free it as the backward goes down
            # Fake tensors (an estimate) have no values to compare: they take the exact path.
            ok = is_fake(self.x_next) or bool(torch.equal(run.checksum(self.x_next), rec.checksum))
        layer.q = None
        with run.autocast.replay():
            grad_h, grads = layer.backward(self.b, grad_logits)
        self.stats.append(LayerStats(n, ok, ok is False, layer.flips, exact))
        if n == 0:  # the plain first step: x_0 has no predecessor
            self.grad_x0 = grad_h.float() if self.a is None else self.a.add_(grad_h)
            return grads
        # (a, b) <- (-gamma b, a + dL/dh), in place once the walk owns both (b starts as autograd's tensor)
        b = grad_h.float() if self.a is None else self.a.add_(grad_h)
        self.a = -run.grid.gamma * self.b if self.a is None else self.b.mul_(-run.grid.gamma)
        self.b = b
        if self.cache is None and ok is False:
            with run.autocast.replay():
                self.cache = _recompute(run, n, self.embeds, self.counts)
        x_prev = self.x_next if self.cache is None else self.cache.pop()  # below a fallback: known exactly
        self.x_cur, self.x_next = x_prev, self.x_cur
        return grads

    def end_backward(self) -> torch.Tensor | None:
        self.run.on_backward(self.stats[::-1], self.counts)
        grad = self.grad_x0.to(self.embeds_dtype) if self.input_needs_grad else None
        self.x_cur = self.x_next = self.a = self.b = self.grad_x0 = self.embeds = self.cache = None
        return grad


def _final_pair(run: StackRun, embeds: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    xs, logits = integer_forward(run, embeds, record=True)
    return (xs[-2], xs[-1]), logits


class _MixBackward(torch.autograd.Function):
    """The backward of z = grid.mix(out, h) without z: a root that gives the layer's output (1 - gamma) b and
    its input 2 gamma b, each cast to its dtype, exactly as autograd of `mix` would (and ahead of every
    contribution from inside the layer, as there). z itself is computed without grad and dropped once rounded."""

    @staticmethod
    def forward(ctx: Any, grid: Grid, b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ctx.grid, ctx.b, ctx.dtypes = grid, b, (out.dtype, h.dtype)
        return out.new_empty(0)

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> tuple[Any, ...]:
        (out_dtype, h_dtype), gamma = ctx.dtypes, ctx.grid.gamma
        b = ctx.b.to(torch.promote_types(torch.promote_types(out_dtype, h_dtype), torch.float32))  # z's dtype
        ctx.b = None
        return None, None, (b * (1.0 - gamma)).to(out_dtype), (b * (2.0 * gamma)).to(h_dtype)


class _LayerEval:
    """Layer n evaluated at x_n with grad: its rounded contribution Q[z_n] now, its backward later."""

    def __init__(self, run: StackRun, n: int, x: torch.Tensor) -> None:
        self.run, self.n = run, n
        self.wanted = [p for p in run.layers[n].parameters() if p.requires_grad]
        self.h = run.grid.real(x, run.dtype).requires_grad_(True)
        self.tap = run.tap(n, record=False)
        with torch.enable_grad():
            self.out = run.call(n, self.h, self.tap)
        with torch.no_grad():
            z = self.out if n == 0 else run.grid.mix(self.out, self.h)
            self.q: torch.Tensor | None = run.grid.quantise(z, f"layer {n} (recomputed)")
        tap = self.tap
        self.flips = None if tap.flips is None or is_fake(tap.flips) else int(tap.flips.item())

    def backward(self, b: torch.Tensor, grad_logits: torch.Tensor | None
                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """dL/dh from b (the gradient of z) and the router logits, and id(parameter) -> gradient (none under
        ZeRO-3: see handoff.layer_grads)."""
        if self.n == 0:
            outputs, out_grads = [self.out], [b.to(self.out.dtype)]
        else:
            with torch.enable_grad():
                root = _MixBackward.apply(self.run.grid, b, self.out, self.h)
            outputs, out_grads = [root], [torch.zeros_like(root)]
        self.out = None  # its graph stays alive through the outputs' grad_fn; its values are not needed
        if self.tap.logits is not None and grad_logits is not None:
            outputs.append(self.tap.logits)
            out_grads.append(grad_logits)
        self.tap = None
        (grad_h,), grads = layer_grads(outputs, out_grads, [self.h], self.wanted)
        return grad_h, grads


def _recompute(run: StackRun, n: int, embeds: torch.Tensor | None, counts: dict[str, int]) -> list[torch.Tensor]:
    """x_0..x_{n-1} forward from the kept stack input, replaying routing and RNG (the fallback, once)."""
    if embeds is None:
        raise ReconstructionError(f"revexact layer {n}: the rebuilt input of layer {n - 1} does not match its "
                                  f"forward checksum, and fallback='raise'")
    xs, _ = integer_forward(run, embeds, record=False, stop=n - 1)
    counts["recomputed_layer_forwards"] += n - 1
    counts["fallback_bytes_kept"] += sum(x.numel() * x.element_size() for x in xs)
    return xs
