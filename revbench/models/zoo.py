"""Build a real Hugging Face MoE causal LM from a preset plus overrides, with seeded random weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from revbench.models.families import FAMILIES, Family
from revbench.models.presets import PRESETS

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}


def parse_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype by name; "auto" is float32 on CPU and bfloat16 on CUDA, revbench's precision per device."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}") from None


@dataclass
class ModelSpec:
    """What model to build. `None` fields keep the preset's value."""

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
            raise ValueError(f"unknown model preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        parse_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def family(self) -> Family:
        return FAMILIES[PRESETS[self.preset].family]


def build_config(spec: ModelSpec) -> PretrainedConfig:
    family = spec.family
    values = dict(PRESETS[spec.preset].config)
    overrides = {
        "num_hidden_layers": spec.layers,
        "hidden_size": spec.hidden,
        family.experts_field: spec.experts,
        "num_experts_per_tok": spec.top_k,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(spec.config)
    config = family.config_class(**values)
    return configure(config, spec)


def configure(config: PretrainedConfig, spec: ModelSpec) -> PretrainedConfig:
    """Apply the kernel choices of `spec` to a config."""
    config._attn_implementation = spec.attn_impl
    config._experts_implementation = spec.experts_impl
    config.output_router_logits = True
    return config


def build_model(spec: ModelSpec, seed: int = 0, device: str | torch.device = "cpu") -> PreTrainedModel:
    """A real HF MoE model with seeded random weights, or the weights of `spec.path`."""
    if spec.path is not None:
        from revbench.models.checkpoint import load_pretrained

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
