"""The "revexact" method: the unchanged pretrained layers run as the bit-exact integer momentum stack, AdamW.

Nothing is added to the model, so there is no adapter warm-up: every parameter trains from step 0.
"""

from __future__ import annotations

from typing import Any

import torch

from revbench.methods.base import Method
from revbench.revexact import OPTION_NAMES, RevExactForCausalLM, convert


class RevExact(Method):
    name = "revexact"
    precision = ("the model's dtype (float32 on CPU, bfloat16 on CUDA); residual streams int32 on the 2^-grid_bits "
                 "grid")
    not_estimable = ("the integer streams' range check and the per-layer checksums read tensor values, which fake "
                     "tensors do not have")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return OPTION_NAMES

    def build_model(self) -> RevExactForCausalLM:
        return convert(super().build_model(), **self.spec.options)

    def prepare(self) -> None:
        self.model = self.build_model().train()
        self.optimizer = self.spec.optimizer.build(self.model.parameters())

    def train_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        loss = self.model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def stats(self) -> dict[str, Any]:
        assert self.model is not None, "prepare() first"
        return self.model.reconstruction_summary()
