"""Exact peak tensor bytes from the profiler's allocation events: the measurement that changes nothing.

A TorchDispatchMode alters how autograd accumulates some gradients (the observer effect), so the
figures revbench reports come from the allocator's own events, which the profiler only listens to.
The event tree is a private API (`kineto_results.experimental_event_tree`), stable from torch 2.1 on.

Frees of blocks allocated before the window are not reported by the profiler, so the caller must not
free pre-existing state inside the window (revbench clears gradients just before it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from revbench.measure.categories import CATEGORIES, StateTensors, TensorBytes, categorize, storage_ptr


def _allocation_events(prof: profile) -> list[Any]:
    found: list[Any] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            found.append(node)
        stack.extend(node.children)
    # Allocation events carry a unique id in allocation order; time stamps can tie.
    found.sort(key=lambda n: (n.start_time_ns, n.extra_fields.id))
    return found


def measure_peak_bytes(
    fn: Callable[[], Any], state_tensors: Callable[[], StateTensors], device: torch.device | str = "cpu"
) -> tuple[Any, TensorBytes]:
    """Run `fn` once and return its result and the peak live tensor bytes on `device`, by category."""
    device_type = torch.device(device).type
    before = categorize(state_tensors(), storage_ptr)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        result = fn()
    after = categorize(state_tensors(), storage_ptr)

    events = [e for e in _allocation_events(prof) if e.extra_fields.device.type == device_type]
    live: dict[int, tuple[int, int]] = {}  # ptr -> (bytes, index of its allocation event)
    delta = peak_delta = 0
    peak_live: dict[int, tuple[int, int]] = {}
    rising = False
    for index, event in enumerate(events):
        ptr, size = event.extra_fields.ptr, event.extra_fields.alloc_size
        if size > 0:
            live[ptr] = (size, index)
            delta += size
            if delta > peak_delta:
                peak_delta, rising = delta, True
        else:
            if rising:  # the state just before the first free after a rise is the peak state
                peak_live, rising = dict(live), False
            if live.pop(ptr, None) is not None:
                delta += size
    if rising:
        peak_live = dict(live)

    baseline = {key: value for key, value in before.items() if key[0] == device_type}
    by_category = dict.fromkeys(CATEGORIES, 0)
    for category, nbytes in baseline.values():
        by_category[category] += nbytes
    for ptr, (size, index) in peak_live.items():
        survives = ptr in live and live[ptr][1] == index  # allocated in the window and still live at its end
        category = after.get((device_type, ptr), ("activations", 0))[0] if survives else "activations"
        if category != "activations":
            by_category[category] += size
    total = sum(nbytes for _, nbytes in baseline.values()) + peak_delta
    by_category["activations"] = total - sum(by_category[c] for c in CATEGORIES if c != "activations")
    return result, TensorBytes(**by_category, method="profiler")
