"""Build a real Hugging Face MoE causal LM from a preset or a local config.json plus overrides, with seeded
random weights, or load a local checkpoint."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from revbench.models import hf_config
from revbench.models.checkpoint import load_pretrained
from revbench.models.dtypes import parse_dtype
from revbench.models.presets import PRESETS
from revbench.models.spec import ModelSpec


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
