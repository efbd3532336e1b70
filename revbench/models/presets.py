"""Model presets: tiny ones for CPU work and the published configs of real MoE models for estimates.

Full-size values are copied from each model's published `config.json` on the Hugging Face Hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# Byte-level vocabulary (256 bytes) so the tiny presets train on real text without a tokenizer.
_TINY_COMMON: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "num_experts_per_tok": 2,
    "output_router_logits": True,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny-qwen2-moe",
            "qwen2_moe",
            {**_TINY_COMMON, "num_experts": 8, "moe_intermediate_size": 256, "intermediate_size": 512,
             "shared_expert_intermediate_size": 512, "norm_topk_prob": False},
            "Qwen1.5-MoE layout (shared expert with sigmoid gate), shrunk",
        ),
        Preset(
            "tiny-qwen3-moe",
            "qwen3_moe",
            {**_TINY_COMMON, "num_experts": 8, "moe_intermediate_size": 256, "intermediate_size": 512,
             "head_dim": 32, "norm_topk_prob": True},
            "Qwen3-MoE layout (q/k norms), shrunk",
        ),
        Preset(
            "tiny-olmoe",
            "olmoe",
            {**_TINY_COMMON, "num_experts": 8, "intermediate_size": 256, "norm_topk_prob": False},
            "OLMoE layout (q/k norms over the full projection), shrunk",
        ),
        Preset(
            "tiny-mixtral",
            "mixtral",
            {**_TINY_COMMON, "num_local_experts": 8, "intermediate_size": 256, "sliding_window": None},
            "Mixtral layout, shrunk",
        ),
        Preset(
            "tiny-qwen2-moe-32k-vocab",
            "qwen2_moe",
            {**_TINY_COMMON, "vocab_size": 32768, "num_experts": 8, "moe_intermediate_size": 256,
             "intermediate_size": 512, "shared_expert_intermediate_size": 512, "norm_topk_prob": False},
            "tiny-qwen2-moe with a 32,768-token vocabulary, so that the logits dominate as at full scale",
        ),
        Preset(
            "qwen1.5-moe-a2.7b",
            "qwen2_moe",
            {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
             "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 8192,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "rms_norm_eps": 1e-6,
             "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
             "shared_expert_intermediate_size": 5632, "norm_topk_prob": False, "decoder_sparse_step": 1,
             "tie_word_embeddings": False, "qkv_bias": True, "output_router_logits": True},
            "Qwen/Qwen1.5-MoE-A2.7B config.json",
        ),
        Preset(
            "olmoe-1b-7b",
            "olmoe",
            {"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
             "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 4096,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rms_norm_eps": 1e-5,
             "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False, "clip_qkv": None,
             "tie_word_embeddings": False, "output_router_logits": True, "router_aux_loss_coef": 0.01},
            "allenai/OLMoE-1B-7B-0924 config.json",
        ),
        Preset(
            "mixtral-8x7b",
            "mixtral",
            {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "rms_norm_eps": 1e-5,
             "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None,
             "tie_word_embeddings": False, "output_router_logits": True},
            "mistralai/Mixtral-8x7B-v0.1 config.json",
        ),
        Preset(
            "qwen3-30b-a3b",
            "qwen3_moe",
            {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
             "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 40960,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "rms_norm_eps": 1e-6,
             "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": True,
             "decoder_sparse_step": 1, "tie_word_embeddings": False, "output_router_logits": True},
            "Qwen/Qwen3-30B-A3B config.json",
        ),
    )
}

# One tiny preset per family: what tests and benchmarks sweep when they cover every family.
TINY_PRESETS = ["tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe", "tiny-mixtral"]
