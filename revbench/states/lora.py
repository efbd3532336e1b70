"""`lora` (PEFT): the pretrained weights are frozen; low-rank adapters are trained instead, with AdamW.

Targets, in every supported family: the attention projections (q_proj, k_proj, v_proj, o_proj), the dense MLP
projections where a layer has them (Qwen2-MoE's shared expert: gate_proj, up_proj, down_proj), and, with the
`experts` option on (default), the fused 3-D expert weights `experts.gate_up_proj` and `experts.down_proj`
through PEFT's `target_parameters` (one rank-r factor pair per expert, stacked). Routers, embeddings, norms
and the LM head stay frozen, as is usual for LoRA on MoE models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from revbench.states.base import ModelStates

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
DENSE_MLP = ("gate_proj", "up_proj", "down_proj")
FUSED_EXPERTS = ("experts.gate_up_proj", "experts.down_proj")


class Lora(ModelStates):
    name = "lora"
    option_names = ("rank", "alpha", "experts")
    precision = "the model's dtype (float32 on CPU, bfloat16 on CUDA), for the frozen weights and the adapters alike"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.rank = spec.count_option("rank", "adapter dimensions", 8)
        alpha = spec.options.get("alpha", 2 * self.rank)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"option alpha must be a finite number > 0, not {alpha!r}")
        self.alpha = float(alpha)
        self.experts = spec.flag_option("experts", True)

    def setup(self, model: nn.Module) -> Callable[..., Any]:
        from peft import LoraConfig, get_peft_model, inject_adapter_in_model
        from transformers import PreTrainedModel

        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, bias="none",
                            target_modules=[*ATTENTION, *DENSE_MLP],
                            target_parameters=list(FUSED_EXPERTS) if self.experts else None)
        torch.manual_seed(self.spec.seed)  # the adapters' random init (B starts at zero, so the model is unchanged)
        if isinstance(model, PreTrainedModel):
            self.model = get_peft_model(model, config).train()
        else:  # a converted model (revexact's stack keeps the HF layers): adapters go into those layers in place
            self.model = inject_adapter_in_model(config, model).train()
        self.optimizer = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
        return self.model

    def stats(self) -> dict[str, Any]:
        assert self.model is not None, "setup() first"
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return {"rank": self.rank, "alpha": self.alpha, "fused_experts_targeted": self.experts,
                "trainable_parameters": trainable, "total_parameters": total}
