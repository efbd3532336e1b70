"""Model-state techniques whose library cannot run on fake tensors, replaced in an estimate by their memory layout.

8-bit AdamW: bitsandbytes' own state layout, with the update left out.

bitsandbytes' update reads tensor values (a data-dependent scalar), which fake tensors do not have. Its state
creation (`init_state`) does not: uint8 moments with a float32 absmax per 256-element block for tensors of
4,096 elements or more, float32 moments below that, and one pair of 256-entry code maps per optimizer. So the
estimate keeps bitsandbytes' `init_state` and drops `update_step`, which on CUDA is one fused in-place kernel
that allocates nothing. On CPU, bitsandbytes' update is plain torch that dequantizes the moments to float32
first: the CPU peak is larger by those temporaries (tests/test_techniques.py holds the bound).

DDP (`adamw-ddp`) at one rank: torch's DDP broadcasts and reads the parameters when it is built, which fake
tensors cannot do. With `gradient_as_bucket_view` every gradient is a view into DDP's buckets, which live from
the first backward on: so its memory is AdamW's, with the gradients persistent storages that backward
accumulates into and `zero_grad` zeroes in place. (Bucket padding, under a kilobyte per bucket, is left out.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from revbench.methods.method import Method
from revbench.spec import OptimizerSpec
from revbench.states.adamw import AdamW


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


class BucketedAdamW(AdamW):
    """`adamw-ddp`'s memory at one rank, as above."""

    name = "adamw-ddp"

    def setup(self, model: nn.Module) -> Callable[..., Any]:
        forward = super().setup(model)
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        return forward

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)


def use_layout(method: Method) -> None:
    """Swap in the layout of a method's model-state technique where its library cannot run on fake tensors."""
    states = method.states
    if states.name in ("adamw-8bit", "adamw-8bit-in-backward"):
        states.make_optimizer = lambda params: adamw_8bit_layout(params, states.spec.optimizer)
    elif states.name == "adamw-ddp":
        method.states = BucketedAdamW(states.spec)
