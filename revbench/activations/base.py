"""The activation-technique interface: turn the built model into the one that trains."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from revbench.activations.tiling import tile
from revbench.spec import TrainSpec

# Options every activation technique takes: tiling is orthogonal to what a technique keeps of each layer.
SHARED_OPTION_NAMES = ("tile_tokens",)


class Activations:
    """Keeps every activation: the model as built. Subclasses change what forward saves for backward."""

    name: ClassVar[str]
    option_names: ClassVar[tuple[str, ...]] = ()
    # What a decoder layer's forward leaves for its backward, which decides what ZeRO-3 holds gathered
    # (estimate/zero3_gather.py): whether backward runs the layer's forward again, and whether autograd's saved
    # tensors stay on the device.
    recomputes: ClassVar[bool] = False
    saves_on_device: ClassVar[bool] = True
    # Whether its backward computes a layer's gradients at once and then hands them over (the reversible stacks), so
    # that its own peak already holds a MoE block's gradients together (estimate/leaf_end.py).
    layer_gradients_at_once: ClassVar[bool] = False

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.tile_tokens = spec.count_option("tile_tokens", "tokens")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model that trains: its MoE blocks tiled where asked (tiling.py), then converted by `build`."""
        return self.build(tile(model, self.tile_tokens) if self.tile_tokens else model)

    def build(self, model: nn.Module) -> nn.Module:
        return model

    @property
    def holds_weight_views(self) -> bool:
        """Whether each layer's forward keeps autograd's views of its fused expert weights on the device until its
        backward (a tiled MoE block recomputes its chunks, so it keeps none)."""
        return self.saves_on_device and not self.recomputes and not self.tile_tokens

    def refuses(self, states: str, loss: str) -> str | None:
        """Why this technique cannot run with the given model-state and loss techniques, or None."""
        return None

    def refuses_ranks(self, states: str, ranks: int) -> str | None:
        """Why this technique cannot run with the given model-state technique over `ranks` ranks, or None."""
        return None

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before each training step (0-based), outside any measured window's forward."""

    def stats(self, model: nn.Module) -> dict[str, Any]:
        return {}
