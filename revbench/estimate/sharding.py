"""Per-rank model-state bytes over N data-parallel ranks: how DDP replicates the model states and how DeepSpeed
ZeRO-1/2/3, on the device or with CPU offload, partitions them, from the model's parameter shapes and the
DeepSpeed config.

This is layout arithmetic, not a fake-tensor step: DeepSpeed cannot run on fake tensors. Each term names the
buffer DeepSpeed 0.19 allocates for it, and `tests/test_estimate_sharding.py` holds the terms to the byte against
measured CPU ranks at N = 1 and N = 2.

Per rank, with P parameters in `b`-byte elements (4 on CPU, 2 in bf16 on CUDA), a world of N, R the reduce bucket
and L the largest parameter:

| states        | device                                             | host (pinned, per rank)                        |
|---------------|----------------------------------------------------|------------------------------------------------|
| adamw-ddp     | b·P weights, b·P gradient buckets, 2b·P moments   | -                                              |
| zero1         | b·P weights, b·P gradients, 12·P/N fp32 master,   | -                                              |
|               | momentum and variance                              |                                                |
| zero2         | b·P weights, b·P/N gradient partition + b·R,      | -                                              |
|               | 12·P/N master, momentum and variance               |                                                |
| zero3         | b·P/N weights (+ b·K persistent small parameters, | -                                              |
|               | N > 1), b·P/N + b·R gradients, 12·P/N master and  |                                                |
|               | moments, plus what it holds gathered (below)       |                                                |
| zero2-offload | b·P weights, b·L gradient staging, plus a float64  | b·P/N bit16 staging, 4·P/N + b·L gradients,    |
|               | gradient copy in backward (below)                  | 12·P/N fp32 master, momentum and variance      |
| zero3-offload | b·R reduce bucket, b·K persistent small parameters | b·P/N parameters, (4 + b)·P/N gradients,       |
|               | (N > 1), plus what it holds gathered and a float64 | 12·P/N master, momentum and variance           |
|               | gradient copy in backward (below)                  |                                                |

ZeRO-1/2 pad their flat partition to a multiple of 2·N elements; ZeRO-3 partitions every parameter on its own,
padded to ceil(numel / N), so P/N above is the sum of those. On one rank ZeRO-3 without offload gathers nothing
(its partition is the parameter). In backward ZeRO-3 holds gathered what DeepSpeed keeps from forward within its
reuse distance, the module it runs, and where forward stores its activations each layer's fused expert weights,
which autograd's saved views keep (zero3_gather.py); and a MoE block's every gradient until the block's backward
ends (RankPeak.per_gpu: at the technique's peak, or at the block's end, leaf_end.py). With the optimizer offloaded,
DeepSpeed takes each reduced gradient's norm before copying it to the host, in float64 (`get_norm_dtype`): a copy
of 8 bytes per element of the gradient's piece in this rank's partition (ZeRO-2 offload: the largest piece of a
parameter in any rank's flat partition; ZeRO-3 offload: the largest parameter's partition, in chunks of at most
250M elements). A node of G ranks holds G ranks' host bytes. ZeRO-1/2/3 on the
device have a second peak, at their step: the float32 gradient partition and AdamW's temporaries (`device_step`);
per GPU is the larger of the two. Not counted, as for DDP: DDP's own AdamW step workspace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from revbench.estimate.zero3_gather import FetchUnit, Gathering, fetch_units, gathered_in_backward, leaf_gradients
from revbench.estimate.zero_layout import SUB_GROUP_SIZE, sub_groups
from revbench.models import ModelSpec
from revbench.models.dtypes import parse_dtype
from revbench.models.zoo import build_model

if TYPE_CHECKING:
    from revbench.activations.base import Activations

SHARDED_STATES = ("adamw-ddp", "zero1", "zero2", "zero3", "zero2-offload", "zero3-offload")
ZERO2_ALIGNMENT = 2  # DeepSpeed's nccl_start_alignment_factor: ZeRO-2's flat group is padded to 2·N elements


@dataclass(frozen=True)
class ModelShape:
    """What the layout depends on: every parameter tensor's size, the buffers, the element size, and the layers."""

    numels: tuple[int, ...]
    units: tuple[FetchUnit, ...]  # what ZeRO-3 gathers at once, in forward order
    buffer_bytes: int
    element_bytes: int
    hidden: int
    dtype: torch.dtype
    recomputes: bool = False  # the activation technique's layers run forward again in backward
    holds_weight_views: bool = True  # its forward keeps views of the fused expert weights until backward

    @property
    def parameters(self) -> int:
        return sum(self.numels)

    @classmethod
    def of(cls, spec: ModelSpec, target: str, activations: Activations | None = None) -> ModelShape:
        """The shapes of `spec` built on the meta device (no memory, seconds even for 46.7B parameters), as the
        activation technique turns it into the model that trains (RevFFN adds its adapters); the plain model that
        keeps every activation without one."""
        dtype = parse_dtype(spec.dtype, target)
        model = build_model(ModelSpec(**{**spec.to_dict(), "dtype": str(dtype).removeprefix("torch.")}),
                            device="meta")
        passes = {}
        if activations is not None:
            model = activations.prepare(model)
            passes = {"recomputes": activations.recomputes, "holds_weight_views": activations.holds_weight_views}
        return cls(numels=tuple(p.numel() for p in model.parameters()), units=fetch_units(model),
                   buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
                   element_bytes=torch.finfo(dtype).bits // 8, hidden=model.config.hidden_size, dtype=dtype, **passes)


@dataclass(frozen=True)
class RankStates:
    """One rank's persistent model-state bytes, split as the measurement splits them (host parts included in
    each category), the transient bytes of gathered parameters (ZeRO-3's layer being computed), and where the
    optimizer steps on the device (ZeRO-1/2/3), the device's bytes at that step's own peak."""

    params: int
    grads: int
    optimizer: int
    host_params: int = 0
    host_grads: int = 0
    host_optimizer: int = 0
    gathered: int = 0
    leaf_grads: int = 0  # ZeRO-3: a leaf module's every gradient, held until its backward ends
    leaf_largest: int = 0  # the largest of them, the one a step's peak holds in hand
    norm_copy: int = 0  # offloaded optimizer: the float64 copy of a gradient DeepSpeed takes the norm of in backward
    step_device: int = 0  # device bytes at the device step's peak (0: not modelled, the step adds nothing there)

    @property
    def host(self) -> int:
        return self.host_params + self.host_grads + self.host_optimizer

    @property
    def device(self) -> int:
        return self.params + self.grads + self.optimizer - self.host

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "grads": self.grads, "optimizer": self.optimizer,
                "host_params": self.host_params, "host_grads": self.host_grads, "host_optimizer": self.host_optimizer,
                "gathered": self.gathered, "leaf_grads": self.leaf_grads, "leaf_largest": self.leaf_largest,
                "norm_copy": self.norm_copy,
                "step_device": self.step_device,
                "device": self.device, "host": self.host}


