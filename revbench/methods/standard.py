"""Plain full fine-tuning: every activation is kept for backward."""

from __future__ import annotations

import torch

from revbench.methods.base import Method


class Standard(Method):
    name = "standard"

    def prepare(self) -> None:
        self.model = self.build_model().train()
        self.optimizer = self.spec.optimizer.build(self.model.parameters())

    def train_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        loss = self.model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        self.optimizer.step()
        return loss.detach()
