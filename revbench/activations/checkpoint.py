"""`checkpoint`: each decoder layer keeps only its input and recomputes the rest in backward."""

from __future__ import annotations

from torch import nn

from revbench.activations.base import Activations


class Checkpoint(Activations):
    """Transformers' own layer checkpointing, non-reentrant (torch.utils.checkpoint with use_reentrant=False)."""

    name = "checkpoint"

    def build(self, model: nn.Module) -> nn.Module:
        kwargs = {"use_reentrant": False}
        # transformers 5.24 renamed gradient_checkpointing_enable (now a deprecated alias); 5.17 has only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False  # a KV cache would keep every layer's keys and values alive anyway
        return model
