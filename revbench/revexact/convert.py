"""`convert(model, **options)`: a Hugging Face MoE causal LM -> the exact reversible model over its own layers."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from revbench.models.families import FAMILIES, UnsupportedArchitectureError
from revbench.revexact.model import RevExactForCausalLM
from revbench.revexact.options import RevExactOptions
from revbench.revffn.families import family_ops


def convert(model: PreTrainedModel, **options: Any) -> RevExactForCausalLM:
    """Run the decoder stack of `model` as the integer momentum stack (see RevExactOptions). Nothing is added
    or re-initialised: the layers, embeddings, final norm and LM head are the model's own objects, so train
    the returned model, not the original."""
    opts = RevExactOptions.from_kwargs(**options)
    if isinstance(model, RevExactForCausalLM):
        raise ValueError("the model is already a revexact model")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no Hugging Face config; revexact converts "
                                           f"{', '.join(f.model_class.__name__ for f in FAMILIES.values())}")
    ops = family_ops(config)
    expected = FAMILIES[ops.name].model_class
    if not isinstance(model, expected):
        raise UnsupportedArchitectureError(
            f"revexact converts causal LMs: expected {expected.__name__}, got {type(model).__name__}")
    converted = RevExactForCausalLM(model, opts)
    converted.train(model.training)
    return converted
