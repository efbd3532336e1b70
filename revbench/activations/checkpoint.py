"""`checkpoint`: each decoder layer keeps only its input and recomputes the rest in backward; with the option
`checkpoint_every: k` only every k-th layer does (the k-th, 2k-th, ...: torchtitan's selective layer checkpointing),
and the others keep every activation, trading memory for less recompute."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from revbench.activations.base import Activations
from revbench.spec import TrainSpec


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The layers transformers can checkpoint, in order (inside any engine or adapter wrapper)."""
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


class Checkpoint(Activations):
    """Transformers' own layer checkpointing, non-reentrant (torch.utils.checkpoint with use_reentrant=False)."""

    name = "checkpoint"
    option_names: tuple[str, ...] = ("checkpoint_every",)
    recomputes = True

    def __init__(self, spec: TrainSpec) -> None:
        super().__init__(spec)
        self.every = spec.count_option("checkpoint_every", "layers", default=1)

    def checkpoint_kwargs(self) -> dict[str, Any]:
        """What torch.utils.checkpoint is called with for each checkpointed layer."""
        return {"use_reentrant": False}

    def build(self, model: nn.Module) -> nn.Module:
        kwargs = self.checkpoint_kwargs()
        # transformers 5.24 renamed gradient_checkpointing_enable (now a deprecated alias); 5.17 has only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # Every layer is set up to checkpoint; those between the k-th ones store (transformers 5.17 has no
        # every_n_layers, so the layers' own switch is set here on every version).
        for index, layer in enumerate(decoder_layers(model)):
            layer.gradient_checkpointing = (index + 1) % self.every == 0
        model.config.use_cache = False  # a KV cache would keep every layer's keys and values alive anyway
        return model

    def stats(self, model: nn.Module) -> dict[str, Any]:
        layers = decoder_layers(model)
        return {"checkpointed_layers": sum(bool(layer.gradient_checkpointing) for layer in layers),
                "layers": len(layers)}
