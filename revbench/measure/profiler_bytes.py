"""Exact peak tensor bytes from the profiler's allocation events: the measurement that changes nothing.

A TorchDispatchMode alters how autograd accumulates some gradients (the observer effect), so the
figures revbench reports come from the allocator's own events, which the profiler only listens to.
The event tree is a private API (`kineto_results.experimental_event_tree`), stable from torch 2.1 on.

Frees of blocks allocated before the window are not reported by the profiler, so the caller must not
free pre-existing state inside the window (revbench clears gradients just before it).
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
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
from revbench.measure.residency import HOST_RANGE
from revbench.measure.timeline import HOST_ACTIVATIONS, sweep

AllocationEvent = tuple[int, int, int]  # (pointer, bytes allocated or -bytes freed, time in ns)
# The ops inside which a process group allocates its own buffers (c10d's ops, gloo's and NCCL's own ranges).
COLLECTIVE_OPS = ("c10d::", "gloo:", "nccl:")


def in_collective(node: Any) -> bool:
    """Whether an allocation event happened inside a collective op (its buffer is the backend's, not the step's)."""
    while (node := node.parent) is not None:
        if node.tag == _EventType.TorchOp and node.name.startswith(COLLECTIVE_OPS):
            return True
    return False


def profile_events(prof: profile) -> tuple[list[Any], PhaseRanges, PhaseRanges]:
    """The allocation events in allocation order, the step's phase ranges and its host-residency ranges."""
    found: list[Any] = []
    ranges: list[tuple[int, int, str]] = []
    host: list[tuple[int, int, str]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            found.append(node)
        elif node.tag == _EventType.TorchOp and node.name.startswith(RANGE_PREFIX):
            ranges.append((node.start_time_ns, node.end_time_ns, node.name.removeprefix(RANGE_PREFIX)))
        elif node.tag == _EventType.TorchOp and node.name == HOST_RANGE:
            host.append((node.start_time_ns, node.end_time_ns, "host"))
        stack.extend(node.children)
    # Allocation events carry a unique id in allocation order; time stamps can tie.
    found.sort(key=lambda n: (n.start_time_ns, n.extra_fields.id))
    return found, PhaseRanges(ranges), PhaseRanges(host)


def measure_peak_bytes(
    fn: Callable[[], Any], state_tensors: Callable[[], StateTensors], device: torch.device | str = "cpu"
) -> tuple[Any, TensorBytes]:
    """Run `fn` once and return its result and the peak live tensor bytes on `device`, by category, with
    host-resident states counted and named, and the phase of the step in which the peak fell."""
    step = ProfiledStep.run(fn, state_tensors, device)
    return step.result, step.peak()


def with_missed_frees(events: list[AllocationEvent]) -> tuple[list[AllocationEvent], int]:
    """The events with a free put back wherever the profiler missed one, and how many it missed.

    The profiler hears only the frees of threads it profiles. On CPU ranks a collective's buffers (the clone that
    gloo's reduce-scatter makes, a gradient handed to it) are freed by gloo's worker thread whenever it drops the
    work after the step's thread did: under load, one ZeRO step in a few loses a free that way. The allocator never
    hands out a live pointer, so the block was freed before its pointer came back: it is retired just before the
    new block, the latest moment it can have been freed. The figure may then sit above the true one by that block
    (the record says how many frees were put back), never below."""
    live: dict[int, int] = {}
    fixed: list[AllocationEvent] = []
    missed = 0
    for ptr, size, time_ns in events:
        if size > 0 and ptr in live:
            fixed.append((ptr, -live[ptr], time_ns))
            missed += 1
        if size > 0:
            live[ptr] = size
        else:
            live.pop(ptr, None)
        fixed.append((ptr, size, time_ns))
    return fixed, missed


def split_residency(events: list[tuple[str, int, int, int]], device_type: str, host: PhaseRanges
                    ) -> tuple[list[AllocationEvent], list[AllocationEvent], int]:
    """(the device's events, the host-resident activations' events, the device's frees put back) from (device type,
    pointer, bytes, time) events: a CPU allocation inside a host-residency range is an offloaded activation, and so
    is the free of its pointer. On a CPU run the two share the allocator; on a GPU the CPU's other events are not the
    device's."""
    by_type: dict[str, list[AllocationEvent]] = {"cpu": [], device_type: []}
    for kind, ptr, size, time_ns in events:
        if kind in by_type:
            by_type[kind].append((ptr, size, time_ns))
    device, missed = with_missed_frees(by_type[device_type])
    if device_type != "cpu":
        return device, _host_part(with_missed_frees(by_type["cpu"])[0], host)[1], missed
    device, on_host = _host_part(device, host)
    return device, on_host, missed


def _host_part(events: list[AllocationEvent], host: PhaseRanges) -> tuple[list[AllocationEvent], list[AllocationEvent]]:
    """(the rest, the allocations inside host ranges and their frees)."""
    return split_allocations(events, lambda ptr, time_ns: host.covers(time_ns))


def split_allocations(events: list[AllocationEvent], taken: Callable[[int, int], bool]
                      ) -> tuple[list[AllocationEvent], list[AllocationEvent]]:
    """(the rest, the allocations `taken(ptr, time_ns)` picks and their frees)."""
    rest: list[AllocationEvent] = []
    on_host: list[AllocationEvent] = []
    owned: set[int] = set()
    for event in events:
        ptr, size, time_ns = event
        if size > 0 and taken(ptr, time_ns):
            owned.add(ptr)
            on_host.append(event)
        elif size < 0 and ptr in owned:
            owned.discard(ptr)
            on_host.append(event)
        else:
            rest.append(event)
    return rest, on_host


def running_peak(events: list[AllocationEvent]) -> int:
    """The most bytes live at once over `events` (frees of blocks not allocated in them ignored)."""
    live: dict[int, int] = {}
    current = peak = 0
    for ptr, size, _ in events:
        if size > 0:
            live[ptr] = size
            current += size
            peak = max(peak, current)
        elif ptr in live:
            current -= live.pop(ptr)
    return peak


@dataclass
class ProfiledStep:
    """A step's device allocation events and phases, with the model states before and after it (by allocation)."""

    result: Any
    device_type: str
    events: list[AllocationEvent]  # the device's, in order
    phases: PhaseRanges
    before: dict
    after: dict
    host: set
    missed_frees: int = 0  # frees the profiler did not report, put back by `with_missed_frees`
    # activations offloaded to host memory (residency.py)
    host_events: list[AllocationEvent] = field(default_factory=list)
    # (pointer, time) of the allocations a process group made inside its collectives
    collective_allocations: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def run(cls, fn: Callable[[], Any], state_tensors: Callable[[], StateTensors], device: torch.device | str
            ) -> ProfiledStep:
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
        found, phases, host_ranges = profile_events(prof)
        events, host_events, missed = split_residency(
            [(e.extra_fields.device.type, e.extra_fields.ptr, e.extra_fields.alloc_size, e.start_time_ns)
             for e in found], device_type, host_ranges)
        collective = {(e.extra_fields.ptr, e.start_time_ns) for e in found
                      if e.extra_fields.alloc_size > 0 and in_collective(e)}
        return cls(result, device_type, events, phases, before, after, host, missed, host_events, collective)

    def collective_bytes(self) -> int:
        """What the collectives' own buffers add to the step's peak: the peak with them less the peak without."""
        if not self.collective_allocations:
            return 0
        rest, _ = split_allocations(self.events, lambda ptr, time_ns: (ptr, time_ns) in self.collective_allocations)
        return running_peak(self.events) - running_peak(rest)

    def _phase(self, index: int) -> str | None:
        return self.phases.at(self.events[index][2])

    def _category(self, ptr: int, index: int, live: dict[int, tuple[int, int]]) -> tuple[str, bool]:
        """An allocation's category and whether it is a host-resident state (`live`: what outlives the step)."""
        key = (self.device_type, ptr)
        survives = ptr in live and live[ptr][1] == index  # allocated in the window and still live at its end
        category = self.after.get(key, ("activations", 0))[0] if survives else "activations"
        if category == "activations":
            category = temporary_category(self._phase(index))
        return category, survives and key in self.host

    def _held(self) -> tuple[dict[str, int], dict[str, int]]:
        """What the states allocated before the window hold, on the device and (offloaded) in host memory."""
        by_category = dict.fromkeys(CATEGORIES, 0)
        on_host = dict.fromkeys(STATE_CATEGORIES, 0)
        for key, (category, nbytes) in self.before.items():
            if key[0] == self.device_type:
                by_category[category] += nbytes
                on_host[category] += nbytes if key in self.host else 0
        # States held in host memory while the step runs on an accelerator: not in the device's events.
        for key, (category, nbytes) in {**self.before, **self.after}.items():
            if key[0] != self.device_type and key in self.host:
                by_category[category] += nbytes
                on_host[category] += nbytes
        return by_category, on_host

    @functools.cached_property
    def _replay(self) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]], int | None]:
        """(live at the end, live at the peak, the peak's event): ptr -> (bytes, index of its allocation). Once
        for both the peak and the timeline."""
        live: dict[int, tuple[int, int]] = {}
        delta = peak_delta = 0
        peak_live: dict[int, tuple[int, int]] = {}
        peak_index = None
        rising = False
        for index, (ptr, size, _) in enumerate(self.events):
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
        return live, peak_live, peak_index

    def peak(self) -> TensorBytes:
        live, peak_live, peak_index = self._replay
        by_category, on_host = self._held()
        for ptr, (size, index) in peak_live.items():
            category, host = self._category(ptr, index, live)
            by_category[category] += size
            if host:
                on_host[category] += size
        phase = self._phase(peak_index) if peak_index is not None else None
        return TensorBytes(**by_category, **host_fields(on_host), phase=phase, method="profiler",
                           host_activations=running_peak(self.host_events), collectives=self.collective_bytes())

    def timeline(self) -> pd.DataFrame:
        live, _, _ = self._replay
        # The device's events and the offloaded activations' in time order; an allocation is named by its list and
        # its index there.
        merged = heapq.merge(((time_ns, False, index, ptr, size) for index, (ptr, size, time_ns) in
                              enumerate(self.events)),
                             ((time_ns, True, index, ptr, size) for index, (ptr, size, time_ns) in
                              enumerate(self.host_events)))
        allocated: dict[tuple[bool, int], tuple[bool, int]] = {}  # (on host, ptr) -> its allocation
        events = []
        for time_ns, on_host, index, ptr, size in merged:
            if size > 0:
                allocated[on_host, ptr] = (on_host, index)
                events.append(((on_host, index), size, self.phases.at(time_ns)))
            elif (on_host, ptr) in allocated:  # a free of a block from before the window is not reported; nor counted
                events.append((allocated.pop((on_host, ptr)), size, self.phases.at(time_ns)))

        def where(allocation: tuple[bool, int]) -> tuple[str, bool]:
            on_host, index = allocation
            return (HOST_ACTIVATIONS, False) if on_host else self._category(self.events[index][0], index, live)

        initial, initial_host = self._held()
        return sweep(events, where, initial=initial, initial_host=initial_host)
