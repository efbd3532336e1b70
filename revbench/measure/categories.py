"""Model states by category, the one vocabulary every memory figure in revbench is split into."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass

import torch

CATEGORIES = ("params", "grads", "optimizer", "activations")
# Everything live that is not a parameter, buffer, gradient or optimizer state counts as an activation.
STATE_CATEGORIES = ("params", "grads", "optimizer")


@dataclass(frozen=True)
class TensorBytes:
    """Peak live tensor bytes, split by what the bytes hold. The four categories sum to `total`."""

    params: int
    grads: int
    optimizer: int
    activations: int
    method: str

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    def to_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "total": self.total}


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (its StorageImpl), stable while the storage lives; works for fake tensors."""
    return t.untyped_storage()._cdata


def storage_ptr(t: torch.Tensor) -> tuple[str, int]:
    """The allocation a real tensor lives in, as the allocator (and so the profiler) names it."""
    return t.device.type, t.untyped_storage().data_ptr()


StateTensors = dict[str, list[torch.Tensor]]


def default_state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> StateTensors:
    """Parameters (with buffers), gradients and optimizer states of a plain torch model and optimizer."""
    params = [*model.parameters(), *model.buffers()]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    states: list[torch.Tensor] = []
    if optimizer is not None:
        for state in optimizer.state.values():
            states.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return {"params": params, "grads": grads, "optimizer": states}


KeyFn = Callable[[torch.Tensor], Hashable]


def unique_storages(tensors: Iterable[torch.Tensor], key: KeyFn = storage_key) -> dict[Hashable, torch.Tensor]:
    """One tensor per distinct storage, so shared and tied storages count once."""
    out: dict[Hashable, torch.Tensor] = {}
    for t in tensors:
        out.setdefault(key(t), t)
    return out


def categorize(states: StateTensors, key: KeyFn = storage_key) -> dict[Hashable, tuple[str, int]]:
    """storage key -> (category, bytes); a storage listed under two categories keeps the first."""
    out: dict[Hashable, tuple[str, int]] = {}
    for category in STATE_CATEGORIES:
        for k, t in unique_storages(states.get(category, []), key).items():
            out.setdefault(k, (category, t.untyped_storage().nbytes()))
    return out
