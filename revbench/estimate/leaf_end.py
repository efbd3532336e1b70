"""What an activation technique's step holds when a MoE block's backward ends: the moment DeepSpeed ZeRO-3 reduces
the block's gradients, all of them alive at once, and (optimizer offloaded) takes their norms in float64
(stage3.py `reduce_leaf_module_grads`). By then the block's backward has freed what its forward saved for it, so
the step holds less than at its own peak, which falls while the block's largest gradient is produced.

The drop from the peak to that moment is one layer's (the block's saved tensors and the gradient in hand), the same
at any depth: it is traced once at a small depth, on fake tensors, with a full backward hook on every MoE block
(DeepSpeed's leaf modules) marking the moment, and taken off the technique's peak at the full depth.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from revbench.estimate.fake_step import MethodStep
from revbench.estimate.zero3_gather import LEAF_MODULES
from revbench.measure.storage_tracker import mark_live, track_step
from revbench.models.zoo import build_config
from revbench.spec import TrainSpec

TRACED_LAYERS = 2  # the last layer's block ends with the layer below's activations alive, as at any depth


def _mark(module: torch.nn.Module, grad_input: object, grad_output: object) -> None:
    mark_live()


def leaf_end_drop(name: str, spec: TrainSpec, target: str) -> int:
    """How many bytes fewer than at its peak `name`'s step (one of the transients' methods) holds when a MoE block's
    backward ends, at `spec`'s batch and sequence length (0: its model has no MoE block, or no block's backward
    ends in a traced step)."""
    layers = min(build_config(spec.model).num_hidden_layers, TRACED_LAYERS)
    step = MethodStep(name, replace(spec, model=replace(spec.model, layers=layers)), target)
    hooks = [m.register_full_backward_hook(_mark) for m in step.method.model.modules()
             if type(m).__name__ in LEAF_MODULES]
    try:
        with step.context():
            step.method.zero_grad()
            workload = step.spec.workload
            traced = track_step(lambda: step.train(workload.batch, workload.seq), step.method.state_tensors,
                                by_phase=False)
    finally:
        for hook in hooks:
            hook.remove()
    at_end = traced.at_mark()
    if at_end is None:
        return 0
    return traced.breakdown(None, None).activations - at_end.activations
