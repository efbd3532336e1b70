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
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pandas as pd
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from revbench.estimate.depth import TRACED
from revbench.estimate.fake_group import fake_world
from revbench.estimate.layouts import use_layout
from revbench.estimate.meta_build import fake_method_from_meta
from revbench.measure.categories import TensorBytes
from revbench.measure.storage_tracker import measure_phase_peaks_tracked
from revbench.measure.timeline import measure_timeline_tracked
from revbench.methods import create_method, parse_method
from revbench.methods.resolve import resolve_method
from revbench.models.dtypes import parse_dtype
from revbench.spec import TrainSpec

TARGETS = ("cuda", "cpu")
FAKE_WORLD_STATES = ("fsdp2", "fsdp2-offload")  # they shard over a process group: a fake one here


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


def target_spec(name: str, spec: TrainSpec, target: str) -> TrainSpec:
    """The spec the fake step runs: resolved for the target device as a run there would be (its dtype and AdamW
    kernel for "auto"), then on the CPU device.

    Fake tensors run on the CPU device on every torch build. A CPU-only torch does create fake CUDA tensors,
    and matmuls on them work, but SDPA's composite path then aborts the whole process ("PyTorch is not
    linked with support for cuda devices"). Tensor byte counts do not depend on the device up to allocator
    rounding; what does depend on it is resolved for the target: the dtype, and AdamW's implementation (torch takes
    the multi-tensor foreach path on CUDA, whose sqrt temporary is as large as all the parameters of one dtype).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown estimate target {target!r}; choose one of {', '.join(TARGETS)}")
    return replace(resolve_method(name, replace(spec, device=target)).spec, device="cpu")


def shim_for(spec: TrainSpec) -> contextlib.AbstractContextManager:
    """The grouped_mm shim costs a Python call per op; bf16 runs take torch's own meta kernel."""
    return GroupedMMAnyDtype() if parse_dtype(spec.model.dtype) != torch.bfloat16 else contextlib.nullcontext()


class MethodStep:
    """A method prepared once on fake tensors and warmed up (its optimizer state exists), then stepped at any
    batch and sequence length: the model states do not depend on them, so one build serves every probe."""

    how, depths, note = TRACED, (), None  # at the depth it was built with

    def __init__(self, name: str, spec: TrainSpec, target: str, ranks: int = 1) -> None:
        self.spec = target_spec(name, spec, target)
        self.sharded, self.ranks = parse_method(name).states in FAKE_WORLD_STATES, ranks
        if ranks > 1 and not self.sharded:
            raise ValueError(f"{name!r} does not shard over a process group: its fake step runs on one rank")
        self.mode = FakeTensorMode()
        self.shim = shim_for(self.spec)
        # PEFT cannot build on fake tensors: it builds on the meta device, whose tensors then become fake.
        lora = parse_method(name).states == "lora"
        method = fake_method_from_meta(name, self.spec, self.mode) if lora else None
        with self.context():
            if method is None:
                method = create_method(name, self.spec)
                use_layout(method)
                method.prepare()
            self.method = method
            self.parameters = sum(p.numel() for p in method.model.parameters())
            self.method.zero_grad()
            self.train(self.spec.workload.batch, self.spec.workload.seq)  # warm-up: creates the optimizer state
        self.label = f"fake-tensor estimate ({target})"
        self.host: TensorBytes | None = None  # these methods keep nothing in host memory

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Where the method's fake tensors may be stepped."""
        with fake_world(self.ranks) if self.sharded else contextlib.nullcontext(), unpacked_sequences(), \
                self.mode, self.shim:
            yield

    def train(self, batch: int, seq: int) -> Any:
        """One step, its batch created inside (as the harness's data stream does); call under context()."""
        return self.method.train_step(torch.zeros((batch, seq), dtype=torch.long))

    def phase_peaks(self, batch: int, seq: int) -> dict[str | None, TensorBytes]:
        """Each step phase's own peak bytes in one step after the warm-up, in the order the phases ran."""
        with self.context():
            self.method.zero_grad()
            _, peaks = measure_phase_peaks_tracked(lambda: self.train(batch, seq), self.method.state_tensors)
        return {phase: replace(b, method=self.label) for phase, b in peaks.items()}

    def timeline(self, batch: int, seq: int) -> pd.DataFrame:
        """Live bytes at every allocation and free of one step after the warm-up (measure/timeline.py)."""
        with self.context():
            self.method.zero_grad()
            return measure_timeline_tracked(lambda: self.train(batch, seq), self.method.state_tensors)[2]
