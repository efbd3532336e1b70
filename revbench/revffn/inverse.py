"""One layer's backward without its activations: reconstruct its input from its output, then backprop.

RevNet-style, in two phases that never hold both branches' graphs at once:
1. MoE branch on the known Y1 (with grad, routing replayed): X2 = Y2 - G(Y1) in closed form, and
   G's backward gives its parameter gradients and dL/dY1 += J_G^T dL/dY2.
2. Attention branch: K/V from X2 once, with grad (the iteration uses detached copies, the final
   evaluation backpropagates through them), X1 <- Y1 - F(X1, X2) from X1 = Y1 (plain or Anderson-accelerated,
   see fixed_point.py) until the per-token relative change is below tol (or the cap, or a stall); then F
   with grad on (X1, X2). Its output X1 + F is compared with the known Y1: that residual is the
   reconstruction's own, honest check.
The rebuilt input's per-token sketch is compared with the one stored in forward: that sees the error inherited
from the layers above too. A layer that misses a tolerance takes the safe path, as options.fallback says: its
exact input is recomputed forward from the saved stack input (counted), caching every layer's input on the way
so that the layers below take theirs from the cache (at most L layer forwards per backward); or it warns; or
it raises.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import is_fake

from revbench.revffn.fixed_point import solve
from revbench.revffn.handoff import layer_grads
from revbench.revffn.routing import RouterTap
from revbench.revffn.stack import LayerStats, StackRun, exact_input, sketch, token_rel

Pair = tuple[torch.Tensor, torch.Tensor]


class ReconstructionError(RuntimeError):
    """A layer's input could not be reconstructed within tolerance, and fallback="raise"."""


@dataclass
class LayerGrads:
    x: Pair  # the layer's input as used for its gradients: the output of the layer below
    grad_x: Pair
    params: dict[int, torch.Tensor] = field(default_factory=dict)  # id(parameter) -> gradient
    stats: LayerStats | None = None

    def add(self, grads: dict[int, torch.Tensor]) -> None:
        for key, grad in grads.items():
            self.params[key] = grad if key not in self.params else self.params[key] + grad


def _leaves(x: Pair) -> Pair:
    return x[0].detach().requires_grad_(True), x[1].detach().requires_grad_(True)


def fixed_point(run: StackRun, i: int, y1: torch.Tensor, kv: Pair, x2: torch.Tensor, tol: float, fake: bool
                ) -> tuple[torch.Tensor, int, float | None]:
    """X1 with X1 + F(X1, X2) = Y1, from X1 = Y1, with K/V of X2 given: (X1, iterations, last per-token change)."""
    block, rng, options = run.blocks[i], run.records[i].rng, run.options
    with torch.no_grad():
        if not block.cross:
            with rng.branch("attn", False):
                return y1 - block.attn_update(x2, kv, run.inputs), 0, None

        def image_of(x1: torch.Tensor) -> torch.Tensor:
            with rng.branch("attn", False):  # the same dropout mask in every evaluation of F
                return y1 - block.attn_update(x1, kv, run.inputs)

        return solve(image_of, y1, options.solver, tol, options.max_iters, fake)


def _keys_values(run: StackRun, i: int, x2: torch.Tensor) -> tuple[Pair, torch.Tensor]:
    """K/V of X2 with grad, computed once per layer: the fixed point iterates on detached copies and the
    final attention backpropagates through these. Returns (K/V, the X2 leaf)."""
    block, rng = run.blocks[i], run.records[i].rng
    x2_leaf = x2.detach().requires_grad_(True)
    with torch.enable_grad(), rng.branch("attn", False):
        return block.keys_values(x2_leaf, run.inputs), x2_leaf


def _attention_with_grad(run: StackRun, i: int, x1: torch.Tensor, kv: Pair, x2_leaf: torch.Tensor
                         ) -> tuple[torch.Tensor, Pair]:
    block, rng = run.blocks[i], run.records[i].rng
    x1_leaf = x1.detach().requires_grad_(True)
    with torch.enable_grad(), rng.branch("attn", False):
        y1 = x1_leaf + block.attn_update(x1_leaf if block.cross else x2_leaf, kv, run.inputs)
    return y1, (x1_leaf, x2_leaf)


def _whole_block(run: StackRun, i: int, x: Pair, g: Pair, grad_logits: torch.Tensor | None,
                 wanted: list[torch.nn.Parameter]) -> LayerGrads:
    """The safe path: the block re-run with grad on its exact input and backpropagated in one go."""
    block, rec = run.blocks[i], run.records[i]
    leaves = _leaves(x)
    tap = RouterTap(block.router, block.ops, stored=rec.index)
    with torch.enable_grad():
        y1, y2 = block(*leaves, run.inputs, rec.rng, tap)
    outputs, grads = [y1, y2], list(g)
    if tap.logits is not None and grad_logits is not None:
        outputs.append(tap.logits)
        grads.append(grad_logits)
    (grad_x1, grad_x2), params = layer_grads(outputs, grads, list(leaves), wanted)
    out = LayerGrads(x, (grad_x1, grad_x2))
    out.add(params)
    return out


