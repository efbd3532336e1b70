"""Estimate a DeepSpeed ZeRO method: its model states from the layout model, its activations from a fake-tensor
forward and backward of the same model, with DeepSpeed's gradient bucketing and its device step replayed.

The model is the method's own (`method.build_model()`: the HF model as its activation technique converts it,
with its loss technique's head), built and run under fake tensors without DeepSpeed. What DeepSpeed changes in
that step is where each gradient goes as soon as autograd has accumulated it, in its gradient hook:
`GradBuckets` replays those rules (stage_1_and_2.py `reduce_independent_p_g_buckets_and_remove_grads`,
stage3.py `reduce_ready_partitions_and_remove_grads`), so the gradients live exactly as long as under
DeepSpeed. The CPU Adam step runs on host buffers in place and adds nothing on the device.

Without offload the step is on the device, one float32 master partition at a time (stage_1_and_2.py `step`,
stage3.py `_prepare_sub_group`): the partition's gradients are flattened (a copy in the model's dtype), made
float32 (a second copy unless that is the model's dtype), the model's own gradients are dropped (ZeRO-1/2), and
torch's AdamW steps that partition alone. The replay runs the run's own AdamW implementation on fake masters.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from revbench.estimate.depth import TRACED
from revbench.estimate.fake_step import shim_for, target_spec, unpacked_sequences
from revbench.estimate.zero_layout import ParamLayout, ZeroLayout, flat_elements, master_partitions, zero_layout
from revbench.measure.categories import WORKSPACE_PHASE, TensorBytes
from revbench.measure.phases import phase
from revbench.measure.storage_tracker import measure_phase_peaks_tracked
from revbench.methods import create_method
from revbench.spec import TrainSpec
from revbench.states.zero import Zero, fill_config, tensors_in

ZERO_STATES = ("zero1", "zero2", "zero3", "zero2-offload", "zero3-offload")


class GradBuckets:
    """DeepSpeed's ipg bucket, as it decides when a gradient is freed.

    A gradient that fits the bucket is copied into the bucket's preallocated buffer (counted in the layout),
    so its own storage is freed at once. A larger one keeps its storage (ZeRO-2 offload first clones it, for
    stream safety) until the bucket is next reduced, when it is copied to the host and dropped. ZeRO-2 on the
    device reduces into `grads_in_partition`, allocated at its first reduce and kept until the step.
    """

    def __init__(self, stage: int, size: int, offload: bool, partition: tuple[int, torch.dtype] | None) -> None:
        self.stage, self.size, self.offload = stage, size, offload
        self.elements = 0
        self.pending: list[torch.nn.Parameter] = []
        self.partition_shape = partition  # (elements, dtype) of ZeRO-2's device gradient partition
        self.partition: torch.Tensor | None = None

    def reduce(self) -> None:
        if self.partition_shape is not None and self.partition is None:
            self.partition = torch.empty(self.partition_shape[0], dtype=self.partition_shape[1])
        for param in self.pending:
            param.grad = None
        self.pending.clear()
        self.elements = 0

    def __call__(self, param: torch.nn.Parameter) -> None:
        n = param.numel()
        if self.elements + n > self.size and (self.elements > 0 or self.stage == 2):
            self.reduce()
        if self.elements + n <= self.size and (self.stage == 3 or n <= self.size):
            param.grad = None  # now a view of the bucket buffer, which the layout counts
        else:
            if self.stage == 2 and self.offload:
                param.grad = param.grad.clone()  # `_offload_gradient_safety_enabled`: an independent storage
            self.pending.append(param)
        self.elements += n


def zero_config(states: Zero, model: torch.nn.Module) -> dict[str, Any]:
    """The config DeepSpeed would be given: the technique's file, filled in by the technique's own rules."""
    config = states.load_config(states.config_path)
    return fill_config(config, states.spec.workload.batch, next(model.parameters()).dtype, model.config.hidden_size)


class ZeroStep:
    """A ZeRO method's model, built once on fake tensors with its layout, stepped at any batch and seq."""

    how, depths, note = TRACED, (), None  # at the depth it was built with

    def __init__(self, name: str, spec: TrainSpec, target: str) -> None:
        self.spec = target_spec(name, spec, target)
        method = create_method(name, self.spec)
        states = method.states
        assert isinstance(states, Zero), f"{name} does not keep its model states with DeepSpeed ZeRO"
        self.stage, self.offload = states.stage, states.offload_optimizer
        self.loss = method.loss
        self.mode = FakeTensorMode()
        self.shim = shim_for(self.spec)
        with self.mode:
            self.model = method.build_model()  # the activation technique's model, with the loss technique's head
        self.parameters = sum(p.numel() for p in self.model.parameters())
        zero = zero_config(states, self.model)["zero_optimization"]
        params = ParamLayout.of(self.model)
        self.dtype = params.dtype  # the model's (low-precision) dtype
        self.layout: ZeroLayout = zero_layout(states.stage, self.offload, params, zero)
        partition = (flat_elements(params), params.dtype) if self.stage == 2 and not self.offload else None
        self.buckets = GradBuckets(states.stage, int(zero["reduce_bucket_size"]), self.offload, partition)
        if self.stage > 1 or self.offload:  # ZeRO-1 on the device keeps whole gradients until its step
            for p in self.model.parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(self.buckets)
        self.masters: list[torch.nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        if not self.offload:
            with self.mode:
                self.masters = [torch.nn.Parameter(torch.empty(n, dtype=torch.float32))
                                for n in master_partitions(self.stage, params, zero)]
                self.optimizer = self.spec.optimizer.build([{"params": [m]} for m in self.masters])
                self._optimizer_step()  # the warm-up: AdamW's state exists before the measured step

    def _optimizer_step(self) -> None:
        """DeepSpeed's step on the device, one master partition at a time (see the module's docstring)."""
        assert self.optimizer is not None
        groups = self.optimizer.param_groups
        for group, master in zip(groups, self.masters, strict=True):
            flat = torch.empty(master.numel(), dtype=self.dtype)  # the partition's gradients, flattened
            master.grad = flat.to(torch.float32)
            del flat
            if self.stage < 3:  # the model's gradients (ZeRO-2: views of grads_in_partition) are dropped
                for p in self.model.parameters():
                    p.grad = None
                self.buckets.partition = None
            self.optimizer.param_groups = [group]
            try:
                self.optimizer.step()
            finally:
                self.optimizer.param_groups = groups
            master.grad = None

    def _step(self, batch: int, seq: int) -> None:
        tokens = torch.zeros((batch, seq), dtype=torch.long)  # the harness holds its batch through the step
        with phase("forward"):
            loss = self.loss(self.model, tokens)
        with phase("backward"):
            loss.backward()
        self.buckets.reduce()  # the end of backward reduces what is left in the bucket
        if self.optimizer is not None:
            with phase("optimizer"):
                self._optimizer_step()

    @property
    def host(self) -> TensorBytes | None:
        """What DeepSpeed keeps in host memory: its layout's, whatever the batch (None: nothing, no offload)."""
        return self.layout.host if self.offload else None

    def _states(self) -> dict[str, list[torch.Tensor]]:
        optimizer = [*self.masters, *tensors_in(list(self.optimizer.state.values()))] if self.optimizer else []
        return {"params": [*self.model.parameters(), *self.model.buffers()], "optimizer": optimizer}

    def _device(self, tracked: TensorBytes) -> TensorBytes:
        # The whole fake parameters stand in for what DeepSpeed holds of them on the device: ZeRO-2's flat
        # buffer (the layout's device params) or ZeRO-3's persistent parameters plus its gathered working set.
        # ZeRO-3's working set is added at its largest to the activations' peak, though the two need not peak
        # together, and ZeRO-2's gradient workspace likewise: both make the device figure an upper bound. Neither
        # is live in the optimizer step, where the masters and AdamW's state are the replay's own.
        layout = self.layout
        stepping = tracked.phase == WORKSPACE_PHASE
        gathered, workspace = (0, 0) if stepping else (layout.gathered, layout.workspace)
        grads = layout.device.grads - (layout.backward_only if stepping else 0)
        return replace(layout.device, params=layout.device.params + gathered, grads=grads, optimizer=tracked.optimizer,
                       workspace=tracked.workspace, activations=tracked.activations + workspace,
                       phase=tracked.phase,
                       host_activations=tracked.host_activations,
                       method=f"ZeRO-{self.stage} layout + fake-tensor activations (device)")

    def phase_peaks(self, batch: int, seq: int) -> dict[str | None, TensorBytes]:
        """Device bytes at each step phase's own peak in one step (the host's are `host`)."""
        with unpacked_sequences(), self.mode, self.shim:
            _, peaks = measure_phase_peaks_tracked(lambda: self._step(batch, seq), self._states)
        return {phase: self._device(tracked) for phase, tracked in peaks.items()}
