"""One forward of the block stack and what its backward needs from it: per-layer records and statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from revbench.revffn.block import RevFFNBlock, StackInputs
from revbench.revffn.handoff import gathered
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
    sketch_error: float | None = None  # per-token relative error of the rebuilt input's sketch (inherited error too)
    from_cache: bool = False  # below a fallback: the exact input came from that fallback's recompute

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerRecord:
    """What the forward keeps per layer: no activations."""

    rng: BranchRng
    index: torch.Tensor | None = None  # the forward's top-k expert indices (uint8 for up to 256 experts)
    logits_slot: int | None = None  # position of this layer's router logits among the Function's outputs
    sketch: torch.Tensor | None = None  # sketch_dim > 0: a per-token random projection of the layer's input
    verify_input: tuple[torch.Tensor, torch.Tensor] | None = None  # verify=True only


@dataclass
class FallbackCache:
    """The exact inputs recomputed by fallbacks within one backward: one recompute serves every layer below it,
    so a backward runs at most L layer forwards for its fallbacks, not O(L^2)."""

    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    recomputed_layer_forwards: int = 0
    peak_bytes: int = 0

    def counts(self) -> dict[str, int]:
        return {"recomputed_layer_forwards": self.recomputed_layer_forwards, "fallback_bytes_kept": self.peak_bytes}


@dataclass
class StackRun:
    """Everything one forward of the stack shares with its backward."""

    blocks: list[RevFFNBlock]
    options: RevFFNOptions
    inputs: StackInputs
    autocast: AutocastState
    on_stats: Callable[[list[LayerStats], dict[str, int]], None]
    records: list[LayerRecord] = field(default_factory=list)
    cache: FallbackCache = field(default_factory=FallbackCache)
    projection: torch.Tensor | None = None  # (d, sketch_dim), fixed seed: the sketches' random projection


SKETCH_SEED = 0x5EED


def sketch_projection(width: int, dim: int, device: torch.device) -> torch.Tensor | None:
    """A fixed Gaussian (width, dim) float32 projection scaled by 1/sqrt(dim); its own generator leaves the global
    RNG be."""
    if dim == 0:
        return None
    gen = torch.Generator().manual_seed(SKETCH_SEED)
    return (torch.randn(width, dim, generator=gen) / dim**0.5).to(device)


def sketch(run: StackRun, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor | None:
    """The per-token sketch of a layer's input [x1; x2]: dim numbers per token instead of d."""
    if run.projection is None:
        return None
    half = x1.shape[-1]
    return x1 @ run.projection[:half].to(x1.dtype) + x2 @ run.projection[half:].to(x2.dtype)


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


def run_forward(run: StackRun, hidden: torch.Tensor, stop: int | None = None, record: bool = True,
                keep: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Blocks [0, stop) on the stack input, recording routing, RNG and sketches (record=True) or replaying them;
    `keep` collects every layer's input on the way (the fallback cache)."""
    x1, x2 = split(run.blocks[0].stream(hidden))
    logits: list[torch.Tensor] = []
    for j, (block, rec) in enumerate(zip(run.blocks[:stop], run.records[:stop], strict=True)):
        tap = RouterTap(block.router, block.ops, stored=None if record else rec.index)
        if keep is not None:
            keep[j] = (x1, x2)
        if record:
            rec.sketch = sketch(run, x1, x2)
            if run.options.verify:
                rec.verify_input = (x1, x2)
        with gathered(block.read_directly()):
            x1, x2 = block(x1, x2, run.inputs, rec.rng, tap)
        if record:
            rec.index = tap.index
            if tap.logits is not None:
                rec.logits_slot = len(logits)
                logits.append(tap.logits)
    if keep is not None and stop is not None:
        keep[stop] = (x1, x2)
    return x1, x2, logits


def exact_input(run: StackRun, i: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's exact input, from the fallback cache or by running layers 0..i-1 forward again from the saved
    stack input (replaying them) and caching every layer's input on the way."""
    cache = run.cache
    if i not in cache.inputs:
        kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            run_forward(run, hidden, stop=i, record=False, keep=kept)
        cache.inputs.update(kept)
        cache.recomputed_layer_forwards += i
        cache.peak_bytes = max(cache.peak_bytes, sum(t.numel() * t.element_size()
                                                     for pair in cache.inputs.values() for t in pair))
    return cache.inputs.pop(i)  # each cached input is used once, by the layer it belongs to
