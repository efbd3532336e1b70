"""8-bit AdamW on fake tensors: bitsandbytes' own state layout, with the update left out.

bitsandbytes' update reads tensor values (a data-dependent scalar), which fake tensors do not have. Its state
creation (`init_state`) does not: uint8 moments with a float32 absmax per 256-element block for tensors of
4,096 elements or more, float32 moments below that, and one pair of 256-entry code maps per optimizer. So the
estimate keeps bitsandbytes' `init_state` and drops `update_step`, which on CUDA is one fused in-place kernel
that allocates nothing. On CPU, bitsandbytes' update is plain torch that dequantizes the moments to float32
first: the CPU peak is larger by those temporaries (tests/test_techniques.py holds the bound).
"""

from __future__ import annotations

import torch
from torch import nn

from revbench.methods.base import OptimizerSpec


def adamw_8bit_layout(params: list[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    class AdamW8bitLayout(bnb.optim.AdamW8bit):
        def fill_qmap(self) -> None:
            """The two 256-entry code maps, by shape only (their values are computed from data)."""
            self.name2qmap = {name: torch.empty(256, dtype=torch.float32) for name in ("dynamic", "udynamic")}

        @torch.no_grad()
        def update_step(self, group: dict, p: torch.Tensor, gindex: int, pindex: int) -> None:
            """The fused CUDA kernel updates the weights and moments in place: nothing to allocate."""

    return AdamW8bitLayout(params, **spec.hyperparameters())


def use_layout(method: object) -> None:
    """Let a method's 8-bit AdamW (alone or in backward) build the layout above instead of bitsandbytes'."""
    states = method.states
    if states.name in ("adamw-8bit", "adamw-8bit-in-backward"):
        states.make_optimizer = lambda params: adamw_8bit_layout(params, states.spec.optimizer)
