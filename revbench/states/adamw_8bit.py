"""`adamw-8bit`: AdamW with block-wise 8-bit moments (bitsandbytes), about 2 bytes per parameter plus scales.

bitsandbytes rather than torchao: both are maintained, but torchao's low-bit AdamW compiles every step
with torch.compile (32 s for the first step of a 2-layer MLP on this CPU), while bitsandbytes runs its
8-bit update natively on CPU (0.013 s a step there) as on CUDA. Tensors under 4,096 elements keep
32-bit moments, as bitsandbytes does by default.
"""

from __future__ import annotations

import torch
from torch import nn

from revbench.spec import OptimizerSpec
from revbench.states.base import ModelStates


def adamw_8bit(params: list[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ImportError("8-bit AdamW needs bitsandbytes: pip install -e '.[8bit]' (or '.[all]')") from exc
    return bnb.optim.AdamW8bit(params, **spec.hyperparameters())


class AdamW8bit(ModelStates):
    name = "adamw-8bit"
    precision = "the model's dtype for weights and gradients; AdamW moments in 8 bits with a float32 scale per block"
    uses_adamw_implementation = False

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return adamw_8bit(params, self.spec.optimizer)