def zero_settings(states: str, hidden: int, dtype: torch.dtype, config: Path | None = None) -> dict[str, Any]:
    """The zero_optimization section a run of `states` uses: its DeepSpeed config (the shipped baselines one unless
    the `config` option names another), filled in by the same code as a real run (so "auto" bucket sizes come out
    alike)."""
    from revbench.states.zero import ZERO_TECHNIQUES, fill_config

    return fill_config(ZERO_TECHNIQUES[states].load_config(config), 1, dtype, hidden)["zero_optimization"]


def zero12_partition(total: int, ranks: int) -> int:
    """One rank's share of ZeRO-1/2's flat group, padded to a multiple of 2·N elements."""
    alignment = ZERO2_ALIGNMENT * ranks
    return math.ceil(total / alignment) * alignment // ranks


def zero3_partitions(shape: ModelShape, ranks: int) -> list[int]:
    return [math.ceil(n / ranks) for n in shape.numels]  # each parameter's ds_tensor


def zero3_persistent(shape: ModelShape, ranks: int, zero: dict[str, Any]) -> int:
    """Parameters under the persistence threshold stay whole on every rank; at one rank the partition is the whole
    parameter already, so nothing is held twice."""
    threshold = zero["stage3_param_persistence_threshold"]
    return sum(n for n in shape.numels if n <= threshold) if ranks > 1 else 0


def zero3_gathered(shape: ModelShape, zero: dict[str, Any]) -> int:
    """The elements ZeRO-3 holds gathered at most while backward runs (zero3_gather.py)."""
    return gathered_in_backward(shape.units, Gathering.of(zero), shape.recomputes, shape.holds_weight_views)


def adamw_steps(tensors: int, target: str) -> int:
    """torch's AdamW keeps a float32 step count per tensor it steps: on the parameter's device only for the fused
    and capturable kernels (CPU runs), else on the host where it is noise."""
    return 4 * tensors if target == "cpu" else 0


def ddp(shape: ModelShape, ranks: int, target: str, zero: dict[str, Any]) -> RankStates:
    """Every rank holds everything."""
    b, total = shape.element_bytes, shape.parameters
    return RankStates(params=b * total + shape.buffer_bytes, grads=b * total,
                      optimizer=2 * b * total + adamw_steps(len(shape.numels), target))


