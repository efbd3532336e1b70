"""Estimate a DeepSpeed ZeRO offload method: its model states from the layout model, its activations from a
fake-tensor forward and backward of the same model, with DeepSpeed's gradient bucketing replayed.

The model is the method's own (`method.build_model()`: the HF model as its activation technique converts it,
with its loss technique's head), built and run under fake tensors without DeepSpeed. What DeepSpeed changes in
that step is where each gradient goes as soon as autograd has accumulated it, in its gradient hook:
`GradBuckets` replays those rules (stage_1_and_2.py `reduce_independent_p_g_buckets_and_remove_grads`,
stage3.py `reduce_ready_partitions_and_remove_grads`), so the gradients live exactly as long as under
DeepSpeed. The CPU Adam step runs on host buffers in place and adds nothing on the device.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from revbench.estimate.depth import TRACED
from revbench.estimate.fake_step import shim_for, target_spec, unpacked_sequences
from revbench.estimate.zero_layout import ParamLayout, ZeroLayout, zero_layout
from revbench.measure.categories import TensorBytes
from revbench.measure.phases import phase
from revbench.measure.storage_tracker import measure_phase_peaks_tracked
from revbench.methods import create_method
from revbench.spec import TrainSpec
from revbench.states.zero_offload import ZeroOffload, fill_config, load_config

ZERO_STATES = ("zero2-offload", "zero3-offload")


class GradBuckets:
    """DeepSpeed's ipg bucket, as it decides when a gradient is freed.

    A gradient that fits the bucket is copied into the bucket's preallocated buffer (counted in the layout),
    so its own storage is freed at once. A larger one keeps its storage (ZeRO-2 offload first clones it, for
    stream safety) until the bucket is next reduced, when it is copied to the host and dropped.
    """

    def __init__(self, stage: int, size: int) -> None:
        self.stage, self.size = stage, size
        self.elements = 0
        self.pending: list[torch.nn.Parameter] = []

    def reduce(self) -> None:
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
            if self.stage == 2:
                param.grad = param.grad.clone()  # `_offload_gradient_safety_enabled`: an independent storage
            self.pending.append(param)
        self.elements += n


def zero_config(states: ZeroOffload, model: torch.nn.Module) -> dict[str, Any]:
    """The config DeepSpeed would be given: the technique's file, filled in by the technique's own rules."""
    config = load_config(states.config_path, states.stage, states.offload_param)
    return fill_config(config, states.spec.workload.batch, next(model.parameters()).dtype, model.config.hidden_size)


class ZeroStep:
    """A ZeRO offload method's model, built once on fake tensors with its layout, stepped at any batch and seq."""

    how, depths, note = TRACED, (), None  # at the depth it was built with

    def __init__(self, name: str, spec: TrainSpec, target: str) -> None:
        self.spec = target_spec(name, spec, target)
        method = create_method(name, self.spec)
        states = method.states
        assert isinstance(states, ZeroOffload), f"{name} does not keep its model states with DeepSpeed ZeRO"
        self.stage = states.stage
        self.loss = method.loss
        self.mode = FakeTensorMode()
        self.shim = shim_for(self.spec)
        with self.mode:
            self.model = method.build_model()  # the activation technique's model, with the loss technique's head
        self.parameters = sum(p.numel() for p in self.model.parameters())
        zero = zero_config(states, self.model)["zero_optimization"]
        self.layout: ZeroLayout = zero_layout(states.stage, ParamLayout.of(self.model), zero)
        self.buckets = GradBuckets(states.stage, int(zero["reduce_bucket_size"]))
        for p in self.model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self.buckets)

    def _step(self, batch: int, seq: int) -> None:
        with phase("forward"):
            loss = self.loss(self.model, torch.zeros((batch, seq), dtype=torch.long))
        with phase("backward"):
            loss.backward()
        self.buckets.reduce()  # the end of backward reduces what is left in the bucket

    @property
    def host(self) -> TensorBytes:
        """What DeepSpeed keeps in host memory: its layout's, whatever the batch."""
        return self.layout.host

    def _device(self, tracked: TensorBytes) -> TensorBytes:
        # The whole fake parameters stand in for what DeepSpeed holds of them on the device: ZeRO-2's flat
        # buffer (the layout's device params) or ZeRO-3's persistent parameters plus its gathered working set.
        # ZeRO-3's working set is added at its largest to the activations' peak, though the two need not peak
        # together, and ZeRO-2's gradient workspace likewise: both make the device figure an upper bound.
        layout = self.layout
        return replace(layout.device, params=layout.device.params + layout.gathered,
                       activations=tracked.activations + layout.workspace, phase=tracked.phase,
                       host_activations=tracked.host_activations,
                       method=f"ZeRO-{self.stage} layout + fake-tensor activations (device)")

    def phase_peaks(self, batch: int, seq: int) -> dict[str | None, TensorBytes]:
        """Device bytes at each step phase's own peak in one step (the host's are `host`)."""
        with unpacked_sequences(), self.mode, self.shim:
            _, peaks = measure_phase_peaks_tracked(
                lambda: self._step(batch, seq), lambda: {"params": [*self.model.parameters(), *self.model.buffers()]})
        return {phase: self._device(tracked) for phase, tracked in peaks.items()}
