"""The "revffn" method: a RevFFN-converted model, AdamW, and the two-stage schedule of the paper."""

from __future__ import annotations

from typing import Any

import torch

from revbench.methods.base import Method, TrainSpec
from revbench.models.zoo import build_model
from revbench.revffn import OPTION_NAMES, RevFFNForCausalLM, convert
from revbench.revffn.schedule import check_stage, set_trainable, trains_everything

# What revbench.methods.deepspeed_zero (revffn-zero2-offload) imports: the conversion options plus the schedule.
REVFFN_METHOD_OPTIONS: tuple[str, ...] = (*OPTION_NAMES, "stage", "warmup_steps")


def build_revffn_model(spec: TrainSpec) -> RevFFNForCausalLM:
    """The spec's HF model (seeded), converted with the RevFFN options found in `spec.options`."""
    options = {k: v for k, v in spec.options.items() if k in OPTION_NAMES}
    return convert(build_model(spec.model, seed=spec.seed, device=spec.device), **options)


class RevFFN(Method):
    name = "revffn"
    precision = "the model's dtype (float32 on CPU, bfloat16 on CUDA); residual streams float32 (fp32_streams)"

    def __init__(self, spec: TrainSpec) -> None:
        super().__init__(spec)
        self.stage = spec.options.get("stage", "full")
        self.warmup_steps = int(spec.options.get("warmup_steps", 100))
        check_stage(self.stage, self.warmup_steps)
        self.steps = 0

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return REVFFN_METHOD_OPTIONS

    def prepare(self) -> None:
        self.model = build_revffn_model(self.spec).train()
        self.optimizer = self.spec.optimizer.build(self.model.parameters())
        set_trainable(self.model, trains_everything(self.stage, 0, self.warmup_steps))

    def train_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        set_trainable(self.model, trains_everything(self.stage, self.steps, self.warmup_steps))
        input_ids = input_ids.to(self.device)
        loss = self.model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return loss.detach()

    def stats(self) -> dict[str, Any]:
        assert self.model is not None, "prepare() first"
        return {"stage": self.stage, "steps": self.steps,
                "trains_everything": trains_everything(self.stage, max(self.steps - 1, 0), self.warmup_steps),
                **self.model.reconstruction_summary()}
