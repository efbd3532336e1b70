"""The converted model: the HF model's own base model (embeddings, layers, rotary, final norm) and LM head,
with the decoder stack run as the exact integer momentum stack."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from revbench.revexact.function import ExactWalk
from revbench.revexact.grid import Grid
from revbench.revexact.options import RUNTIME_OPTIONS, RevExactOptions
from revbench.revexact.stack import LayerInputs, LayerRecord, LayerStats, StackRun, integer_forward, vanilla_forward
from revbench.revffn.causal_lm import ReversibleCausalLM
from revbench.revffn.handoff import run_stack
from revbench.revffn.model import causal_masks, layer_type
from revbench.revffn.replay import AutocastState, BranchRng


class RevExactForCausalLM(ReversibleCausalLM):
    """A causal LM whose decoder stack is exactly reversible. Build it with `revbench.revexact.convert`.

    Parameter names equal the HF model's (model.embed_tokens, model.layers.N..., lm_head): the modules are
    the pretrained model's own, unchanged."""

    design = "revexact"
    runtime_options = RUNTIME_OPTIONS

    def __init__(self, hf_model: PreTrainedModel, options: RevExactOptions) -> None:
        super().__init__(hf_model, options)
        config = self.config
        self.model = hf_model.model
        self.grid = Grid(options.grid_bits, options.side_bits)
        self._last_stats: list[LayerStats] = []
        self._last_counts: dict[str, int] = {}
        self._side_bytes = 0
        self.fallback_counts = [0] * config.num_hidden_layers
        self.recomputed_total = 0
        self.backwards = 0

    # -- the stack ---------------------------------------------------------------------------------------
    def _run(self, inputs: LayerInputs, embeds: torch.Tensor) -> StackRun:
        layers = list(self.model.layers)
        return StackRun(layers, [layer_type(self.config, i) for i in range(len(layers))], self.ops, self.options,
                        self.grid, inputs, AutocastState.capture(embeds.device.type), self._record_backward)

    def _stack(self, embeds: torch.Tensor, inputs: LayerInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        run = self._run(inputs, embeds)
        if not torch.is_grad_enabled():  # inference: the integer forward, nothing to keep
            run.records = [LayerRecord(BranchRng(embeds.device)) for _ in run.layers]
            xs, logits = integer_forward(run, embeds, record=True)
            return self.grid.real(xs[-1], torch.promote_types(run.dtype, torch.float32)), logits
        if self.options.mode == "vanilla":
            run.records = [LayerRecord(BranchRng(embeds.device)) for _ in run.layers]
            return vanilla_forward(run, embeds)
        out, logits = run_stack(ExactWalk(run), embeds, len(run.layers))
        self._side_bytes = sum(r.side.nbytes for r in run.records if r.side is not None)
        return out, logits

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