def _missed(run: StackRun, i: int, message: str) -> bool:
    """Act on a missed tolerance; True when the caller must take the safe path."""
    message = f"RevFFN layer {i}: {message}"
    if run.options.fallback == "raise":
        raise ReconstructionError(message)
    if run.options.fallback == "warn":
        warnings.warn(message + "; continuing with the approximate input (fallback='warn')", stacklevel=3)
        return False
    return True


def layer_backward(run: StackRun, i: int, y: Pair, g: Pair, grad_logits: torch.Tensor | None,
                   hidden: torch.Tensor | None) -> LayerGrads:
    """Layer i's input and the gradients of its input and parameters, from its output y and dL/dy."""
    block, rec, options = run.blocks[i], run.records[i], run.options
    fake = is_fake(y[0])
    tol = options.tolerance(run.autocast.compute_dtype(block.adapter_for("attn").up.weight.dtype))
    wanted = [p for p in block.parameters() if p.requires_grad]
    (y1, y2), (g1, g2) = y, g
    if i in run.cache.inputs:  # below a fallback: the exact input is known, no reconstruction needed
        result = _whole_block(run, i, run.cache.inputs.pop(i), g, grad_logits, wanted)
        result.stats = LayerStats(i, 0, None, None, False, None, from_cache=True)
        return result

    # Phase 1: the MoE branch on the known Y1.
    y1_leaf = y1.detach().requires_grad_(True)
    tap = RouterTap(block.router, block.ops, stored=rec.index, replay=options.replay_routing)
    with torch.enable_grad(), rec.rng.branch("moe", False):
        update = block.moe_update(y1_leaf, tap)
    flips = None if fake or tap.flips is None else int(tap.flips.item())
    if flips and not options.replay_routing and _missed(
            run, i, f"{flips} tokens' recomputed top-k differs from the forward's (replay_routing=False)"):
        result = _whole_block(run, i, exact_input(run, i, hidden), g, grad_logits, wanted)
        result.stats = LayerStats(i, 0, None, None, True, flips)
        return result
    x2 = (y2 - update).detach()
    outputs, grads = [update], [g2]
    if tap.logits is not None and grad_logits is not None:
        outputs.append(tap.logits)
        grads.append(grad_logits)
    (grad_y1,), phase1 = layer_grads(outputs, grads, [y1_leaf], wanted)
    g1 = g1 + grad_y1
    del update, outputs, tap  # free the MoE graph before the attention branch

    # Phase 2: the attention branch, X1 by fixed point, K/V of X2 computed once (with grad).
    kv, x2_leaf = _keys_values(run, i, x2)
    x1, iterations, delta = fixed_point(run, i, y1, (kv[0].detach(), kv[1].detach()), x2, tol, fake)
    x = (x1, x2)
    input_error = None if rec.verify_input is None or fake else token_rel(x, rec.verify_input).item()
    new_y1, leaves = _attention_with_grad(run, i, x1, kv, x2_leaf)
    residual = sketch_error = None
    if not fake:
        with torch.no_grad():
            residual = token_rel((new_y1,), (y1,)).item()
            if rec.sketch is not None:  # sees the error inherited from the layers above, which the residual cannot
                sketch_error = token_rel((sketch(run, *x),), (rec.sketch,)).item()
    sketch_tol = options.sketch_tolerance(tol)
    fallback = False
    if ((delta is not None and delta > tol) or (residual is not None and residual > tol)
            or (sketch_error is not None and sketch_error > sketch_tol)) and _missed(
            run, i, f"reconstruction missed its tolerance {tol:.1e} (residual {residual:.2e}, "
                    f"{iterations} fixed-point iterations, last change {delta or 0:.2e}; input sketch error "
                    f"{sketch_error or 0:.2e}, tolerance {sketch_tol:.1e})"):
        del new_y1, leaves, kv, x2_leaf
        x, fallback = exact_input(run, i, hidden), True
        kv, x2_leaf = _keys_values(run, i, x[1])
        new_y1, leaves = _attention_with_grad(run, i, x[0], kv, x2_leaf)
    (grad_x1, grad_x2), phase2 = layer_grads([new_y1], [g1], list(leaves), wanted)
    result = LayerGrads(x, (grad_x1, g2 + grad_x2))
    result.add(phase1)
    result.add(phase2)
    result.stats = LayerStats(i, iterations, delta, residual, fallback, flips, input_error, sketch_error)
    return result
