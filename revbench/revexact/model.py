"""The converted model: the HF model's own base model (embeddings, layers, rotary, final norm) and LM head,
with the decoder stack run as the exact integer momentum stack."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from revbench.models.families import num_experts
from revbench.revexact.function import ExactReversibleStack
from revbench.revexact.grid import Grid
from revbench.revexact.options import RUNTIME_OPTIONS, RevExactOptions
from revbench.revexact.stack import LayerInputs, LayerRecord, LayerStats, StackRun, integer_forward, vanilla_forward
from revbench.revffn.families import family_ops
from revbench.revffn.model import causal_masks, layer_type
from revbench.revffn.replay import AutocastState, BranchRng


class RevExactForCausalLM(nn.Module):
    """A causal LM whose decoder stack is exactly reversible. Build it with `revbench.revexact.convert`.

    Parameter names equal the HF model's (model.embed_tokens, model.layers.N..., lm_head): the modules are
    the pretrained model's own, unchanged."""

    def __init__(self, hf_model: PreTrainedModel, options: RevExactOptions) -> None:
        super().__init__()
        config = hf_model.config
        self.ops = family_ops(config)
        self.options = options
        config.revexact = options.to_dict()  # saved with the config, so a checkpoint knows how it was converted
        self.config = config
        self.model = hf_model.model
        self.lm_head = hf_model.lm_head
        self.grid = Grid(options.grid_bits, options.side_bits)
        self._last_stats: list[LayerStats] = []
        self._last_counts: dict[str, int] = {}
        self._side_bytes = 0
        self.fallback_counts = [0] * config.num_hidden_layers
        self.recomputed_total = 0
        self.backwards = 0

    def configure(self, **options: Any) -> None:
        """Change options that act at run time (mode, fallback, replay_routing, verify)."""
        fixed = sorted(set(options) - set(RUNTIME_OPTIONS))
        if fixed:
            raise ValueError(f"revexact option {', '.join(fixed)} is fixed at conversion; "
                             f"at run time only {', '.join(RUNTIME_OPTIONS)} can change")
        self.options = self.options.replace(**options)
        self.config.revexact = self.options.to_dict()

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    # -- the stack ---------------------------------------------------------------------------------------
    def _run(self, inputs: LayerInputs, embeds: torch.Tensor) -> StackRun:
        layers = list(self.model.layers)
        return StackRun(layers, [layer_type(self.config, i) for i in range(len(layers))], self.ops, self.options,
                        self.grid, inputs, AutocastState.capture(embeds.device.type),
                        [p for layer in layers for p in layer.parameters()], self._record_backward)

    def _stack(self, embeds: torch.Tensor, inputs: LayerInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        run = self._run(inputs, embeds)
        if not torch.is_grad_enabled():  # inference: the integer forward, nothing to keep
            run.records = [LayerRecord(BranchRng(embeds.device)) for _ in run.layers]
            xs, logits = integer_forward(run, embeds, record=True)
            return self.grid.real(xs[-1], torch.promote_types(run.dtype, torch.float32)), logits
        if self.options.mode == "vanilla":
            run.records = [LayerRecord(BranchRng(embeds.device)) for _ in run.layers]
            return vanilla_forward(run, embeds)
        out, *logits = ExactReversibleStack.apply(run, embeds, *run.params)
        self._side_bytes = sum(r.side.nbytes for r in run.records if r.side is not None)
        return out, list(logits)

    def _final_hidden(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        embeds = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0)
        inputs = LayerInputs(self.model.rotary_emb(embeds, position_ids),
                             causal_masks(self.config, embeds, attention_mask, position_ids), position_ids)
        hidden, router_logits = self._stack(embeds, inputs)
        return self.model.norm(hidden.to(embeds.dtype)), router_logits

    def _aux_loss(self, router_logits: list[torch.Tensor], attention_mask: torch.Tensor | None,
                  output_router_logits: bool | None) -> torch.Tensor | None:
        """The family's load-balancing loss (unscaled), as the HF causal LM computes it, or None when off."""
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if not (output_router_logits and router_logits):
            return None
        return self.ops.load_balancing_loss(tuple(router_logits), num_experts(self.config),
                                            self.config.num_experts_per_tok, attention_mask)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the final-norm hidden state that goes into lm_head, router_aux_loss_coef * load-balancing loss or
        None when output_router_logits is off): what a chunked loss needs instead of the logits."""
        hidden, router_logits = self._final_hidden(input_ids, attention_mask, position_ids)
        aux = self._aux_loss(router_logits, attention_mask, None)
        return hidden, None if aux is None else self.config.router_aux_loss_coef * aux

    def forward(self, input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_router_logits: bool | None = None,
                **kwargs: Any) -> MoeCausalLMOutputWithPast:
        hidden, router_logits = self._final_hidden(input_ids, attention_mask, position_ids, inputs_embeds)
        logits = self.lm_head(hidden)
        loss = None if labels is None else ForCausalLMLoss(logits, labels, self.config.vocab_size, **kwargs)
        aux_loss = self._aux_loss(router_logits, attention_mask, output_router_logits)
        if aux_loss is not None and loss is not None:
            loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        keep_logits = output_router_logits if output_router_logits is not None else self.config.output_router_logits
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits,
                                         router_logits=tuple(router_logits) if keep_logits else None)

    # -- statistics ----------------------------------------------------------------------------------------
    def _record_backward(self, stats: list[LayerStats], counts: dict[str, int]) -> None:
        self._last_stats, self._last_counts = stats, counts
        self.backwards += 1
        self.recomputed_total += counts["recomputed_layer_forwards"]
        for s in stats:
            self.fallback_counts[s.layer] += int(s.fallback)

    def reconstruction_stats(self) -> list[dict[str, Any]]:
        """Per layer, from the last backward: checksum match, fallback, routing flips, exactness (verify=True)."""
        return [s.to_dict() for s in self._last_stats]

    def reconstruction_summary(self) -> dict[str, Any]:
        """The last backward in a few numbers, plus fallbacks counted since conversion."""
        stats, counts = self._last_stats, self._last_counts
        verified = [s.exact for s in stats if s.exact is not None]
        return {
            "backwards": self.backwards,
            "side_bits": self.options.side_bits,
            "grid_bits": self.options.grid_bits,
            "side_bit_bytes": self._side_bytes,
            "checksum_mismatches_last_backward": sum(s.checksum_ok is False for s in stats),
            "fallbacks_last_backward": sum(s.fallback for s in stats),
            "fallbacks_total": sum(self.fallback_counts),
            "fallbacks_per_layer": list(self.fallback_counts),
            "recomputed_layer_forwards_last_backward": counts.get("recomputed_layer_forwards", 0),
            "recomputed_layer_forwards_total": self.recomputed_total,
            "fallback_bytes_kept_last_backward": counts.get("fallback_bytes_kept", 0),
            "routing_flips": sum(s.routing_flips or 0 for s in stats),
            "inputs_bit_exact": all(verified) if verified else None,
        }
