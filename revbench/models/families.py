"""The four Hugging Face MoE families revbench supports, and the config fields that differ between them."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # the `model_type` of the HF config, as saved in config.json
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    experts_field: str  # Mixtral calls the expert count `num_local_experts`


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2_moe", "qwen2_moe", Qwen2MoeConfig, Qwen2MoeForCausalLM, "num_experts"),
        Family("qwen3_moe", "qwen3_moe", Qwen3MoeConfig, Qwen3MoeForCausalLM, "num_experts"),
        Family("olmoe", "olmoe", OlmoeConfig, OlmoeForCausalLM, "num_experts"),
        Family("mixtral", "mixtral", MixtralConfig, MixtralForCausalLM, "num_local_experts"),
    )
}


class UnsupportedArchitectureError(ValueError):
    pass


def family_of(config: PretrainedConfig) -> Family:
    """The family of a config, or a clear error naming the supported ones."""
    for family in FAMILIES.values():
        if config.model_type == family.model_type:
            return family
    raise UnsupportedArchitectureError(
        f"unsupported architecture {config.model_type!r}; revbench supports {', '.join(FAMILIES)}"
    )


def num_experts(config: PretrainedConfig) -> int:
    return getattr(config, family_of(config).experts_field)
