"""Run a method's real training step on fake tensors and measure its peak bytes: no memory is allocated.

The Method itself is built and stepped under `FakeTensorMode`, so the estimate is of the very code that
`revbench run` measures. As in the harness, a warm-up step comes first (it creates the AdamW state) and
the second step is measured, with the batch created inside the window as the harness's data stream does.
Fake tensors carry shapes, dtypes and strides but no values, so only shape-determined allocations exist;
that is every allocation of a grouped_mm MoE step (the eager experts loop is data-dependent and fails).

What the storage tracker cannot see, here as in a real run, is memory allocated without dispatching an op:
Python scalars wrapped into 0-dim tensors (a few bytes), the RNG states that checkpointing saves with
`torch.get_rng_state()` (5,056 bytes each on CPU, host memory on CUDA) and kernels' internal workspaces.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from revbench.estimate.meta_build import fake_method_from_meta
from revbench.estimate.zero_step import zero_step
from revbench.measure.categories import TensorBytes
from revbench.measure.storage_tracker import measure_peak_bytes_tracked
from revbench.methods import Method, TrainSpec, create_method, method_class
from revbench.methods.deepspeed_zero import DeepSpeedZero
from revbench.methods.lora import Lora
from revbench.models.zoo import parse_dtype

TARGETS = ("cuda", "cpu")


class GroupedMMAnyDtype(TorchDispatchMode):
    """Shape rule for `aten._grouped_mm` on non-bf16 fake tensors.

    torch's meta kernel accepts bf16 only (it mirrors the CUDA kernel), while the CPU kernel that a real
    float32 run uses takes any float dtype and returns a fresh contiguous tensor of the same shape.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not torch.ops.aten._grouped_mm.default or args[0].dtype == torch.bfloat16:
            return func(*args, **kwargs)
        mat_a, mat_b = args[0], args[1]
        offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
        if mat_a.dim() == 2 and mat_b.dim() == 2:
            shape = (offs.size(0), mat_a.size(0), mat_b.size(1))
        elif mat_a.dim() == 2:
            shape = (mat_a.size(0), mat_b.size(-1))
        elif mat_b.dim() == 2:
            shape = (mat_a.size(1), mat_b.size(1))
        else:
            shape = (mat_a.size(0), mat_a.size(1), mat_b.size(-1))
        out_dtype = kwargs.get("out_dtype") or (args[4] if len(args) > 4 and args[4] is not None else mat_a.dtype)
        out = torch.empty(shape, dtype=out_dtype, device=mat_a.device)
        bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
        if bias is not None:
            out.add_(bias)
        return out


@contextlib.contextmanager
def unpacked_sequences() -> Iterator[None]:
    """Take transformers' mask path of a real run: the sequences are not packed.

    Transformers reads the position ids to detect packed sequences and, when there are none, lets SDPA apply
    causality itself (no mask tensor, no K/V repeat for GQA). Fake tensors have no values to read, so it
    would assume packing and build an explicit mask. revbench's batches are never packed and its methods
    pass no attention mask, so the real run's answer is known: no packing.
    """
    from transformers import masking_utils

    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:  # a transformers without packed-sequence detection builds no mask for it
        yield
        return

    def find_packed_sequence_indices(position_ids: torch.Tensor) -> torch.Tensor | None:
        return None if isinstance(position_ids, FakeTensor) else original(position_ids)

    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@dataclass
class Estimate:
    """One method's estimated peak, or why there is none. `tensor_bytes` is what the device holds at its peak;
    `host_bytes` what the method keeps in host memory (DeepSpeed offload), None where it keeps nothing there."""

    method: str
    status: str  # "ok", "not estimable" or "error"
    tensor_bytes: TensorBytes | None = None
    reason: str | None = None
    seconds: float = 0.0
    parameters: int | None = None  # the model's parameter count, trainable or not
    host_bytes: TensorBytes | None = None

    @property
    def peak_bytes(self) -> int | None:
        """The device peak."""
        return self.tensor_bytes.total if self.tensor_bytes else None

    @property
    def host_peak_bytes(self) -> int | None:
        if self.tensor_bytes is None:
            return None
        return self.host_bytes.total if self.host_bytes else 0

    def to_dict(self) -> dict[str, Any]:
        categories = {k: v for k, v in self.tensor_bytes.to_dict().items() if k not in ("method", "total")} \
            if self.tensor_bytes else {}
        return {"method": self.method, "status": self.status, "peak_bytes": self.peak_bytes,
                "host_peak_bytes": self.host_peak_bytes, **categories, "parameters": self.parameters,
                "reason": self.reason, "seconds": round(self.seconds, 2)}


