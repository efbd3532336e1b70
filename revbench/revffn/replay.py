"""RNG and autocast state captured at forward and replayed on recompute (as torch.utils.checkpoint does).

Only branches that draw random numbers (attention dropout, Mixtral's router jitter, in training) get an
RNG snapshot: a CPU generator state is 5 KB, and keeping one per layer for nothing would grow with depth.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RngState:
    cpu: torch.Tensor
    cuda: torch.Tensor | None = None
    cuda_index: int | None = None


def capture_rng(device: torch.device) -> RngState:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return RngState(torch.get_rng_state(), torch.cuda.get_rng_state(index), index)
    return RngState(torch.get_rng_state())


@dataclass
class BranchRng:
    """One layer's RNG snapshots, one per random branch ("attn", "moe"): captured, then replayed."""

    device: torch.device
    states: dict[str, RngState] = field(default_factory=dict)
    replaying: bool = False

    @contextmanager
    def branch(self, name: str, random: bool) -> Iterator[None]:
        if not self.replaying:
            if random:
                self.states[name] = capture_rng(self.device)
            yield
            return
        state = self.states.get(name)
        if state is None:  # the branch drew no random numbers in forward
            yield
            return
        # fork_rng: the replay must not disturb the generator the training loop goes on with.
        devices = [state.cuda_index] if state.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(state.cpu)
            if state.cuda is not None:
                torch.cuda.set_rng_state(state.cuda, state.cuda_index)
            yield


@dataclass(frozen=True)
class AutocastState:
    device_type: str
    enabled: bool
    dtype: torch.dtype
    cpu_enabled: bool
    cpu_dtype: torch.dtype
    cache_enabled: bool

    @classmethod
    def capture(cls, device_type: str) -> AutocastState:
        return cls(device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type),
                   torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                   torch.is_autocast_cache_enabled())

    def compute_dtype(self, param_dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.enabled else param_dtype

    @contextmanager
    def replay(self) -> Iterator[None]:
        with ExitStack() as stack:
            if self.device_type != "cpu":
                stack.enter_context(torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled,
                                                   cache_enabled=self.cache_enabled))
            stack.enter_context(torch.autocast("cpu", dtype=self.cpu_dtype, enabled=self.cpu_enabled,
                                               cache_enabled=self.cache_enabled))
            yield
