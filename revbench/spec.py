"""What every run shares: the model, the data shape, the optimizer hyper-parameters, the seed and the device."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from revbench.models.spec import ModelSpec
from revbench.workload import Workload

# torch's AdamW implementations: the multi-tensor `foreach` path (torch's default on CUDA), the `fused`
# kernel, and the `for-loop` over parameters (its default on CPU). "auto" is torch's own choice for the device.
ADAMW_IMPLEMENTATIONS = ("auto", "foreach", "fused", "for-loop")


@dataclass
class OptimizerSpec:
    """AdamW with one set of hyper-parameters for every method."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.implementation not in ADAMW_IMPLEMENTATIONS:
            raise ValueError(f"unknown AdamW implementation {self.implementation!r}; choose one of "
                             f"{', '.join(ADAMW_IMPLEMENTATIONS)}")

    def resolved(self, device: str | torch.device) -> OptimizerSpec:
        """"auto" made concrete: torch takes foreach on CUDA and the for-loop on CPU (it never defaults to fused)."""
        if self.implementation != "auto":
            return self
        return replace(self, implementation="foreach" if torch.device(device).type == "cuda" else "for-loop")

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": tuple(self.betas), "eps": self.eps}

    def build(self, params: Any) -> torch.optim.AdamW:
        kind = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for-loop": {"foreach": False}}
        return torch.optim.AdamW(params, **self.hyperparameters(), **kind[self.implementation])


@dataclass
class TrainSpec:
    """What every method shares: the model, the data shape, the optimizer, the seed and the device."""

    model: ModelSpec = field(default_factory=ModelSpec)
    workload: Workload = field(default_factory=Workload)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    seed: int = 0
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # the techniques' options, by option name

    def count_option(self, name: str, unit: str, default: int | None = None) -> int | None:
        """A technique option that counts something (layers, tokens): a whole number >= 1, or `default` if unset."""
        value = self.options.get(name, default)
        if value is not default and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"option {name} must be a whole number of {unit} >= 1, not {value!r}")
        return value

    def flag_option(self, name: str, default: bool) -> bool:
        """A technique option that switches something on or off: true or false, or `default` if unset."""
        value = self.options.get(name, default)
        if not isinstance(value, bool):
            raise ValueError(f"option {name} must be true or false, not {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
