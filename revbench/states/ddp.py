"""`adamw-ddp`: plain data parallel. Every rank holds the whole model, its gradients and AdamW states; torch's
DistributedDataParallel all-reduces (averages) the gradients in buckets during backward, so every rank takes
the same AdamW step on the gradient of the global batch.

The model is wrapped whatever the world size, a world of one included, so that one rank and N ranks run the
same code and a per-rank figure at N = 1 is comparable with N > 1 (DDP's gradient buckets included). Gradients
are views into the buckets (`gradient_as_bucket_view`), as torchtitan and Lightning do, so they are not held
twice. The buckets live from the first backward on, also while `param.grad` is None, so they are the gradient
memory: torch's own all-reduce hook is wrapped to learn them (DDP does not expose them otherwise).
With `find_unused_parameters` DDP never rebuilds its buckets, so they stay the same storages from step to step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from revbench.measure.categories import StateTensors
from revbench.ranks import local_rank
from revbench.states.base import ModelStates
from revbench.states.deepspeed_runtime import SingleProcessGroup

BUCKET_CAP_MB = 25  # torch's default gradient bucket size


class AdamWDDP(ModelStates):
    name = "adamw-ddp"
    data_parallel = "parameters, gradients and AdamW states replicated on every rank; gradients all-reduced"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.group = SingleProcessGroup()
        self.wrapped: nn.Module | None = None
        self.buckets: dict[int, torch.Tensor] = {}

    def setup(self, model: nn.Module) -> Callable[..., Any]:
        device = torch.device(self.spec.device)
        self.group.open(None, device)
        try:
            device_ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
            # Parameters a step leaves without a gradient (a router's unused expert) must not stall the reducer.
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                               bucket_cap_mb=BUCKET_CAP_MB,
                                                               gradient_as_bucket_view=True,
                                                               find_unused_parameters=True)
        except BaseException:
            self.group.close()
            raise
        self.wrapped.register_comm_hook(None, self._allreduce)
        self.model = model
        self.optimizer = self.make_optimizer(list(model.parameters()))
        return self.wrapped

    # Unannotated: DDP checks a hook's annotations against its own classes, which postponed annotations defeat.
    def _allreduce(self, state, bucket):
        """torch's default all-reduce (the mean over ranks), noting the bucket's flat gradient buffer."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.buckets[bucket.index()] = bucket.buffer()
        return allreduce_hook(state, bucket)

    def state_tensors(self) -> StateTensors:
        states = super().state_tensors()
        return {**states, "grads": [*states["grads"], *self.buckets.values()]}

    def stats(self) -> dict[str, Any]:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return {"world_size": world, "data_parallel": self.data_parallel, "bucket_cap_mb": BUCKET_CAP_MB,
                "buckets": len(self.buckets)}

    def teardown(self) -> None:
        self.wrapped, self.buckets = None, {}
        self.group.close()
        super().teardown()
