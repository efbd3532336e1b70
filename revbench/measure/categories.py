"""Model states by category, the one vocabulary every memory figure in revbench is split into."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass

import torch

CATEGORIES = ("params", "grads", "optimizer", "workspace", "activations")
STATE_CATEGORIES = ("params", "grads", "optimizer")
# Everything else live at the peak is a temporary: `workspace` if the optimizer step allocated it (e.g. the
# foreach AdamW's sqrt of all second moments), `activations` otherwise (what forward keeps for backward and
# backward's own temporaries).
WORKSPACE_PHASE = "optimizer"
# The key under which `state_tensors()` lists the states that live in host memory (CPU offload): on a CPU
# run host and device are one memory, so residency is what the strategy would do on a GPU.
HOST = "host"


@dataclass(frozen=True)
class TensorBytes:
    """Peak live tensor bytes, split by what the bytes hold. The five categories sum to `total`. The `host_*`
    part of each model-state category lives in host memory (CPU offload); the rest, `device`, is what the
    accelerator holds. `phase` is the step phase in which the peak fell (forward, backward or optimizer).
    `host_activations` is apart from all of them: what an activation offload holds in host memory at its own peak
    (the end of forward, while the device's comes in backward), so the peak is the device's and the states'.
    `collectives` is part of the temporaries: what the process group's own buffers add to the peak (gloo copies what
    it reduces or gathers; NCCL's in-place collectives allocate nothing), so `total - collectives` is the peak with
    in-place collectives, the figure a layout model of a GPU run compares with."""

    params: int
    grads: int
    optimizer: int
    activations: int
    method: str
    workspace: int = 0
    host_params: int = 0
    host_grads: int = 0
    host_optimizer: int = 0
    phase: str | None = None
    host_activations: int = 0
    collectives: int = 0

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.workspace + self.activations

    @property
    def host(self) -> int:
        return self.host_params + self.host_grads + self.host_optimizer

    @property
    def device(self) -> int:
        return self.total - self.host

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    def to_dict(self) -> dict[str, int | str | None]:
        return {**asdict(self), "total": self.total, "device": self.device, "host": self.host}


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


def host_keys(states: StateTensors, key: KeyFn = storage_key) -> set[Hashable]:
    return set(unique_storages(states.get(HOST, []), key))


def host_fields(on_host: dict[str, int]) -> dict[str, int]:
    """Host-resident bytes by state category, as TensorBytes' `host_*` fields."""
    return {f"host_{category}": nbytes for category, nbytes in on_host.items()}


def temporary_category(phase: str | None) -> str:
    return "workspace" if phase == WORKSPACE_PHASE else "activations"


def categorize(states: StateTensors, key: KeyFn = storage_key) -> dict[Hashable, tuple[str, int]]:
    """storage key -> (category, bytes); a storage listed under two categories keeps the first."""
    out: dict[Hashable, tuple[str, int]] = {}
    for category in STATE_CATEGORIES:
        for k, t in unique_storages(states.get(category, []), key).items():
            out.setdefault(k, (category, t.untyped_storage().nbytes()))
    return out