def target_spec(spec: TrainSpec, target: str) -> TrainSpec:
    """The spec the fake step runs: on the CPU device, with the target device's dtype for "auto".

    Fake tensors run on the CPU device on every torch build. A CPU-only torch does create fake CUDA tensors,
    and matmuls on them work, but SDPA's composite path then aborts the whole process ("PyTorch is not
    linked with support for cuda devices"). Tensor byte counts do not depend on the device up to allocator
    rounding; what does depend on it is resolved here (the dtype) and in `pin_device_defaults` (AdamW).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown estimate target {target!r}; choose one of {', '.join(TARGETS)}")
    dtype = str(parse_dtype(spec.model.dtype, target)).removeprefix("torch.")
    return replace(spec, device="cpu", model=replace(spec.model, dtype=dtype))


def pin_device_defaults(method: Method, target: str) -> None:
    """Make the step take the path torch takes on `target` where that changes the bytes.

    AdamW picks its implementation by the parameters' device: one tensor at a time on CPU, the multi-tensor
    (foreach) path on CUDA, whose sqrt temporary is as large as all the parameters of one dtype together.
    """
    if target != "cuda" or not isinstance(method.optimizer, torch.optim.Optimizer):
        return
    for group in method.optimizer.param_groups:
        if group.get("foreach") is None and not group.get("fused"):
            group["foreach"] = True


def _shim(spec: TrainSpec) -> contextlib.AbstractContextManager:
    """The grouped_mm shim costs a Python call per op; bf16 runs take torch's own meta kernel."""
    return GroupedMMAnyDtype() if parse_dtype(spec.model.dtype) != torch.bfloat16 else contextlib.nullcontext()


def _fake_step(name: str, spec: TrainSpec, target: str) -> tuple[TensorBytes, int]:
    shape = (spec.workload.batch, spec.workload.seq)
    mode = FakeTensorMode()
    # PEFT cannot build on fake tensors: it builds on the meta device, whose tensors then become fake.
    method = fake_method_from_meta(name, spec, mode) if issubclass(method_class(name), Lora) else None
    with unpacked_sequences(), mode, _shim(spec):
        if method is None:
            method = create_method(name, spec)
            method.prepare()
        parameters = sum(p.numel() for p in method.model.parameters())
        pin_device_defaults(method, target)
        method.zero_grad()
        method.train_step(torch.zeros(shape, dtype=torch.long))  # warm-up: creates the optimizer state
        method.zero_grad()
        _, tensor_bytes = measure_peak_bytes_tracked(
            lambda: method.train_step(torch.zeros(shape, dtype=torch.long)), method.state_tensors)
        method.teardown()
    return replace(tensor_bytes, method=f"fake-tensor estimate ({target})"), parameters


def _describe(exc: BaseException) -> str:
    """The error and its causes, one line each joined: torch often wraps the telling one."""
    parts = []
    while exc is not None and len(parts) < 3:
        lines = str(exc).strip().splitlines()
        parts.append(f"{type(exc).__name__}: {lines[0] if lines else ''}")
        exc = exc.__cause__
    return "; caused by ".join(parts)


def estimate_method(name: str, spec: TrainSpec, target: str = "cuda") -> Estimate:
    """Estimate the peak tensor bytes of one measured step of `name` on `spec` for device kind `target`."""
    start = time.perf_counter()
    host_bytes = None
    try:
        cls = method_class(name)
        if issubclass(cls, DeepSpeedZero):
            spec = target_spec(spec, target)
            with unpacked_sequences():
                tensor_bytes, host_bytes, parameters = zero_step(name, spec, _shim(spec))
        elif cls.not_estimable and not issubclass(cls, Lora):
            return Estimate(name, "not estimable", reason=cls.not_estimable)
        else:
            tensor_bytes, parameters = _fake_step(name, target_spec(spec, target), target)
    except (ImportError, RuntimeError, NotImplementedError, TypeError, AssertionError) as exc:
        # A method that is not installed or cannot run on fake tensors says why; a bad spec (ValueError)
        # still propagates.
        return Estimate(name, "error", reason=_describe(exc), seconds=time.perf_counter() - start)
    return Estimate(name, "ok", tensor_bytes=tensor_bytes, seconds=time.perf_counter() - start,
                    parameters=parameters, host_bytes=host_bytes)