# The float32 temporaries torch's AdamW allocates at once over the tensors it steps together: the for-loop's
# `exp_avg_sq.sqrt() / bias_correction2_sqrt` (two, per tensor), foreach's `_foreach_sqrt` (one, over all), fused none.
ADAMW_TEMPORARIES = {"cpu": 2, "cuda": 1}  # the implementation torch takes by default on each: for-loop, foreach


def device_step(b: int, partitions: list[int], grads_alive: int, target: str) -> int:
    """The bytes a ZeRO device step adds at its peak, one master partition at a time (stage_1_and_2.py `step`,
    stage3.py `_prepare_sub_group`): the partition's gradients flattened (b per element) and made float32 (a second
    copy unless b is 4) while `grads_alive` bytes of gradients still exist; then the float32 gradient and AdamW's
    temporaries (zero_step.py replays the same on fake tensors)."""
    def one(n: int) -> int:
        flatten = grads_alive + b * n + (4 * n if b != 4 else 0)
        return max(flatten, 4 * n * (1 + ADAMW_TEMPORARIES[target]))
    return max(one(n) for n in partitions)


def zero1(shape: ModelShape, ranks: int, target: str, zero: dict[str, Any]) -> RankStates:
    b, total = shape.element_bytes, shape.parameters
    part = zero12_partition(total, ranks)
    params, optimizer = b * total + shape.buffer_bytes, 12 * part + adamw_steps(1, target)
    # bit16_groups_flat and whole gradients until the step; single_partition_of_fp32_groups and AdamW's moments
    return RankStates(params=params, grads=b * total, optimizer=optimizer,
                      step_device=params + optimizer + device_step(b, [part], b * total, target))


def zero2(shape: ModelShape, ranks: int, target: str, zero: dict[str, Any]) -> RankStates:
    b, total = shape.element_bytes, shape.parameters
    part = zero12_partition(total, ranks)
    params, optimizer = b * total + shape.buffer_bytes, 12 * part + adamw_steps(1, target)
    # grads_in_partition and the ipg bucket (released at the end of backward)
    return RankStates(params=params, grads=b * part + b * zero["reduce_bucket_size"], optimizer=optimizer,
                      step_device=params + optimizer + device_step(b, [part], b * part, target))


def leaf_fields(shape: ModelShape) -> dict[str, int]:
    block, largest = leaf_gradients(shape.units)
    b = shape.element_bytes
    return {"leaf_grads": b * block, "leaf_largest": b * largest}


def zero3(shape: ModelShape, ranks: int, target: str, zero: dict[str, Any]) -> RankStates:
    b = shape.element_bytes
    partitions = zero3_partitions(shape, ranks)
    part = sum(partitions)
    groups = sub_groups(partitions, int(zero.get("sub_group_size", SUB_GROUP_SIZE)))
    # the partitions, grad_partitions_flat_buffer and the ipg bucket, fp32_partitioned_groups_flat and the moments
    states = RankStates(params=b * part + b * zero3_persistent(shape, ranks, zero) + shape.buffer_bytes,
                        grads=b * part + b * zero["reduce_bucket_size"],
                        optimizer=12 * part + adamw_steps(len(groups), target),
                        gathered=b * zero3_gathered(shape, zero) if ranks > 1 else 0, **leaf_fields(shape))
    return replace(states, step_device=states.device + device_step(b, groups, 0, target))


NORM_BYTES = 8  # DeepSpeed's `get_norm_dtype()`: float64 wherever the accelerator has it (CUDA and CPU)
NORM_CHUNK = 250_000_000  # stage3.py `_constant_buffered_norm2`: the elements it converts at once


def zero12_largest_piece(numels: tuple[int, ...], ranks: int) -> int:
    """The most elements of one parameter that fall in one rank's share of ZeRO-1/2's flat group."""
    part, start, largest = zero12_partition(sum(numels), ranks), 0, 0
    for n in numels:
        first, last = start // part, (start + n - 1) // part  # the ranks whose share the parameter spans
        for rank in range(first, last + 1):
            largest = max(largest, min(start + n, (rank + 1) * part) - max(start, rank * part))
        start += n
    return largest


def zero2_offload(shape: ModelShape, ranks: int, target: str, zero: dict[str, Any]) -> RankStates:
    b, total, largest = shape.element_bytes, shape.parameters, max(shape.numels)
    part = zero12_partition(total, ranks)
    host_params = b * part  # param_buffer_of_bit16_for_cpu_offload_groups
    host_grads = 4 * part + b * largest  # the fp32 partition's grad, temp_grad_buffer_for_cpu_offload
    host_optimizer = 12 * part  # single_partition_of_fp32_groups and Adam's exp_avg, exp_avg_sq
    device_grads = b * largest  # temp_grad_buffer_for_gpu_offload
    return RankStates(params=b * total + shape.buffer_bytes + host_params, grads=device_grads + host_grads,
                      optimizer=host_optimizer, host_params=host_params, host_grads=host_grads,
                      host_optimizer=host_optimizer,
                      norm_copy=NORM_BYTES * zero12_largest_piece(shape.numels, ranks))  # set_norm_for_param_grad


