"""One forward of the block stack and what its backward needs from it: per-layer records and statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from revbench.revffn.block import RevFFNBlock, StackInputs
from revbench.revffn.options import RevFFNOptions
from revbench.revffn.replay import AutocastState, BranchRng
from revbench.revffn.routing import RouterTap


@dataclass
class LayerStats:
    """One layer's reconstruction in the last backward; None where nothing could be read (fake tensors)."""

    layer: int
    iterations: int  # fixed-point iterations (0 for the closed-form coupling)
    fixed_point_delta: float | None  # the last per-token relative change of X1
    residual: float | None  # per-token relative ||Y1 - (X1' + F(X1', X2'))|| / ||Y1||: the inverse's own check
    fallback: bool  # the layer's exact input was recomputed from the stack input
    routing_flips: int | None  # tokens whose recomputed top-k set differs from the forward's
    input_error: float | None = None  # verify=True only: per-token relative error of the reconstructed input

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerRecord:
    """What the forward keeps per layer: no activations."""

    rng: BranchRng
    index: torch.Tensor | None = None  # the forward's top-k expert indices (uint8 for up to 256 experts)
    logits_slot: int | None = None  # position of this layer's router logits among the Function's outputs
    verify_input: tuple[torch.Tensor, torch.Tensor] | None = None  # verify=True only


@dataclass
class StackRun:
    """Everything one forward of the stack shares with its backward."""

    blocks: list[RevFFNBlock]
    options: RevFFNOptions
    inputs: StackInputs
    autocast: AutocastState
    params: list[torch.nn.Parameter]
    on_stats: Callable[[list[LayerStats]], None]
    records: list[LayerRecord] = field(default_factory=list)


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Per-token squared norms in float64; the difference itself stays in its own (>= float32) dtype, so the
    check needs one temporary the size of a stream, not double-precision copies."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.linalg.vector_norm(x, dim=-1).double().pow(2)


def token_rel(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """max over tokens of ||a_t - b_t|| / ||b_t||, a and b given as matching tuples of feature slices.

    Per token, because convergence is per token (causal attention) and a global norm would hide one bad
    token among thousands."""
    num = sum(_sq_norms(x - y) for x, y in zip(a, b, strict=True))
    den = sum(_sq_norms(y) for y in b)
    return (num.sqrt() / den.sqrt().clamp_min(torch.finfo(torch.float64).tiny)).max()


def run_forward(run: StackRun, hidden: torch.Tensor, stop: int | None = None, record: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Blocks [0, stop) on the stack input, recording routing and RNG (record=True) or replaying them."""
    x1, x2 = split(run.blocks[0].stream(hidden))
    logits: list[torch.Tensor] = []
    for block, rec in zip(run.blocks[:stop], run.records[:stop], strict=True):
        tap = RouterTap(block.router, block.ops, stored=None if record else rec.index)
        if record and run.options.verify:
            rec.verify_input = (x1, x2)
        x1, x2 = block(x1, x2, run.inputs, rec.rng, tap)
        if record:
            rec.index = tap.index
            if tap.logits is not None:
                rec.logits_slot = len(logits)
                logits.append(tap.logits)
    return x1, x2, logits


def exact_input(run: StackRun, i: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's exact input: layers 0..i-1 run forward again from the saved stack input, replaying them."""
    with torch.no_grad():
        x1, x2, _ = run_forward(run, hidden, stop=i, record=False)
    return x1, x2
