"""What both reversible causal LMs (RevFFN's and revexact's) share around their stacks: the HF causal LM's
forward, with the family's router load-balancing loss, so they drop in where the HF model was."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from revbench.models.families import FAMILIES, UnsupportedArchitectureError, num_experts
from revbench.revffn.families import family_ops


class ReversibleCausalLM(nn.Module):
    """Subclasses set `config`, `ops` (the family's operations), `lm_head` and `options`, name their design and
    its run-time options, and implement `_final_hidden`."""

    design: ClassVar[str]  # as messages name it, and (lower case) the config key the options are saved under
    runtime_options: ClassVar[tuple[str, ...]]  # options that may change after conversion
    base_model_prefix: ClassVar[str] = "model"  # as in HF causal LMs: the base model stays at .model (PEFT reads it)

    def __init__(self, hf_model: PreTrainedModel, options: Any) -> None:
        super().__init__()
        config = hf_model.config
        self.ops = family_ops(config)
        self.options = options
        # Saved with the config, so a checkpoint knows how it was converted.
        setattr(config, self.design.lower(), options.to_dict())
        self.config = config
        self.lm_head = hf_model.lm_head

    @classmethod
    def check_convertible(cls, model: nn.Module) -> None:
        """Refuse, with the reason, a model this design cannot convert: not an HF causal LM of a supported family,
        or one converted already."""
        if isinstance(model, cls):
            raise ValueError(f"the model is already a {cls.design} model")
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "model_type"):
            supported = ", ".join(f.model_class.__name__ for f in FAMILIES.values())
            raise UnsupportedArchitectureError(f"{type(model).__name__} has no Hugging Face config; {cls.design} "
                                               f"converts {supported}")
        expected = FAMILIES[family_ops(config).name].model_class
        if not isinstance(model, expected):
            raise UnsupportedArchitectureError(
                f"{cls.design} converts causal LMs: expected {expected.__name__}, got {type(model).__name__}")

    def configure(self, **options: Any) -> None:
        """Change options that act at run time; the others shape the stack and are fixed at conversion."""
        fixed = sorted(set(options) - set(self.runtime_options))
        if fixed:
            raise ValueError(f"{self.design} option {', '.join(fixed)} is fixed at conversion; "
                             f"at run time only {', '.join(self.runtime_options)} can change")
        self.options = self.options.replace(**options)
        setattr(self.config, self.design.lower(), self.options.to_dict())

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def _final_hidden(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the final-norm hidden state, the router logits of every MoE layer)."""
        raise NotImplementedError

    def _aux_loss(self, router_logits: list[torch.Tensor], attention_mask: torch.Tensor | None,
                  output_router_logits: bool | None) -> torch.Tensor | None:
        """The family's load-balancing loss (unscaled), exactly as the HF causal LM computes it; None when off."""
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if not (output_router_logits and router_logits):
            return None
        return self.ops.load_balancing_loss(tuple(router_logits), num_experts(self.config),
                                            self.config.num_experts_per_tok, attention_mask)

    def forward(self, input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_router_logits: bool | None = None,
                **kwargs: Any) -> MoeCausalLMOutputWithPast:
        hidden, router_logits = self._final_hidden(input_ids, attention_mask, position_ids, inputs_embeds)
        logits = self.lm_head(hidden)
        loss = None if labels is None else ForCausalLMLoss(logits, labels, self.config.vocab_size, **kwargs)
        aux_loss = self._aux_loss(router_logits, attention_mask, output_router_logits)
        if aux_loss is not None and loss is not None:
            # Exactly what the HF causal LM adds: the family's load-balancing loss times the coefficient.
            loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        keep_logits = output_router_logits if output_router_logits is not None else self.config.output_router_logits
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits,
                                         router_logits=tuple(router_logits) if keep_logits else None)
