"""Record the router's expert choices in forward and replay them on recompute.

A reconstructed input differs from the forward's in the last bits, which can change a top-k choice; the
recomputed block would then differ from the block that produced the output. A temporary forward hook on
the pretrained router records its top-k indices; in replay it returns the top-k weights gathered from the
recomputed logits at the *stored* indices, with the family's own renormalisation and dtype, so the
numerics equal the forward's when nothing flips and the router weight still gets its gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from revbench.revffn.families import FamilyOps


def index_dtype(num_experts: int) -> torch.dtype:
    """The smallest integer type that holds an expert index: indices are kept for every layer."""
    return torch.uint8 if num_experts <= 256 else torch.int32


def replay_weights(logits: torch.Tensor, index: torch.Tensor, renormalize: bool, keep_fp32: bool) -> torch.Tensor:
    """The router's top-k weights at given indices, computed the way the HF routers compute them."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    top = probs.gather(-1, index)
    if renormalize:
        top = top / top.sum(dim=-1, keepdim=True)
    return top if keep_fp32 else top.to(logits.dtype)


def count_flips(index: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Tokens whose top-k expert *set* differs (order within the top-k does not matter)."""
    return (index.sort(dim=-1).values != stored.sort(dim=-1).values).any(dim=-1).sum()


class RouterTap:
    """Around one MoE call: records the router's logits and top-k indices, or, given the `stored` indices
    of the forward, counts the tokens whose choice flipped and (with `replay`) reuses the stored choice.

    Use as a context manager; the hook lives only inside it, so the pretrained router is untouched
    outside RevFFN's own calls.
    """

    def __init__(self, router: nn.Module | None, ops: FamilyOps, stored: torch.Tensor | None = None,
                 replay: bool = True) -> None:
        self.router = router
        self.ops = ops
        self.stored = stored
        self.replay = replay
        self.logits: torch.Tensor | None = None
        self.index: torch.Tensor | None = None  # record mode: a compact copy of the choices made
        self.flips: torch.Tensor | None = None  # with `stored`: tokens whose top-k set differs from it
        self._handle: Any = None

    def __enter__(self) -> RouterTap:
        if self.router is not None:  # a dense (non-MoE) layer has no router
            self._handle = self.router.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Any, output: tuple[torch.Tensor, ...]) -> Any:
        logits, _, index = output
        self.logits = logits
        if self.stored is None:
            self.index = index.detach().to(index_dtype(logits.shape[-1]))
            return output
        stored = self.stored.long()
        self.flips = count_flips(index, stored)
        if not self.replay:
            return output
        weights = replay_weights(logits, stored, self.ops.renormalizes(module), self.ops.router_weights_fp32)
        return logits, weights, stored
