"""What ZeRO-3 holds gathered while backward runs: DeepSpeed's release rule replayed over the model's fetch trace.

ZeRO-3 gathers a module's whole parameters before it runs and releases them after, unless the module runs again
within `stage3_max_reuse_distance` parameters of the trace it recorded (DeepSpeed 0.19,
`PartitionedParameterCoordinator.__params_to_release`): a module released in forward whose backward (or recompute)
comes that soon stays gathered until then. DeepSpeed gathers its default leaf modules (the MoE blocks of Mixtral,
Qwen2-MoE and Qwen3-MoE) whole, as one module.

A release swaps the parameter's `.data` for an empty tensor, which frees the gathered storage only when nothing
else refers to it. transformers' fused experts (3-D weights) hand their kernels transposed or sliced views, and
autograd saves those views for backward: where a layer's forward keeps its saved tensors on the device (`store`),
each layer's gathered expert weights stay allocated from its forward to its backward whatever DeepSpeed releases,
and a layer re-gathered for backward holds them twice. Two-dimensional weights go through DeepSpeed's own linear
function, which saves the parameter itself, so they are freed.

Measured on 2 and 4 CPU ranks (tests/test_scale_out_ranks.py). Not replayed: prefetching, which gathers up to
`stage3_prefetch_bucket_size` elements of the trace ahead of the running module (measured at the tiny model's backward
peak: 0.3 MB of attention weights), and the parameters DeepSpeed keeps because a prefetch passed their next use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

# DeepSpeed 0.19's DEFAULT_LEAF_MODULE_CLASSES (runtime/zero/leaf_module_config.py), by class name.
LEAF_MODULES = ("MixtralSparseMoeBlock", "Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock")
MAX_REUSE_DISTANCE = 10**9  # DeepSpeed's default stage3_max_reuse_distance, in parameters
LAYER = re.compile(r"\blayers\.(\d+)\.")


@dataclass(frozen=True)
class FetchUnit:
    """What ZeRO-3 gathers at once: a module's own parameters, or a leaf module's every parameter."""

    layer: int | None  # the decoder layer it belongs to; None outside the stack
    numels: tuple[int, ...]
    leaf: bool  # a leaf module: DeepSpeed reduces its gradients only when its whole backward is done
    views: int  # parameters whose views forward saves for backward (fused experts: three or more dimensions)


def fetch_units(model: nn.Module) -> tuple[FetchUnit, ...]:
    """The model's fetch units in forward order: the input embeddings, the decoder layers in turn, then the rest
    (the final norm, the LM head). Within a layer, registration order: transformers registers a decoder's modules in
    the order they run, but for the layer norms, which are below any persistence threshold."""
    found: list[tuple[tuple[int, int], FetchUnit]] = []
    inside_leaf = ()
    for name, module in model.named_modules():
        if inside_leaf and name.startswith(inside_leaf):
            continue
        leaf = type(module).__name__ in LEAF_MODULES
        inside_leaf = (name + ".",) if leaf else ()
        params = list(module.parameters(recurse=leaf))
        if params:
            match = LAYER.search(name + ".")
            layer = int(match.group(1)) if match else None
            # a wrapper (the reversible stacks) may register the LM head before the layers
            order = (1, layer) if layer is not None else (0, 0) if "embed" in name else (2, 0)
            found.append((order, FetchUnit(layer, tuple(p.numel() for p in params), leaf,
                                           sum(p.numel() for p in params if p.dim() >= 3))))
    return tuple(unit for _, unit in sorted(found, key=lambda item: item[0]))  # stable: registration order within


def fetch_trace(units: tuple[FetchUnit, ...], recomputes: bool) -> tuple[list[int], int]:
    """The units in the order DeepSpeed fetches them over a step, and how many of them are forward's. Backward runs
    the stack in reverse; a recomputing technique (checkpointing, the reversible stacks) runs each layer's forward
    again just before its backward."""
    forward = list(range(len(units)))
    if not recomputes:
        return forward + forward[::-1], len(forward)
    backward: list[int] = []
    recomputed: set[int] = set()
    for index in reversed(forward):
        layer = units[index].layer
        if layer is None:
            backward.append(index)
        elif layer not in recomputed:
            recomputed.add(layer)
            own = [i for i in forward if units[i].layer == layer]
            backward += own + own[::-1]
    return forward + backward, len(forward)


def reused_within(trace: list[int], start: int, unit: int, numels: list[int], distance: int) -> bool:
    """DeepSpeed's rule: the unit runs again before `distance` parameters of the trace from `start` are passed."""
    passed = 0
    for other in trace[start:]:
        if passed >= distance:
            return False
        if other == unit:
            return True
        passed += numels[other]
    return False


@dataclass(frozen=True)
class Gathering:
    """The ZeRO-3 settings the replay follows, in elements (DeepSpeed's keys)."""

    threshold: int  # stage3_param_persistence_threshold: parameters this small stay whole, never gathered
    distance: int = MAX_REUSE_DISTANCE  # stage3_max_reuse_distance

    @classmethod
    def of(cls, zero: dict[str, Any]) -> Gathering:
        """From a filled-in zero_optimization section (DeepSpeed's default distance where it sets none)."""
        return cls(int(zero["stage3_param_persistence_threshold"]),
                   int(zero.get("stage3_max_reuse_distance", MAX_REUSE_DISTANCE)))


def gathered_in_backward(units: tuple[FetchUnit, ...], settings: Gathering, recomputes: bool,
                         holds_views: bool) -> int:
    """The most parameter elements held gathered at once while backward runs, past the persistent ones: the
    modules DeepSpeed keeps from their last use or fetches for this one, plus the expert weights that forward's
    saved views hold (`holds_views`)."""
    trace, forward = fetch_trace(units, recomputes)
    numels = [sum(u.numels) for u in units]
    gathered = [sum(n for n in u.numels if n > settings.threshold) for u in units]
    live: set[int] = set()
    viewed: dict[int, int] = {}  # unit -> its expert weights that forward's saved views hold after its release
    most = 0
    for position, unit in enumerate(trace):
        live.add(unit)
        if position >= forward:
            most = max(most, sum(gathered[u] for u in live) + sum(viewed.values()))
            viewed.pop(unit, None)  # its backward ran: autograd drops the saved views
        if not reused_within(trace, position + 1, unit, numels, settings.distance):
            live.discard(unit)
            if position < forward and holds_views and units[unit].views:
                viewed[unit] = units[unit].views
    return most


def leaf_gradients(units: tuple[FetchUnit, ...]) -> tuple[int, int]:
    """The gradient elements of the leaf module with the most, and its largest gradient's: DeepSpeed delays the
    reduce of a leaf module's gradients until its whole backward is done (stage3.py, `reduce_leaf_module_grads`),
    so its every gradient exists at once, whole."""
    return max(((sum(u.numels), max(u.numels)) for u in units if u.leaf), default=(0, 0))
