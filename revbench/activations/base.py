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

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.tile_tokens = spec.count_option("tile_tokens", "tokens")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model that trains: its MoE blocks tiled where asked (tiling.py), then converted by `build`."""
        return self.build(tile(model, self.tile_tokens) if self.tile_tokens else model)

    def build(self, model: nn.Module) -> nn.Module:
        return model

    def refuses(self, states: str, loss: str) -> str | None:
        """Why this technique cannot run with the given model-state and loss techniques, or None."""
        return None

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before each training step (0-based), outside any measured window's forward."""

    def stats(self, model: nn.Module) -> dict[str, Any]:
        return {}
