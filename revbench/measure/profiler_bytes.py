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

from revbench.measure.categories import (
    CATEGORIES,
    STATE_CATEGORIES,
    StateTensors,
    TensorBytes,
    categorize,
    host_fields,
    host_keys,
    storage_ptr,
    temporary_category,
)
from revbench.measure.phases import RANGE_PREFIX, PhaseRanges


def profile_events(prof: profile) -> tuple[list[Any], PhaseRanges]:
    """The allocation events in allocation order, and the step's phase ranges."""
    found: list[Any] = []
    ranges: list[tuple[int, int, str]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            found.append(node)
        elif node.tag == _EventType.TorchOp and node.name.startswith(RANGE_PREFIX):
            ranges.append((node.start_time_ns, node.end_time_ns, node.name.removeprefix(RANGE_PREFIX)))
        stack.extend(node.children)
    # Allocation events carry a unique id in allocation order; time stamps can tie.
    found.sort(key=lambda n: (n.start_time_ns, n.extra_fields.id))
    return found, PhaseRanges(ranges)


def measure_peak_bytes(
    fn: Callable[[], Any], state_tensors: Callable[[], StateTensors], device: torch.device | str = "cpu"
) -> tuple[Any, TensorBytes]:
    """Run `fn` once and return its result and the peak live tensor bytes on `device`, by category, with
    host-resident states counted and named, and the phase of the step in which the peak fell."""
    device_type = torch.device(device).type
    states = state_tensors()
    before = categorize(states, storage_ptr)
    host = host_keys(states, storage_ptr)
    del states
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        result = fn()
    states = state_tensors()
    after = categorize(states, storage_ptr)
    host |= host_keys(states, storage_ptr)
    del states

    events, phases = profile_events(prof)
    events = [e for e in events if e.extra_fields.device.type == device_type]
    live: dict[int, tuple[int, int]] = {}  # ptr -> (bytes, index of its allocation event)
    delta = peak_delta = 0
    peak_live: dict[int, tuple[int, int]] = {}
    peak_index = None
    rising = False
    for index, event in enumerate(events):
        ptr, size = event.extra_fields.ptr, event.extra_fields.alloc_size
        if size > 0:
            live[ptr] = (size, index)
            delta += size
            if delta > peak_delta:
                peak_delta, peak_index, rising = delta, index, True
        else:
            if rising:  # the state just before the first free after a rise is the peak state
                peak_live, rising = dict(live), False
            if live.pop(ptr, None) is not None:
                delta += size
    if rising:
        peak_live = dict(live)

    by_category = dict.fromkeys(CATEGORIES, 0)
    on_host = dict.fromkeys(STATE_CATEGORIES, 0)
    for key, (category, nbytes) in before.items():
        if key[0] == device_type:
            by_category[category] += nbytes
            on_host[category] += nbytes if key in host else 0
    for ptr, (size, index) in peak_live.items():
        key = (device_type, ptr)
        survives = ptr in live and live[ptr][1] == index  # allocated in the window and still live at its end
        category = after.get(key, ("activations", 0))[0] if survives else "activations"
        if category == "activations":
            category = temporary_category(phases.at(events[index].start_time_ns))
        by_category[category] += size
        if survives and key in host:
            on_host[category] += size
    # States held in host memory while the step runs on an accelerator: not in the device's events.
    for key, (category, nbytes) in {**before, **after}.items():
        if key[0] != device_type and key in host:
            by_category[category] += nbytes
            on_host[category] += nbytes
    phase = phases.at(events[peak_index].start_time_ns) if peak_index is not None else None
    return result, TensorBytes(**by_category, **host_fields(on_host), phase=phase, method="profiler")
