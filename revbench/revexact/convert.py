"""`convert(model, **options)`: a Hugging Face MoE causal LM -> the exact reversible model over its own layers."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from revbench.revexact.model import RevExactForCausalLM
from revbench.revexact.options import RevExactOptions


def convert(model: PreTrainedModel, **options: Any) -> RevExactForCausalLM:
    """Run the decoder stack of `model` as the integer momentum stack (see RevExactOptions). Nothing is added
    or re-initialised: the layers, embeddings, final norm and LM head are the model's own objects, so train
    the returned model, not the original."""
    opts = RevExactOptions.from_kwargs(**options)
    RevExactForCausalLM.check_convertible(model)
    converted = RevExactForCausalLM(model, opts)
    converted.train(model.training)
    return converted
