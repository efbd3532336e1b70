"""Sparse upcycling: turn a pretrained dense Llama into a Qwen2-MoE or Mixtral model that computes the same
function at initialisation, as Qwen1.5-MoE was grown from Qwen-1.8B (there with finer, sliced experts).

What each part starts from:
- embeddings, attention, both norms per layer, the final norm and the LM head: copied (tying kept);
- every routed expert: a copy of the dense MLP, in transformers' fused layout
  `gate_up_proj[e] = cat(gate_proj, up_proj)` [2I, H] and `down_proj[e] = down_proj` [H, I]; `expert_noise`
  multiplies each routed expert's weights by (1 + expert_noise * N(0, 1)), independently per expert, to break
  their symmetry (0, the default, keeps the copies identical, as sparse upcycling (Komatsuzaki et al., 2022)
  does: a random router already sends different tokens, hence different gradients, to different experts);
- the router: N(0, router_std²), the dense model's `initializer_range` by default. Routing weights are
  normalised over the top-k (Mixtral always; Qwen2-MoE via `norm_topk_prob=True`, which Qwen1.5-MoE itself
  leaves off), so with identical experts the routed mixture equals one dense MLP *whatever the router says*:
  the router decides only which experts see (and so learn from) which tokens.
- Qwen2-MoE's shared expert (width I, like the routed ones): also a copy of the dense MLP, with its sigmoid gate
  zero-initialised, so it contributes sigmoid(0) = 0.5 of the dense MLP; the routed experts' `down_proj` is
  halved, so they contribute the other 0.5. Both paths carry the pretrained function and both train, and the
  sum is the dense MLP exactly (halving is exact in binary floating point). Zero-weighting the routed experts
  instead would not be an upcycle.

Not exact: the MoE's training loss adds `router_aux_loss_coef * load_balancing_loss`; compare language-model
cross-entropy (`revbench.quality.heldout.lm_loss`), which is equal to float rounding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import MixtralConfig, PretrainedConfig, PreTrainedModel, Qwen2MoeConfig

from revbench.models.families import FAMILIES

UPCYCLE_FAMILIES = ("qwen2_moe", "mixtral")  # Qwen3-MoE and OLMoE add q/k norms a Llama has not got


@dataclass
class UpcycleSpec:
    family: str = "qwen2_moe"
    experts: int = 4
    top_k: int = 2
    layers: int | None = None  # keep the first N decoder layers of the dense model (None: all)
    router_std: float | None = None  # None: the dense config's initializer_range
    expert_noise: float = 0.0  # relative Gaussian noise per routed expert; 0 keeps exact equivalence
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in UPCYCLE_FAMILIES:
            raise ValueError(f"cannot upcycle a dense Llama into {self.family!r}; choose one of "
                             f"{', '.join(UPCYCLE_FAMILIES)} (the others need q/k norms a Llama has not got)")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"need 1 <= top_k <= experts, got top_k={self.top_k} experts={self.experts}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.expert_noise < 0 or (self.router_std is not None and self.router_std < 0):
            raise ValueError("expert_noise and router_std must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_dense(dense: PretrainedConfig) -> None:
    if dense.model_type != "llama":
        raise ValueError(f"the upcycler takes a dense Llama, got model_type {dense.model_type!r}")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(dense, field, False):
            raise ValueError(f"the dense model has {field}=True, which the MoE families here cannot hold")
    if dense.hidden_act != "silu":
        raise ValueError(f"the dense MLP uses {dense.hidden_act!r}; only SwiGLU (silu) experts are supported")


def moe_config(dense: PretrainedConfig, spec: UpcycleSpec) -> PretrainedConfig:
    """The MoE config that matches `dense` in everything but the MLPs."""
    _check_dense(dense)
    layers = dense.num_hidden_layers if spec.layers is None else spec.layers
    if layers > dense.num_hidden_layers:
        raise ValueError(f"layers={layers} but the dense model has only {dense.num_hidden_layers}")
    head_dim = getattr(dense, "head_dim", None) or dense.hidden_size // dense.num_attention_heads
    common: dict[str, Any] = {
        "vocab_size": dense.vocab_size, "hidden_size": dense.hidden_size, "num_hidden_layers": layers,
        "num_attention_heads": dense.num_attention_heads, "num_key_value_heads": dense.num_key_value_heads,
        "hidden_act": dense.hidden_act, "max_position_embeddings": dense.max_position_embeddings,
        "initializer_range": dense.initializer_range, "rms_norm_eps": dense.rms_norm_eps,
        "rope_parameters": dict(dense.rope_parameters), "tie_word_embeddings": dense.tie_word_embeddings,
        "attention_dropout": 0.0, "num_experts_per_tok": spec.top_k, "output_router_logits": True,
        "bos_token_id": dense.bos_token_id, "eos_token_id": dense.eos_token_id, "pad_token_id": dense.pad_token_id,
    }
    width = dense.intermediate_size
    if spec.family == "mixtral":
        return MixtralConfig(**common, head_dim=head_dim, intermediate_size=width, num_local_experts=spec.experts,
                             sliding_window=None, router_jitter_noise=0.0)
    if head_dim * dense.num_attention_heads != dense.hidden_size:
        raise ValueError(f"Qwen2-MoE derives head_dim from hidden_size / heads, but the dense model has "
                         f"head_dim={head_dim} with hidden {dense.hidden_size} and {dense.num_attention_heads} heads")
    return Qwen2MoeConfig(**common, intermediate_size=width, moe_intermediate_size=width,
                          shared_expert_intermediate_size=width, num_experts=spec.experts, norm_topk_prob=True,
                          qkv_bias=False, decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False)


def keep_layers(model: PreTrainedModel, layers: int | None) -> PreTrainedModel:
    """`model` (in place) with only its first `layers` decoder layers: the dense reference of a truncated
    upcycle. None keeps them all."""
    if layers is not None:
        if not 1 <= layers <= model.config.num_hidden_layers:
            raise ValueError(f"cannot keep {layers} of the model's {model.config.num_hidden_layers} layers")
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model


def upcycle(dense: PreTrainedModel, spec: UpcycleSpec | None = None) -> PreTrainedModel:
    """A new float32 MoE causal LM (on CPU) with the dense model's weights, as the module docstring lays out."""
    spec = spec or UpcycleSpec()
    config = moe_config(dense.config, spec)
    router_std = dense.config.initializer_range if spec.router_std is None else spec.router_std
    family = FAMILIES[spec.family]
    source = {k: v.detach().to("cpu", torch.float32) for k, v in dense.state_dict().items()}
    gen = torch.Generator().manual_seed(spec.seed)

    def perturbed(weight: torch.Tensor) -> torch.Tensor:
        if spec.expert_noise == 0:
            return weight.clone()
        return weight * (1 + spec.expert_noise * torch.randn(weight.shape, generator=gen))

    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": source["model.embed_tokens.weight"],
        "model.norm.weight": source["model.norm.weight"],
        "lm_head.weight": source.get("lm_head.weight", source["model.embed_tokens.weight"]),
    }
    routed_scale = 0.5 if spec.family == "qwen2_moe" else 1.0  # the shared expert carries the other half
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "input_layernorm", "post_attention_layernorm"):
            state[f"{prefix}{name}.weight"] = source[f"{prefix}{name}.weight"]
        gate, up, down = (source[f"{prefix}mlp.{p}_proj.weight"] for p in ("gate", "up", "down"))
        gate_up = torch.cat([gate, up], dim=0)  # [2I, H]: the experts chunk gate first, then up
        state[f"{prefix}mlp.experts.gate_up_proj"] = torch.stack([perturbed(gate_up) for _ in range(spec.experts)])
        state[f"{prefix}mlp.experts.down_proj"] = torch.stack(
            [perturbed(down) * routed_scale for _ in range(spec.experts)])
        state[f"{prefix}mlp.gate.weight"] = torch.randn(spec.experts, config.hidden_size, generator=gen) * router_std
        if spec.family == "qwen2_moe":
            state[f"{prefix}mlp.shared_expert.gate_proj.weight"] = gate
            state[f"{prefix}mlp.shared_expert.up_proj.weight"] = up
            state[f"{prefix}mlp.shared_expert.down_proj.weight"] = down
            state[f"{prefix}mlp.shared_expert_gate.weight"] = torch.zeros(1, config.hidden_size)

    model = family.model_class(config)  # its random init is overwritten: strict loading checks every tensor
    model.load_state_dict(state, strict=True)
    return model.eval()
