"""The method interface: every fine-tuning method prepares, steps, reports and tears down the same way."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from revbench.data import Workload
from revbench.measure.categories import StateTensors, default_state_tensors
from revbench.models.zoo import ModelSpec, build_model


@dataclass
class OptimizerSpec:
    """AdamW with one set of hyper-parameters for every method."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def build(self, params: Any) -> torch.optim.AdamW:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=tuple(self.betas),
                                 eps=self.eps)


@dataclass
class TrainSpec:
    """What every method shares: the model, the data shape, the optimizer, the seed and the device."""

    model: ModelSpec = field(default_factory=ModelSpec)
    workload: Workload = field(default_factory=Workload)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    seed: int = 0
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # method-specific options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Method(ABC):
    """One way to fine-tune. `train_step` does forward, backward and the optimizer update; nothing else."""

    name: ClassVar[str]
    precision: ClassVar[str] = "the model's dtype: float32 on CPU, bfloat16 on CUDA"
    # Why a fake-tensor estimate cannot run this method, or None when it can.
    not_estimable: ClassVar[str | None] = None

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.device = torch.device(spec.device)
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        unknown = set(spec.options) - set(self.option_names())
        if unknown:
            raise ValueError(f"method {self.name!r} has no option {', '.join(sorted(unknown))}; "
                             f"its options are {', '.join(self.option_names()) or 'none'}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ()

    @property
    def vocab_size(self) -> int:
        assert self.model is not None, "prepare() first"
        return self.model.config.vocab_size

    def build_model(self) -> torch.nn.Module:
        return build_model(self.spec.model, seed=self.spec.seed, device=self.device)

    @abstractmethod
    def prepare(self) -> None:
        """Build the model and optimizer."""

    @abstractmethod
    def train_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Forward, backward and optimizer update on one batch; returns the (detached) loss."""

    def zero_grad(self) -> None:
        """Drop gradients before a step, outside any measured window."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def state_tensors(self) -> StateTensors:
        assert self.model is not None, "prepare() first"
        return default_state_tensors(self.model, self.optimizer)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter by name, whole (gathered where the method partitions it), as detached CPU copies."""
        assert self.model is not None, "prepare() first"
        return {name: p.detach().cpu().clone() for name, p in self.model.named_parameters()}

    def stats(self) -> dict[str, Any]:
        """The method's own figures (e.g. RevFFN's reconstruction errors)."""
        return {}

    def teardown(self) -> None:
        self.model = self.optimizer = None
