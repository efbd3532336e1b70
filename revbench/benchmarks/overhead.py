"""`revbench bench overhead`: what the harness's memory samplers cost in step time, on one model.

The harness samples host RSS (psutil, the whole process tree) and, on CUDA, NVML's device and per-process
used bytes, each on its own thread every 10 ms, while the timed steps run. This benchmark trains one method
and times its steps in alternating blocks with the samplers off and on (ABAB..., so drift and thermal or
load changes fall on both), then prints the median step time of each and their ratio. The goal is < 2 %.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("overhead", help="step time with the NVML and host memory samplers on and off")
    parser.add_argument("--method", default="standard", help="the method whose train_step is timed")
    parser.add_argument("--model", default="tiny-qwen2-moe", help="model preset")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:N]")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per mode, alternating off/on")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--interval", type=float, default=0.01, help="sampling interval in seconds (harness: 0.01)")
    parser.set_defaults(handler=handle)


def samplers(device: Any, interval_s: float) -> ExitStack:
    """The harness's samplers, started: host RSS of the process tree, and NVML on CUDA."""
    from revbench.measure.host import HostMemory
    from revbench.measure.nvml import NvmlMemory

    stack = ExitStack()
    stack.enter_context(HostMemory(interval_s))
    stack.enter_context(NvmlMemory(device, interval_s))
    return stack


def sample_readers(device: str) -> list[tuple[str, Callable[[], object]]]:
    """What each sampler reads per sample, to time one sample alone."""
    import psutil

    from revbench.measure.host import TreeRss

    tree = TreeRss()
    readers: list[tuple[str, Callable[[], object]]] = [
        ("host RSS of the process tree (a sample)", tree),
        ("psutil listing the tree (every 0.5 s)", lambda: psutil.Process().children(recursive=True)),
    ]
    if device.startswith("cuda"):
        import pynvml
        import torch

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.device(device).index or 0)
        readers.append(("NVML device used", lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used))
        readers.append(("NVML per-process used", lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle)))
    return readers


def sample_cost(read: Callable[[], object], repeats: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        read()
    return (time.perf_counter() - start) / repeats


def handle(args: argparse.Namespace) -> int:
    import torch

    from revbench.data import TokenStream
    from revbench.measure.nvml import NvmlMemory
    from revbench.measure.timing import StepTimer
    from revbench.methods import create_method
    from revbench.models import ModelSpec
    from revbench.spec import TrainSpec
    from revbench.workload import Workload

    if min(args.blocks, args.steps, args.layers) < 1 or args.interval <= 0:
        raise ValueError("--blocks, --steps and --layers must be >= 1 and --interval > 0")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    spec = TrainSpec(model=ModelSpec(args.model, layers=args.layers), seed=0, device=device,
                     workload=Workload(batch=args.batch, seq=args.seq))
    method = create_method(args.method, spec)
    method.prepare()
    stream = TokenStream(spec.workload, method.vocab_size)
    step = 0

    def timed_block(timer: StepTimer) -> None:
        nonlocal step
        for _ in range(args.steps):
            method.zero_grad()
            with timer:
                method.train_step(stream.batch(step))
            step += 1

    try:
        for _ in range(2):  # warm-up: optimizer state, allocator, kernels
            timed_block(StepTimer(device))
        off, on = StepTimer(device), StepTimer(device)
        for _ in range(args.blocks):
            timed_block(off)
            with samplers(device, args.interval):
                timed_block(on)
    finally:
        method.teardown()
    with NvmlMemory(device) as probe:
        nvml = "on" if probe.reason is None else f"off ({probe.reason})"
    median_off, median_on = statistics.median(off.seconds), statistics.median(on.seconds)
    print(f"Harness overhead: {args.method} on {args.model} L{args.layers}, batch {args.batch} x seq {args.seq}, "
          f"{device}; {args.blocks} blocks of {args.steps} steps per mode, alternating; samplers every "
          f"{args.interval * 1000:g} ms: host RSS on, NVML {nvml}")
    for name, seconds in (("samplers off", off.seconds), ("samplers on", on.seconds)):
        ordered = sorted(seconds)
        print(f"  {name:<13} median {statistics.median(ordered) * 1000:8.2f} ms  "
              f"p10 {ordered[len(ordered) // 10] * 1000:8.2f} ms  p90 {ordered[len(ordered) * 9 // 10] * 1000:8.2f} ms")
    for name, read in sample_readers(device):
        print(f"  one sample, {name}: {sample_cost(read) * 1000:.3f} ms")
    overhead = (median_on / median_off - 1) * 100
    print(f"ratio on/off {median_on / median_off:.4f}: overhead {overhead:+.2f} % (goal < 2 %)")
    return 0
