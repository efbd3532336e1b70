"""Activation checkpointing: each decoder layer keeps only its input and recomputes the rest in backward."""

from __future__ import annotations

import torch

from revbench.methods.standard import Standard


class Checkpointing(Standard):
    """Transformers' own layer checkpointing, non-reentrant (torch.utils.checkpoint with use_reentrant=False)."""

    name = "checkpointing"

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        kwargs = {"use_reentrant": False}
        # transformers 5.24 renamed gradient_checkpointing_enable (now a deprecated alias); 5.17 has only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False  # a KV cache would keep every layer's keys and values alive anyway
        return model
