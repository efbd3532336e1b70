"""The converted model: the original embeddings, rotary, final norm and LM head around reversible blocks."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from revbench.revffn.block import NEW_MODULES, RevFFNBlock, StackInputs
from revbench.revffn.causal_lm import ReversibleCausalLM
from revbench.revffn.handoff import run_stack
from revbench.revffn.options import RUNTIME_OPTIONS, RevFFNOptions
from revbench.revffn.replay import AutocastState, BranchRng
from revbench.revffn.reversible import RevFFNWalk
from revbench.revffn.routing import RouterTap
from revbench.revffn.stack import LayerStats, StackRun, sketch_projection, split


def layer_type(config: PretrainedConfig, index: int) -> str:
    types = getattr(config, "layer_types", None)
    return types[index] if types else "full_attention"


def _mask_kwargs(fn: Any, config: PretrainedConfig, embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments for the installed transformers' mask functions, whose names moved between 5.x releases."""
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"config": config, "attention_mask": attention_mask, "position_ids": position_ids}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = embeds
    for name in ("cache", "past_key_values"):
        if name in params:
            kwargs[name] = None
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(embeds.shape[1], device=embeds.device)
    return kwargs


def causal_masks(config: PretrainedConfig, embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """The attention mask per layer type, as the HF model builds them (None lets sdpa use is_causal)."""
    masks: dict[str, torch.Tensor | None] = {}
    for kind in sorted({layer_type(config, i) for i in range(config.num_hidden_layers)}):
        fn = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
        masks[kind] = fn(**_mask_kwargs(fn, config, embeds, attention_mask, position_ids))
    return masks


class RevFFNModel(nn.Module):
    """Mirrors the HF base model's names (model.embed_tokens, model.layers.N...), so pretrained keys match."""

    def __init__(self, base: nn.Module, blocks: list[RevFFNBlock]) -> None:
        super().__init__()
        self.embed_tokens = base.embed_tokens
        self.layers = nn.ModuleList(blocks)
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb


class RevFFNForCausalLM(ReversibleCausalLM):
    """A RevFFN causal LM. Build it with `revbench.revffn.convert(hf_model, **options)`."""

    design = "RevFFN"
    runtime_options = RUNTIME_OPTIONS

    def __init__(self, hf_model: PreTrainedModel, options: RevFFNOptions) -> None:
        super().__init__(hf_model, options)
        config = self.config
        blocks = [RevFFNBlock(layer, self.ops, options, config, layer_type(config, i))
                  for i, layer in enumerate(hf_model.model.layers)]
        self.model = RevFFNModel(hf_model.model, blocks)
        self._last_stats: list[LayerStats] = []
        self.fallback_counts = [0] * len(blocks)
        self.recomputed_total = 0
        self._last_counts: dict[str, int] = {}
        self.backwards = 0

    def new_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The adapters and new norms a conversion added (stage 1 of the two-stage schedule trains these)."""
        return [(n, p) for n, p in self.named_parameters() if set(n.split(".")) & set(NEW_MODULES)]

    def _final_hidden(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the final-norm hidden state, the router logits of every MoE layer)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        embeds = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0)
        inputs = StackInputs(self.model.rotary_emb(embeds, position_ids),
                             causal_masks(self.config, embeds, attention_mask, position_ids))
        hidden, router_logits = self._stack(embeds, inputs)
        return self.model.norm(hidden.to(embeds.dtype)), router_logits

    def _stack(self, embeds: torch.Tensor, inputs: StackInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        blocks = list(self.model.layers)
        if self.options.mode == "vanilla" or not torch.is_grad_enabled():
            # Plain autograd over the same blocks: the reference, and inference (nothing to reconstruct).
            x1, x2 = split(blocks[0].stream(embeds))
            logits = []
            for block in blocks:
                tap = RouterTap(block.router, self.ops)
                x1, x2 = block(x1, x2, inputs, BranchRng(embeds.device), tap)
                if tap.logits is not None:
                    logits.append(tap.logits)
            return torch.cat([x1, x2], dim=-1), logits
        run = StackRun(blocks, self.options, inputs, AutocastState.capture(embeds.device.type), self._record_stats,
                       projection=sketch_projection(embeds.shape[-1], self.options.sketch_dim, embeds.device))
        return run_stack(RevFFNWalk(run), embeds, len(blocks))

    def _record_stats(self, stats: list[LayerStats], counts: dict[str, int]) -> None:
        self._last_stats, self._last_counts = stats, counts
        self.recomputed_total += counts["recomputed_layer_forwards"]
        self.backwards += 1
        for s in stats:
            self.fallback_counts[s.layer] += int(s.fallback)

    def reconstruction_stats(self) -> list[dict[str, Any]]:
        """Per layer, from the last backward: iterations, last fixed-point change, output residual,
        fallback flag, routing flips that replay prevented (None where not measurable, e.g. fake tensors)."""
        return [s.to_dict() for s in self._last_stats]

    def reconstruction_summary(self) -> dict[str, Any]:
        """The last backward's statistics in a few numbers, plus fallbacks counted since conversion."""
        stats = self._last_stats
        measured = [s for s in stats if s.residual is not None]
        return {
            "backwards": self.backwards,
            "mean_iterations": sum(s.iterations for s in stats) / len(stats) if stats else None,
            "max_iterations": max((s.iterations for s in stats), default=None),
            "worst_residual": max((s.residual for s in measured), default=None),
            "worst_fixed_point_delta": max((s.fixed_point_delta for s in stats if s.fixed_point_delta is not None),
                                           default=None),
            "fallbacks_last_backward": sum(s.fallback for s in stats),
            "fallbacks_total": sum(self.fallback_counts),
            "fallbacks_per_layer": list(self.fallback_counts),
            # Tokens whose recomputed top-k differed from the forward's (replayed unless replay_routing=False).
            "routing_flips": sum(s.routing_flips or 0 for s in stats),
            "worst_sketch_error": max((s.sketch_error for s in stats if s.sketch_error is not None), default=None),
            # The O(L) fallback: layers below a fallback take their exact inputs from its one recompute.
            "layers_from_cache_last_backward": sum(s.from_cache for s in stats),
            "recomputed_layer_forwards_last_backward": self._last_counts.get("recomputed_layer_forwards", 0),
            "recomputed_layer_forwards_total": self.recomputed_total,
            "fallback_bytes_kept_last_backward": self._last_counts.get("fallback_bytes_kept", 0),
        }
