"""Tiled MoE/MLP (ALST's TiledMLP, arXiv 2506.13996, for MoE blocks): the token-wise part of each decoder layer runs
in chunks of `tile_tokens` tokens, each chunk checkpointed, so one layer's MoE working set (the experts' and the
shared expert's intermediates, many times the hidden state) is one chunk's, whatever the batch x sequence.

An option of every activation technique (`tile_tokens`), applied before the technique converts the model. The
router runs once on all tokens (its logits are small, and the routing taps of the reversible designs and the
load-balancing loss see one call, as untiled); each chunk takes its rows of the routing as inputs, so a chunk's
recompute in backward routes exactly as its forward did. Without grad (a reversible stack's forward) the chunks
simply run one after another. The block's own forward is replaced on the instance: parameter names, hooks and
FSDP2/ZeRO/LoRA wrapping stay as they are.
"""

from __future__ import annotations

import contextvars
import functools
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _moe_chunk(block: nn.Module, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The routed experts (and a shared expert, where the family has one) on one chunk, given its routing."""
    out = block.experts(x, index, weights)
    shared = getattr(block, "shared_expert", None)
    if shared is not None:  # Qwen2-MoE: a sigmoid-gated shared expert, added as its own forward adds it
        out = out + F.sigmoid(block.shared_expert_gate(x)) * shared(x)
    return out


_IN_TILE = contextvars.ContextVar("revbench_in_tile", default=False)


def in_tile() -> bool:
    """Inside a tiled chunk, in its forward or its recompute (op-level selective checkpointing saves nothing here:
    keeping a chunk's matmul outputs would keep every chunk's working set)."""
    return _IN_TILE.get()


def _in_tile(fn: Any, *args: torch.Tensor) -> torch.Tensor:
    token = _IN_TILE.set(True)
    try:
        return fn(*args)
    finally:
        _IN_TILE.reset(token)


def _run_chunks(fn: Any, *chunked: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """fn over each chunk's tensors, checkpointed where autograd records (no RNG: MoE blocks draw none once jitter
    is refused), concatenated."""
    record = torch.is_grad_enabled()
    fn = functools.partial(_in_tile, fn)
    outs = [checkpoint(fn, *parts, use_reentrant=False, preserve_rng_state=False) if record else fn(*parts)
            for parts in zip(*chunked, strict=True)]
    return torch.cat(outs)


def tiled_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The block's forward in chunks of `tile_tokens` tokens: an MoE block routes all tokens first, a dense MLP
    has no routing."""
    shape = hidden_states.shape
    flat = hidden_states.reshape(-1, shape[-1])
    size = self.tile_tokens
    if flat.shape[0] <= size:
        return self.untiled_forward(hidden_states)
    if not is_moe(self):
        return _run_chunks(self.untiled_forward, flat.split(size)).reshape(*shape[:-1], -1)
    _, weights, index = self.gate(flat)
    out = _run_chunks(lambda x, i, w: _moe_chunk(self, x, i, w), flat.split(size), index.split(size),
                      weights.split(size))
    return out.reshape(shape)


def is_moe(block: nn.Module) -> bool:
    return hasattr(block, "gate") and hasattr(block, "experts")


def tile(model: nn.Module, tile_tokens: int) -> nn.Module:
    """Every decoder layer's MoE block (or dense MLP) run in chunks of `tile_tokens` tokens."""
    layers = model.model.layers
    for index, layer in enumerate(layers):
        block = layer.mlp
        if getattr(block, "jitter_noise", 0.0) > 0:
            raise ValueError(f"tile_tokens cannot tile layer {index}'s MoE block: its router jitter noise "
                             f"({block.jitter_noise}) scales the whole input before routing; set "
                             "router_jitter_noise 0")
        block.tile_tokens = tile_tokens
        block.untiled_forward = block.forward
        block.forward = types.MethodType(tiled_forward, block)
    return model
