"""Run one method for a number of steps and measure it: losses, exact bytes, allocator, NVML, host, timing.

Step order: `warmup` steps (the first creates the optimizer state), one profiled step for exact tensor
bytes (by category, host-resident part, and the phase of the peak), then `steps` timed steps under the
samplers. Losses of every step are kept, in order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from revbench.data import TokenStream
from revbench.measure import cuda_allocator
from revbench.measure.categories import TensorBytes
from revbench.measure.host import HostMemory
from revbench.measure.nvml import NvmlMemory
from revbench.measure.profiler_bytes import ProfiledStep
from revbench.measure.timeline import compact
from revbench.measure.timing import StepTimer, step_stats
from revbench.methods import create_method
from revbench.methods.method import Method
from revbench.ranks import rank_batch
from revbench.spec import TrainSpec

Progress = Callable[[str, int, int], None]  # (phase, step done, steps in all)


class BudgetExceededError(torch.OutOfMemoryError):
    """The CPU memory budget: raised like a CUDA OOM so that both take the same path."""


class DivergedError(RuntimeError):
    pass


@dataclass
class RunResult:
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    method_stats: dict[str, Any] = field(default_factory=dict)


def run_method(
    method_name: str,
    spec: TrainSpec,
    steps: int = 3,
    warmup: int = 1,
    budget_bytes: int | None = None,
    progress: Progress | None = None,
    result: RunResult | None = None,
) -> RunResult:
    """Train `method_name` on `spec` and measure it. `result` is filled in as it goes, so a caller that
    catches an error still has every loss measured before it."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1: the first step creates the optimizer state and is not measured")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    result = result if result is not None else RunResult()
    device = torch.device(spec.device)
    method = create_method(method_name, spec)
    method.prebuild()  # e.g. DeepSpeed's op compiler must not run inside the host-memory window
    host = HostMemory()
    try:
        with host:
            tensor_bytes, missed_frees, timeline, timer, nvml = _train_and_measure(
                method, spec, steps, warmup, budget_bytes, progress, result)
        result.metrics = {
            **step_stats(timer.seconds, spec.workload.batch, spec.workload.tokens_per_step),
            "step_seconds": timer.seconds,  # each timed step, so a multi-rank run can take the slowest rank's
            "memory": {
                "tensor_bytes": tensor_bytes.to_dict(),
                "profiler_missed_frees": missed_frees,  # put back by the replay (measure/profiler_bytes.py)
                "cuda_allocator": cuda_allocator.allocator_peaks(device),
                "nvml": nvml.result(),
                "host": host.result(),
                "timeline": timeline,
            },
        }
        result.method_stats = method.stats()
    finally:
        method.teardown()  # a failed step must not leave e.g. a DeepSpeed engine and process group behind
    return result



def _train_and_measure(method: Method, spec: TrainSpec, steps: int, warmup: int, budget_bytes: int | None,
                       progress: Progress | None, result: RunResult
                       ) -> tuple[TensorBytes, int, dict[str, Any], StepTimer, NvmlMemory]:
    total = warmup + 1 + steps
    device = torch.device(spec.device)
    method.prepare()
    stream = TokenStream(spec.workload, method.vocab_size)

    def run_step(index: int) -> float:
        loss = float(method.train_step(rank_batch(stream.batch(index))))  # this rank's rows of the global batch
        result.losses.append(loss)
        if not math.isfinite(loss):
            raise DivergedError(f"loss is {loss} at step {index}")
        if progress:
            progress("train", index + 1, total)
        return loss

    for index in range(warmup):
        method.zero_grad()
        run_step(index)
    cuda_allocator.reset_peaks(device)
    method.zero_grad()  # outside the window: the profiler cannot see frees of earlier allocations
    step = ProfiledStep.run(lambda: run_step(warmup), method.state_tensors, device)
    tensor_bytes, missed_frees = step.peak(), step.missed_frees
    start = time.perf_counter()
    timeline = compact(step.timeline())  # the measured step's live bytes, event by event
    timeline["seconds"] = round(time.perf_counter() - start, 4)  # what drawing it from the events cost
    del step
    if budget_bytes is not None and tensor_bytes.total > budget_bytes:
        raise BudgetExceededError(
            f"peak tensor bytes {tensor_bytes.total:,} exceed the memory budget of {budget_bytes:,} bytes")
    timer = StepTimer(device)
    with NvmlMemory(device) as nvml:
        for index in range(warmup + 1, total):
            method.zero_grad()
            with timer:
                run_step(index)
    return tensor_bytes, missed_frees, timeline, timer, nvml
