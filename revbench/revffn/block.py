"""One reversible RevFFN block around a pretrained decoder layer's attention and MoE (the same modules).

    X1, X2 = split(H)                                   # two d/2-wide streams
    F(X1, X2) = down_a(Attn(q <- up_a(n(X1)), k, v <- up_a(n(X2))))
    Y1 = X1 + F                                         # cross-branch attention
    Y2 = X2 + down_m(MoE(up_m(n(Y1))))                  # the MoE sees the updated left stream

With coupling="closed-form" the query also comes from X2. The block exposes its parts separately
(keys/values, the attention update for a given query stream, the MoE update) because the inverse
computes K/V once and iterates only the query path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from revbench.revffn.families import FamilyOps
from revbench.revffn.options import RevFFNOptions
from revbench.revffn.replay import BranchRng
from revbench.revffn.routing import RouterTap

# Module names a conversion adds; stage 1 of the two-stage schedule trains exactly these.
NEW_MODULES = ("adapter", "attn_adapter", "moe_adapter", "attn_norm", "moe_norm")


@dataclass
class StackInputs:
    """What every block of one forward shares."""

    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # rotary (cos, sin)
    masks: dict[str, torch.Tensor | None]  # attention mask per layer type; None lets sdpa use is_causal


def attention_interface(implementation: str, ops: FamilyOps) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The attention kernel the pretrained layer would use (sdpa, eager, flash...)."""
    eager = ops.module.eager_attention_forward
    get_interface = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)  # absent in older transformers
    if get_interface is not None:
        return get_interface(implementation, eager)
    return eager if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The four families' RMSNorm (same expression, same bits for 16/32-bit inputs), computed in at least
    float32 rather than exactly float32: the HF modules round float64 inputs to float32, which would cap a
    float64 fixed-point inverse at float32 precision."""
    dtype = x.dtype
    h = x.to(torch.promote_types(dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, the same expression as the four families' apply_rotary_pos_emb."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


class Adapter(nn.Module):
    """up: Linear(d/2 -> d) before a pretrained module; down: Linear(d -> d/2) after it."""

    def __init__(self, half: int, full: int, like: torch.Tensor) -> None:
        super().__init__()
        self.up = nn.Linear(half, full, bias=False, dtype=like.dtype, device=like.device)
        self.down = nn.Linear(full, half, bias=False, dtype=like.dtype, device=like.device)

    @torch.no_grad()
    def structured_init(self, scale: float, gain: torch.Tensor | None) -> None:
        """up = diag(gain) [I; I] (each half of the module input sees the stream), down = scale/2 [I I]
        (the average of the two output halves, scaled so the branch starts small)."""
        half = self.down.out_features
        eye = torch.eye(half, dtype=self.up.weight.dtype, device=self.up.weight.device)
        up = torch.cat([eye, eye], dim=0)
        self.up.weight.copy_(up if gain is None else up * gain[:, None].to(up.dtype))
        self.down.weight.copy_(torch.cat([eye, eye], dim=1) * (0.5 * scale))


def new_norm(like: nn.Module, width: int, eps: float) -> nn.Module:
    """A new RMSNorm of the family's own class (same numerics), weight on the pretrained one's device/dtype."""
    norm = type(like)(width, eps=eps)
    norm.weight = nn.Parameter(torch.ones(width, dtype=like.weight.dtype, device=like.weight.device))
    return norm


class RevFFNBlock(nn.Module):
    def __init__(self, layer: nn.Module, ops: FamilyOps, options: RevFFNOptions, config: PretrainedConfig,
                 layer_type: str) -> None:
        super().__init__()
        full = config.hidden_size
        half = full // 2
        self.ops = ops
        self.cross = options.coupling == "cross"
        self.fp32_streams = options.fp32_streams
        self.norm_first = options.norm == "new"
        self.layer_type = layer_type
        self.self_attn = layer.self_attn  # the pretrained modules themselves, not copies
        self.mlp = layer.mlp
        like = layer.self_attn.q_proj.weight
        if options.adapters == "shared":
            self.adapter = Adapter(half, full, like)
            self._adapters = {"attn": "adapter", "moe": "adapter"}
        else:
            self.attn_adapter = Adapter(half, full, like)
            self.moe_adapter = Adapter(half, full, like)
            self._adapters = {"attn": "attn_adapter", "moe": "moe_adapter"}
        if self.norm_first:
            self.attn_norm = new_norm(layer.input_layernorm, half, config.rms_norm_eps)
            self.moe_norm = new_norm(layer.post_attention_layernorm, half, config.rms_norm_eps)
            self._norms = {"attn": "attn_norm", "moe": "moe_norm"}
        else:
            self.input_layernorm = layer.input_layernorm
            self.post_attention_layernorm = layer.post_attention_layernorm
            self._norms = {"attn": "input_layernorm", "moe": "post_attention_layernorm"}

    def adapter_for(self, branch: str) -> Adapter:
        return getattr(self, self._adapters[branch])

    def norm_for(self, branch: str) -> nn.Module:
        return getattr(self, self._norms[branch])

    def read_directly(self) -> list[nn.Parameter]:
        """The parameters the block reads outside their modules' calls (the RMSNorm weights, see rms_norm)."""
        norms = [self.norm_for("attn"), self.norm_for("moe"), getattr(self.self_attn, "q_norm", None),
                 getattr(self.self_attn, "k_norm", None)]
        return [norm.weight for norm in norms if norm is not None]

    @property
    def router(self) -> nn.Module | None:
        return getattr(self.mlp, "gate", None)  # a dense (non-MoE) layer has none

    def stochastic(self, branch: str) -> bool:
        """Does this branch draw random numbers now (so its RNG state must be replayed)?"""
        if branch == "attn":
            return self.self_attn.training and self.self_attn.attention_dropout > 0
        return self.mlp.training and getattr(self.mlp, "jitter_noise", 0.0) > 0

    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """The streams' dtype: at least float32 with fp32_streams (float64 stays float64)."""
        return x.to(torch.promote_types(x.dtype, torch.float32)) if self.fp32_streams else x

    def expand(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """A d/2-wide stream -> the d-wide input of a pretrained module (norm and up-adapter)."""
        adapter = self.adapter_for(branch)
        x = x.to(adapter.up.weight.dtype)
        if self.norm_first:
            return adapter.up(rms_norm(self.norm_for(branch), x))
        return rms_norm(self.norm_for(branch), adapter.up(x))

    def _heads(self, proj: nn.Linear, norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn
        out = proj(x)
        if norm is not None and self.ops.qk_norm == "full":
            out = rms_norm(norm, out)
        clip = self.ops.clip_qkv(attn.config)
        if clip is not None:
            out = out.clamp(min=-clip, max=clip)
        out = out.view(*x.shape[:-1], -1, attn.head_dim)
        if norm is not None and self.ops.qk_norm == "head":
            out = rms_norm(norm, out)
        return out.transpose(1, 2)

    def keys_values(self, x_kv: torch.Tensor, inputs: StackInputs) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.self_attn
        source = self.expand(x_kv, "attn")
        k = self._heads(attn.k_proj, getattr(attn, "k_norm", None), source)
        v = self._heads(attn.v_proj, None, source)
        cos, sin = inputs.position_embeddings
        return rotate(k, cos, sin), v

    def attn_update(self, x_q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                    inputs: StackInputs) -> torch.Tensor:
        """F: the attention branch's d/2-wide update for query stream `x_q` and precomputed K/V."""
        attn = self.self_attn
        q = self._heads(attn.q_proj, getattr(attn, "q_norm", None), self.expand(x_q, "attn"))
        cos, sin = inputs.position_embeddings
        q = rotate(q, cos, sin)
        interface = attention_interface(attn.config._attn_implementation, self.ops)
        out, _ = interface(attn, q, *kv, inputs.masks[self.layer_type],
                           dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling,
                           sliding_window=self.ops.sliding_window(attn))
        out = out.reshape(*x_q.shape[:-1], -1).contiguous()
        return self.adapter_for("attn").down(attn.o_proj(out))

    def moe_update(self, y1: torch.Tensor, tap: RouterTap) -> torch.Tensor:
        """G: the MoE branch's d/2-wide update of the updated left stream."""
        with tap:
            out = self.mlp(self.expand(y1, "moe"))
        return self.adapter_for("moe").down(out)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, inputs: StackInputs, rng: BranchRng,
                tap: RouterTap) -> tuple[torch.Tensor, torch.Tensor]:
        with rng.branch("attn", self.stochastic("attn")):
            kv = self.keys_values(x2, inputs)
            y1 = x1 + self.attn_update(x1 if self.cross else x2, kv, inputs)
        with rng.branch("moe", self.stochastic("moe")):
            y2 = x2 + self.moe_update(y1, tap)
        return y1, y2
