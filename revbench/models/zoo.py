"""Build a real Hugging Face MoE causal LM from a preset or a local config.json plus overrides, with seeded
random weights, or load a local checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from revbench.models import hf_config
from revbench.models.checkpoint import load_pretrained
from revbench.models.dtypes import DTYPES, parse_dtype
from revbench.models.families import FAMILIES, Family
from revbench.models.presets import PRESETS

__all__ = ["DTYPES", "ModelSpec", "build_config", "build_model", "parameter_count", "parse_dtype"]


@dataclass
class ModelSpec:
    """What model to build. `None` fields keep the preset's value. `preset` is a preset's name or the path of a
    local Hugging Face config.json (or of a directory holding one) of a supported family."""

    preset: str = "tiny-qwen2-moe"
    layers: int | None = None
    hidden: int | None = None
    experts: int | None = None
    top_k: int | None = None
    dtype: str = "auto"
    # "grouped_mm" is transformers' default; "eager" is the only one with float64 kernels on CPU.
    experts_impl: str = "grouped_mm"
    attn_impl: str = "sdpa"
    path: str | None = None  # a local checkpoint directory; when set, weights come from it
    config: dict[str, Any] = field(default_factory=dict)  # any other config field

    def __post_init__(self) -> None:
        if self.path is None and self.preset not in PRESETS:
            if not hf_config.looks_like_config_path(self.preset):
                raise ValueError(f"unknown model preset {self.preset!r}; choose one of {', '.join(PRESETS)}, "
                                 f"or give the path of a Hugging Face config.json")
            hf_config.read_config(self.preset)  # a clear error now for a missing file or an unsupported family
        parse_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def from_config_file(self) -> bool:
        return self.preset not in PRESETS

    @property
    def family(self) -> Family:
        if self.from_config_file:
            return hf_config.read_config(self.preset)[0]
        return FAMILIES[PRESETS[self.preset].family]


def build_config(spec: ModelSpec) -> PretrainedConfig:
    family = spec.family
    overrides = {
        "num_hidden_layers": spec.layers,
        "hidden_size": spec.hidden,
        family.experts_field: spec.experts,
        "num_experts_per_tok": spec.top_k,
    }
    values = {k: v for k, v in overrides.items() if v is not None} | spec.config
    if spec.from_config_file:
        config = hf_config.read_config(spec.preset, values)[1]
    else:
        config = family.config_class(**(PRESETS[spec.preset].config | values))
    return configure(config, spec)


def configure(config: PretrainedConfig, spec: ModelSpec) -> PretrainedConfig:
    """Apply the kernel choices of `spec` to a config."""
    return hf_config.configure(config, spec.attn_impl, spec.experts_impl)


def build_model(spec: ModelSpec, seed: int = 0, device: str | torch.device = "cpu") -> PreTrainedModel:
    """A real HF MoE model with seeded random weights, or the weights of `spec.path`."""
    if spec.path is not None:
        return load_pretrained(spec.path, spec, device=device)
    config = build_config(spec)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    # Building under the default dtype (not `.to(dtype)`) also works for fake tensors in `estimate`.
    torch.set_default_dtype(parse_dtype(spec.dtype, device))
    try:
        with torch.device(device):
            model = spec.family.model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
