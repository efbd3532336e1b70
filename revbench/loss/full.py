"""`full`: the model's own loss. The LM head makes all B x S x V logits; cross-entropy upcasts them to float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from revbench.spec import TrainSpec


class FullLoss:
    name: ClassVar[str] = "full"
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec

    def install(self, model: nn.Module) -> None:
        """Change the model before the model-state technique takes it (nothing, for the model's own loss)."""

    def refuses(self, activations: str, states: str) -> str | None:
        return None

    def __call__(self, forward: Callable[..., Any], input_ids: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (labels are the inputs; the model shifts them), router loss included."""
        return forward(input_ids=input_ids, labels=input_ids).loss
