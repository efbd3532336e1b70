"""`selective-checkpoint`: op-level selective checkpointing (torchtitan's "selective op" policy). Each checkpointed
decoder layer keeps the outputs of its matrix multiplications and of attention, the expensive ops, and recomputes
the cheap rest in backward (norms, activations, routing, casts), through torch's
`create_selective_checkpoint_contexts`. Between `store` and `checkpoint` in memory, close to `store` in time."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from revbench.activations.checkpoint import Checkpoint
from revbench.activations.tiling import in_tile

aten = torch.ops.aten
# The ops whose outputs are kept: dense and grouped (MoE experts) matmuls and every SDPA kernel.
SAVED_OPS = frozenset({
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten._grouped_mm.default,
    aten._scaled_dot_product_efficient_attention.default, aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_cudnn_attention.default, aten._scaled_dot_product_flash_attention_for_cpu.default,
})


def save_matmuls_and_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Outside tiled chunks (`tile_tokens`), which recompute themselves one at a time."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS and not in_tile() else CheckpointPolicy.PREFER_RECOMPUTE


class SelectiveCheckpoint(Checkpoint):
    name = "selective-checkpoint"

    def checkpoint_kwargs(self) -> dict[str, Any]:
        policy = functools.partial(create_selective_checkpoint_contexts, save_matmuls_and_attention)
        return {"use_reentrant": False, "context_fn": policy}