def zero3_offload(shape: ModelShape, ranks: int, target: str, zero: dict[str, Any]) -> RankStates:
    b = shape.element_bytes
    partitions = zero3_partitions(shape, ranks)
    part = sum(partitions)
    host_params = b * part  # the offloaded parameter partitions
    host_grads = (4 + b) * part  # the fp32 partition's grad, grad_partitions_flat_buffer
    host_optimizer = 12 * part  # fp32_partitioned_groups_flat and Adam's exp_avg, exp_avg_sq
    device_grads = b * zero["reduce_bucket_size"]  # the ipg bucket's flat buffer
    return RankStates(params=host_params + b * zero3_persistent(shape, ranks, zero) + shape.buffer_bytes,
                      grads=device_grads + host_grads, optimizer=host_optimizer, host_params=host_params,
                      host_grads=host_grads, host_optimizer=host_optimizer, gathered=b * zero3_gathered(shape, zero),
                      **leaf_fields(shape),
                      norm_copy=NORM_BYTES * min(max(partitions), NORM_CHUNK))  # _offload_grad_partition_at_boundary


LAYOUTS = {"adamw-ddp": ddp, "zero1": zero1, "zero2": zero2, "zero3": zero3, "zero2-offload": zero2_offload,
           "zero3-offload": zero3_offload}


def rank_states(states: str, shape: ModelShape, ranks: int, target: str = "cuda", config: Path | None = None
                ) -> RankStates:
    """One rank's model-state bytes when `states` runs over `ranks` ranks (ZeRO: with the DeepSpeed `config` a run
    of it would use, its shipped one by default)."""
    if states not in LAYOUTS:
        raise ValueError(f"{states!r} does not shard over ranks; the data-parallel states are {', '.join(LAYOUTS)}")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    zero = zero_settings(states, shape.hidden, shape.dtype, config) if states.startswith("zero") else {}
    return LAYOUTS[states](shape, ranks, target, zero)


@dataclass(frozen=True)
class RankPeak:
    """A composition's figures per GPU at N ranks: persistent device states, plus the activation technique's
    transient bytes at the per-rank batch (and what ZeRO-3 holds gathered, and its MoE blocks' gradients); host bytes
    per node of G ranks."""

    method: str
    ranks: int
    rank_batch: int
    states: RankStates
    transient: int | None  # None: the activation technique could not be estimated
    ranks_per_node: int
    at_leaf_end: int | None = None  # the technique's bytes when a MoE block's backward ends (leaf_end.py)

    @property
    def per_gpu(self) -> int | None:
        """The larger of backward's peak and the device step's. ZeRO-3's backward has two moments: the technique's
        own peak, with the block's other gradients beside the one in hand, and the block's end, where all of them
        are reduced (their norms taken, optimizer offloaded) and the block's saved tensors are gone. Without ZeRO-3,
        or where the technique's peak holds a block's gradients together (at_leaf_end None), one moment."""
        if self.transient is None:
            return None
        states = self.states
        at_peak = states.device + states.gathered + self.transient + states.leaf_grads - states.leaf_largest
        if self.at_leaf_end is None:  # no ZeRO-3, or a technique whose peak holds a block's gradients together
            backward = at_peak + states.norm_copy
        else:
            backward = max(at_peak, states.device + states.gathered + self.at_leaf_end + states.leaf_grads
                           + states.norm_copy)
        return max(backward, states.step_device)

    @property
    def host_per_node(self) -> int:
        return self.states.host * min(self.ranks, self.ranks_per_node)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ranks": self.ranks, "rank_batch": self.rank_batch,
                "states": self.states.to_dict(), "transient": self.transient, "at_leaf_end": self.at_leaf_end,
                "per_gpu": self.per_gpu, "host_per_node": self.host_per_node, "ranks_per_node": self.ranks_per_node}


def smallest_ranks(fits: Callable[[int], bool], cap: int = 4096) -> int | None:
    """The smallest N <= cap with fits(N), doubling then bisecting: per-GPU bytes, and a node's host bytes,
    only fall as N grows (None: not even at cap)."""
    low, high = 0, 1
    while not fits(high):
        if high >= cap:
            return None
        low, high = high, min(2 * high, cap)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high
