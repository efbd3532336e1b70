"""One pass of the integer momentum stack over the unchanged decoder layers: shared state, records, the loops.

Streams: x_0 = Q[embeds], x_1 = Q[layer_0(x_0)] (a plain step), then the momentum step of grid.py for layers
1..L-1. The forward keeps per layer only its packed side bits, a checksum of x_{n-1}, its routing decisions
and (random branches only) an RNG snapshot; the backward walk (function.py) keeps the final pair (x_{L-1}, x_L).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from revbench.revexact.checksum import Checksum
from revbench.revexact.grid import Grid
from revbench.revexact.options import RevExactOptions
from revbench.revexact.sidebits import PackedBits, pack
from revbench.revffn.families import FamilyOps
from revbench.revffn.replay import AutocastState, BranchRng
from revbench.revffn.routing import RouterTap


@dataclass
class LayerInputs:
    """What every layer of one forward shares: rotary (cos, sin), masks per layer type, positions."""

    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    masks: dict[str, torch.Tensor | None]
    position_ids: torch.Tensor


@dataclass
class LayerRecord:
    rng: BranchRng
    index: torch.Tensor | None = None  # the forward's top-k expert indices (uint8 up to 256 experts)
    side: PackedBits | None = None  # layers >= 1: the k bits the shift of x_{n-1} dropped
    checksum: torch.Tensor | None = None  # layers >= 1: the checksum of x_{n-1}
    logits_slot: int | None = None  # position of this layer's router logits among the Function's outputs
    verify_input: torch.Tensor | None = None  # verify=True only: x_n itself


@dataclass
class LayerStats:
    """One layer in the last backward."""

    layer: int
    checksum_ok: bool | None  # the rebuilt x_{n-1} matched its checksum (None for layer 0: nothing rebuilt)
    fallback: bool  # its rebuilt input failed the checksum and came from the forward recomputed from the stack input
    routing_flips: int | None  # tokens whose recomputed top-k set differs from the forward's
    exact: bool | None = None  # verify=True only: torch.equal(rebuilt x_n, the forward's x_n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StackRun:
    """Everything one forward of the stack shares with its backward."""

    layers: list[nn.Module]
    layer_types: list[str]
    ops: FamilyOps
    options: RevExactOptions
    grid: Grid
    inputs: LayerInputs
    autocast: AutocastState
    on_backward: Callable[[list[LayerStats], dict[str, int]], None]
    records: list[LayerRecord] = field(default_factory=list)
    checksum: Checksum = field(default_factory=Checksum)

    def stochastic(self, n: int) -> bool:
        """Does layer n draw random numbers now (attention dropout, router jitter), so its RNG must be replayed?"""
        layer = self.layers[n]
        return layer.training and (getattr(layer.self_attn, "attention_dropout", 0.0) > 0
                                   or getattr(layer.mlp, "jitter_noise", 0.0) > 0)

    def call(self, n: int, h: torch.Tensor, tap: RouterTap) -> torch.Tensor:
        """layer_n(h), the unchanged decoder layer, with the forward's RNG for this layer."""
        layer, inputs = self.layers[n], self.inputs
        with self.records[n].rng.branch("layer", self.stochastic(n)), tap:
            return layer(h, position_embeddings=inputs.position_embeddings,
                         attention_mask=inputs.masks[self.layer_types[n]], position_ids=inputs.position_ids)

    def tap(self, n: int, record: bool) -> RouterTap:
        stored = None if record else self.records[n].index
        return RouterTap(getattr(self.layers[n].mlp, "gate", None), self.ops, stored=stored,
                         replay=self.options.replay_routing)

    def z(self, n: int, h: torch.Tensor, tap: RouterTap) -> torch.Tensor:
        """Layer n's contribution before rounding: layer_0(h) for the plain first step, else the momentum mix."""
        out = self.call(n, h, tap)
        return out if n == 0 else self.grid.mix(out, h)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the layers take their input in: the parameters' (autocast casts inside)."""
        return self.layers[0].input_layernorm.weight.dtype


def integer_forward(run: StackRun, embeds: torch.Tensor, record: bool, stop: int | None = None
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Layers [0, stop) on Q[embeds] without grad: ([x_0, x_1, ..., x_stop], router logits). With record=True
    it fills run.records; otherwise it replays them (and keeps all streams: the fallback's cache)."""
    grid = run.grid
    xs = [grid.quantise(embeds, "the stack input")]
    logits: list[torch.Tensor] = []
    with torch.no_grad():
        for n in range(len(run.layers) if stop is None else stop):
            rec, tap = run.records[n], run.tap(n, record)
            if record and run.options.verify:
                rec.verify_input = xs[-1]
            q = grid.quantise(run.z(n, grid.real(xs[-1], run.dtype), tap), f"layer {n}")
            if n == 0:
                x_next = q
            else:
                x_next, side = grid.step(xs[-2], q, f"layer {n}")
                if record:
                    rec.side = pack(side, grid.side_bits)
                    rec.checksum = run.checksum(xs[-2])
            if record:
                rec.index = tap.index
                if tap.logits is not None:
                    rec.logits_slot = len(logits)
                    logits.append(tap.logits)
                xs = xs[-1:]  # the forward keeps only the current pair
            xs.append(x_next)
    return xs, logits


def vanilla_forward(run: StackRun, embeds: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same quantised forward through plain autograd, rounding straight-through: each stream's value is
    exactly the integer path's, its gradient that of the unrounded expression."""
    grid, dtype = run.grid, run.dtype
    x_prev = None
    x = grid.quantise(embeds, "the stack input")
    c_prev, c = None, _ste(grid.real(x, dtype), embeds.to(dtype))
    logits: list[torch.Tensor] = []
    for n in range(len(run.layers)):
        tap = run.tap(n, record=True)
        z = run.z(n, c, tap)
        q = grid.quantise(z.detach(), f"layer {n}")
        if n == 0:
            x_next, pre = q, z
        else:
            x_next, _ = grid.step(x_prev, q, f"layer {n}")
            pre = z - grid.gamma * c_prev
        x_prev, x = x, x_next
        c_prev, c = c, _ste(grid.real(x, torch.promote_types(dtype, torch.float32)), pre)
        c = c if n == len(run.layers) - 1 else c.to(dtype)
        if tap.logits is not None:
            logits.append(tap.logits)
    return c, logits


def _ste(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """`value` exactly (v + 0 == v), with the gradient of `carrier`."""
    return value + (carrier - carrier.detach()).to(value.dtype)
