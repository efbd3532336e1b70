"""Everything that differs between the four MoE families, in one table.

The layer anatomy is shared (see environment.md); what differs is where the q/k norms sit, OLMoE's
optional q/k/v clipping, where the sliding window is read from, and how the router turns logits into
top-k weights (renormalised or not, cast to the logits dtype or kept in float32).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from transformers import PretrainedConfig

from revbench.models.families import FAMILIES, UnsupportedArchitectureError


@dataclass(frozen=True)
class FamilyOps:
    name: str
    qk_norm: str  # "none"; "head": per head after the view (Qwen3); "full": over the projection before it (OLMoE)
    window_on_attn: bool  # sliding window read from the attention module (Qwen) or from the config (OLMoE, Mixtral)
    router_always_renormalizes: bool  # Mixtral always renormalises; the others follow `norm_topk_prob`
    router_weights_fp32: bool  # Mixtral keeps top-k weights in float32; the others cast to the logits dtype

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(FAMILIES[self.name].model_class.__module__)

    @property
    def load_balancing_loss(self) -> Callable[..., torch.Tensor]:
        return self.module.load_balancing_loss_func

    def renormalizes(self, router: torch.nn.Module) -> bool:
        return self.router_always_renormalizes or bool(getattr(router, "norm_topk_prob", False))

    def clip_qkv(self, config: PretrainedConfig) -> float | None:
        return getattr(config, "clip_qkv", None) if self.name == "olmoe" else None

    def sliding_window(self, attn: torch.nn.Module) -> int | None:
        if self.window_on_attn:
            return getattr(attn, "sliding_window", None)
        return getattr(attn.config, "sliding_window", None)


FAMILY_OPS: dict[str, FamilyOps] = {
    ops.name: ops
    for ops in (
        FamilyOps("qwen2_moe", "none", True, False, False),
        FamilyOps("qwen3_moe", "head", True, False, False),
        FamilyOps("olmoe", "full", False, False, False),
        FamilyOps("mixtral", "none", False, True, True),
    )
}


def family_ops(config: PretrainedConfig) -> FamilyOps:
    for ops in FAMILY_OPS.values():
        if config.model_type == FAMILIES[ops.name].model_type:
            return ops
    supported = ", ".join(f"{f.name} ({f.model_class.__name__})" for f in FAMILIES.values())
    raise UnsupportedArchitectureError(
        f"RevFFN cannot convert architecture {config.model_type!r}; it supports {supported}")
