"""Where DeepSpeed ZeRO keeps its buffers, and how large they are: a model of its memory layout.

DeepSpeed cannot run on fake tensors (its optimizers read values, its offload runs a compiled CPU Adam on pinned
host buffers), so its model states are computed from the code of DeepSpeed 0.19.8 instead, for one process
(world size 1, so a rank's partition is the whole flat group). Each figure names its attribute:

ZeRO-2 (`runtime/zero/stage_1_and_2.py`, `cpu_offload`):
  device  `bit16_groups_flat`: the trainable low-precision weights in one flat buffer, padded to a multiple of
          `nccl_start_alignment_factor * world size` = 2 elements; the model's parameters are views into it.
          `temp_grad_buffer_for_gpu_offload`: as large as the largest trainable parameter, low precision.
          The ipg bucket (`setup_buckets`): `reduce_bucket_size` elements, two with `overlap_comm`, from the
          start of backward to the end of the step.
  host    `single_partition_of_fp32_groups` (fp32 master) and its `.grad` (fp32), the staging copy
          `param_buffer_of_bit16_for_cpu_offload_groups` (low precision), `temp_grad_buffer_for_cpu_offload`
          (largest parameter, low precision), and CPU Adam's two fp32 moments.
ZeRO-3 (`stage3.py` and `partition_parameters.py`, `offload_param` and `offload_optimizer` on the CPU):
  device  the persistent parameters (numel <= `stage3_param_persistence_threshold`) stay whole on the device;
          the ipg bucket buffer (`reduce_bucket_size`, low precision); and the gathered working set of the
          other parameters, which is transient and bounded by `stage3_max_live_parameters`.
  host    `param_groups_fp16_flat_cpu_memory` (the low-precision partitions), `fp32_partitioned_groups_flat`
          (fp32 master) with one fp32 gradient buffer per sub-group, `grad_partitions_flat_buffer`
          (gradient-accumulation dtype: the model dtype unless the config sets `data_types.grad_accum_dtype`),
          and CPU Adam's two fp32 moments.
Without offload (`zero1`, `zero2`, `zero3`) the float32 master partitions (`single_partition_of_fp32_groups`,
ZeRO-3's `fp32_partitioned_groups_flat`, one per sub-group of `sub_group_size` elements) are on the device with
torch's AdamW; their bytes, the moments' and the step's transients come from torch's own AdamW run on fake
masters (zero_step.py), so the layout's optimizer bytes are 0 there. ZeRO-1 and -2 keep `bit16_groups_flat`
and the ipg bucket from the start of backward to its end (ZeRO-2's gradient partition, `grads_in_partition`,
lives from the first reduce to the step and is replayed); ZeRO-3 its parameter partitions,
`grad_partitions_flat_buffer` and the ipg bucket.
Buffers (rotary frequencies) stay on the device. Frozen parameters stay ordinary device parameters under
ZeRO-1 and -2 and are partitioned like the others under ZeRO-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from revbench.measure.categories import TensorBytes

FP32 = 4
ADAM_MOMENTS = 2  # DeepSpeedCPUAdam keeps exp_avg and exp_avg_sq in fp32 for every master element
ALIGNMENT = 2  # stage_1_and_2: nccl_start_alignment_factor (2) * world size (1)
# DeepSpeed's defaults for the ZeRO-3 keys revbench's configs leave unset (runtime/zero/config.py).
MAX_LIVE_PARAMETERS = 10**9
SUB_GROUP_SIZE = 10**9


@dataclass(frozen=True)
class ParamLayout:
    """What DeepSpeed sees of a model: its parameters' sizes and dtypes. Built from any model, fake or real."""

    trainable: tuple[int, ...]  # numel of each trainable parameter, in model order
    frozen_bytes: int  # parameters that are not trained
    buffer_bytes: int
    dtype: torch.dtype  # the low-precision (model) dtype
    modules: tuple[tuple[int, ...], ...] = ()  # numel of each module's own parameters: ZeRO-3 gathers by module

    @classmethod
    def of(cls, model: torch.nn.Module) -> ParamLayout:
        params = list(model.parameters())
        modules = tuple(own for m in model.modules() if (own := tuple(p.numel() for p in m.parameters(recurse=False))))
        return cls(trainable=tuple(p.numel() for p in params if p.requires_grad),
                   frozen_bytes=sum(p.numel() * p.element_size() for p in params if not p.requires_grad),
                   buffer_bytes=sum(b.untyped_storage().nbytes() for b in model.buffers()),
                   dtype=params[0].dtype, modules=modules)

    @property
    def lp(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def largest(self) -> int:
        return max(self.trainable)


@dataclass(frozen=True)
class ZeroLayout:
    """DeepSpeed's model states, split by where they live. `device` and `host` hold params, grads and
    optimizer bytes (activations 0); `gathered` is ZeRO-3's transient working set of whole parameters."""

    device: TensorBytes
    host: TensorBytes
    gathered: int = 0
    workspace: int = 0  # transient device bytes of handing one gradient to the host (ZeRO-2)
    backward_only: int = 0  # device gradient bytes released at the end of backward (ZeRO-2's bucket, no offload)


def bucket_bytes(zero: dict[str, Any], lp: int) -> int:
    return int(zero["reduce_bucket_size"]) * lp * (2 if zero.get("overlap_comm") else 1)


def flat_elements(params: ParamLayout) -> int:
    """ZeRO-1/2's flat group of the trainable parameters, padded for alignment."""
    return math.ceil(sum(params.trainable) / ALIGNMENT) * ALIGNMENT


def sub_groups(numels: list[int] | tuple[int, ...], size: int) -> list[int]:
    """ZeRO-3's optimizer sub-groups, in elements: each closed once it holds `size` elements (stage3.py
    `_create_fp16_sub_groups`)."""
    groups, current = [], 0
    for n in numels:
        current += n
        if current >= size:
            groups.append(current)
            current = 0
    return [*groups, current] if current else groups


def master_partitions(stage: int, params: ParamLayout, zero: dict[str, Any]) -> list[int]:
    """The elements of each float32 master partition: ZeRO-1/2's one flat group, ZeRO-3's sub-groups."""
    if stage < 3:
        return [flat_elements(params)]
    return sub_groups(params.trainable, int(zero.get("sub_group_size", SUB_GROUP_SIZE)))


def zero12_layout(params: ParamLayout, zero: dict[str, Any], stage: int) -> ZeroLayout:
    bucket = bucket_bytes(zero, params.lp) if zero.get("contiguous_gradients", True) else 0
    device = TensorBytes(params=flat_elements(params) * params.lp + params.frozen_bytes + params.buffer_bytes,
                         grads=bucket, optimizer=0, activations=0, method=f"zero{stage} device")
    # `_release_ipg_buffers` clears the bucket at the end of backward: the device step does not hold it.
    return ZeroLayout(device, TensorBytes(0, 0, 0, 0, method=f"zero{stage} host"), backward_only=bucket)


def zero2_layout(params: ParamLayout, zero: dict[str, Any]) -> ZeroLayout:
    lp = params.lp
    flat = flat_elements(params)
    bucket = bucket_bytes(zero, lp) if zero.get("contiguous_gradients", True) else 0
    device = TensorBytes(params=flat * lp + params.frozen_bytes + params.buffer_bytes,
                         grads=params.largest * lp + bucket, optimizer=0, activations=0, method="zero2 device")
    host = TensorBytes(params=flat * lp, grads=flat * FP32 + params.largest * lp,
                       optimizer=flat * FP32 * (1 + ADAM_MOMENTS), activations=0, method="zero2 host")
    # `copy_grads_in_partition` takes each reduced gradient's norm in float32 and checks it for overflow before
    # copying it to the host partition: temporaries of up to one float32 copy of the largest gradient.
    return ZeroLayout(device, host, workspace=params.largest * FP32)


def zero3_layout(params: ParamLayout, zero: dict[str, Any], offload: bool = True,
                 grad_accum_dtype: torch.dtype | None = None) -> ZeroLayout:
    lp = params.lp
    accum = torch.empty((), dtype=grad_accum_dtype or params.dtype).element_size()
    total = sum(params.trainable)
    threshold = int(zero.get("stage3_param_persistence_threshold", 10**5))
    persistent = sum(n for n in params.trainable if n <= threshold)
    bucket = bucket_bytes(zero, lp)
    # Whole parameters are gathered module by module, for the module's forward or backward, plus what the
    # prefetcher fetches ahead (up to `stage3_prefetch_bucket_size` elements), and released after use.
    own = max(sum(n for n in module if n > threshold) for module in params.modules)
    prefetch = int(zero.get("stage3_prefetch_bucket_size", 0))
    live = int(zero.get("stage3_max_live_parameters", MAX_LIVE_PARAMETERS))
    gathered = min(total - persistent, own + min(prefetch, live)) * lp
    if not offload:
        # Partitions and gradient partitions on the device (masters and moments: see the docstring). On one rank a
        # partition on the device is its whole parameter, and fetching it gathers nothing (`NoGatherHandle`).
        device = TensorBytes(params=total * lp + params.frozen_bytes + params.buffer_bytes,
                             grads=total * accum + bucket, optimizer=0, activations=0, method="zero3 device")
        return ZeroLayout(device, TensorBytes(0, 0, 0, 0, method="zero3 host"))
    device = TensorBytes(params=persistent * lp + params.buffer_bytes, grads=bucket,
                         optimizer=0, activations=0, method="zero3 device")
    host = TensorBytes(params=total * lp + params.frozen_bytes, grads=total * (FP32 + accum),
                       optimizer=total * FP32 * (1 + ADAM_MOMENTS),
                       activations=0, method="zero3 host")
    return ZeroLayout(device, host, gathered=gathered)


def zero_layout(stage: int, offload: bool, params: ParamLayout, zero: dict[str, Any]) -> ZeroLayout:
    """The layout of ZeRO `stage`, with the optimizer (and for ZeRO-3 the parameters) offloaded or not."""
    if stage == 3:
        return zero3_layout(params, zero, offload)
    if not offload:
        return zero12_layout(params, zero, stage)
    if stage == 2:
        return zero2_layout(params, zero)
    raise ValueError(f"no memory layout for ZeRO-{stage} with offload; revbench offloads stages 2 and 3")
