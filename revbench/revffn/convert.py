"""`convert(model, **options)`: a Hugging Face MoE causal LM -> a RevFFN model reusing its modules."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from revbench.revffn.block import RevFFNBlock
from revbench.revffn.model import RevFFNForCausalLM
from revbench.revffn.options import RevFFNOptions


def convert(model: PreTrainedModel, **options: Any) -> RevFFNForCausalLM:
    """Wrap the decoder stack of `model` in reversible RevFFN blocks (see RevFFNOptions for the options).

    The attention and MoE modules, embeddings, final norm and LM head are the model's own objects, not
    copies: after conversion train the returned model, not the original.
    """
    opts = RevFFNOptions.from_kwargs(**options)
    RevFFNForCausalLM.check_convertible(model)
    config = model.config
    if config.hidden_size % 2:
        raise ValueError(f"hidden_size {config.hidden_size} cannot be split into two equal streams; "
                         f"RevFFN needs an even hidden size")
    converted = RevFFNForCausalLM(model, opts)
    for block, layer in zip(converted.model.layers, model.model.layers, strict=True):
        structured_init(block, layer, opts)
    converted.train(model.training)
    return converted


@torch.no_grad()
def structured_init(block: RevFFNBlock, layer: torch.nn.Module, options: RevFFNOptions) -> None:
    """up = [I; I] (times the pretrained norm's gain when a new norm replaces it), down = init_scale/2 [I I].

    With norm="new" and per-branch adapters, up(RMSNorm_{d/2}(x)) then equals the pretrained
    norm applied to [x; x]: the pretrained modules see inputs of the scale they were trained on.
    """
    fold = options.norm == "new" and options.adapters == "per-branch"
    block.adapter_for("attn").structured_init(options.init_scale, layer.input_layernorm.weight if fold else None)
    if options.adapters == "per-branch":
        block.adapter_for("moe").structured_init(options.init_scale,
                                                 layer.post_attention_layernorm.weight if fold else None)
