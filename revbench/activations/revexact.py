"""`revexact`: the unchanged pretrained layers run as the bit-exact integer momentum stack: forward keeps only
the final two integer streams, k side bits per element per layer and the routing, and backward rebuilds every
layer's input exactly. Nothing is added to the model, so every parameter trains from step 0.

The stack itself lives in `revbench.revexact` (see docs/revexact.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from revbench.activations.base import Activations
from revbench.revexact import OPTION_NAMES, convert


class RevExact(Activations):
    name = "revexact"
    recomputes = True  # each layer is reconstructed from its output, and run again, in backward
    layer_gradients_at_once = True  # handoff.py: one autograd.grad per layer
    option_names = OPTION_NAMES

    def build(self, model: nn.Module) -> nn.Module:
        return convert(model, **{k: v for k, v in self.spec.options.items() if k in OPTION_NAMES})

    def stats(self, model: nn.Module) -> dict[str, Any]:
        return model.reconstruction_summary()
