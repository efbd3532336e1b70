"""The model-state interface: set up the optimizer (or engine) around the model, then backward and step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from revbench.measure.categories import StateTensors, default_state_tensors
from revbench.spec import TrainSpec


class ModelStates:
    """A torch optimizer over the model's parameters; `make_optimizer` says which one."""

    name: ClassVar[str]
    option_names: ClassVar[tuple[str, ...]] = ()
    precision: ClassVar[str] = "the model's dtype: float32 on CPU, bfloat16 on CUDA, optimizer states alike"
    uses_adamw_implementation: ClassVar[bool] = True  # whether optimizer.implementation applies
    # How the states are laid out over several ranks (data parallel), or None where the technique keeps whole,
    # unsynchronised states in each process and so cannot run on more than one rank.
    data_parallel: ClassVar[str | None] = None

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        if not self.uses_adamw_implementation and spec.optimizer.implementation != "auto":
            raise ValueError(f"optimizer.implementation {spec.optimizer.implementation!r} chooses among torch's "
                             f"AdamW kernels, which {self.name!r} does not use; leave it auto")

    def refuses(self, activations: str, loss: str) -> str | None:
        """Why these model states cannot run with the given activation and loss techniques, or None."""
        return None

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return self.spec.optimizer.build(params)

    def prebuild(self) -> None:
        """Compile or load what the first step would otherwise build, before anything is measured."""

    def setup(self, model: nn.Module) -> Callable[..., Any]:
        """Take the model in; return what the forward runs through (the model, or an engine around it)."""
        self.model = model
        self.optimizer = self.make_optimizer(list(model.parameters()))
        return model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        """Drop gradients before a step, outside any measured window."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def state_tensors(self) -> StateTensors:
        assert self.model is not None, "setup() first"
        return default_state_tensors(self.model, self.optimizer)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter by name, whole (gathered where partitioned), as detached CPU copies."""
        assert self.model is not None, "setup() first"
        return {name: p.detach().cpu().clone() for name, p in self.model.named_parameters()}

    def stats(self) -> dict[str, Any]:
        return {}

    def teardown(self) -> None:
        self.model = self.optimizer = None
