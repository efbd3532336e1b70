"""The phases of a training step, marked so that a memory peak can say where in the step it fell.

A composed method wraps its forward, backward and optimizer step in `phase(...)`. Each mark is a
profiler range (`revbench::<phase>`), which the profiler's byte count reads by time stamp (on CUDA the
backward runs on autograd's own thread, so the event tree's nesting cannot be used), and a stack that the
storage tracker reads as it sees each allocation. Phases nest: an optimizer step inside backward (AdamW
in backward) is the optimizer phase.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterator

from torch.profiler import record_function

PHASES = ("forward", "backward", "optimizer")
RANGE_PREFIX = "revbench::"
_active: list[str] = []
_lock = threading.Lock()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    if name not in PHASES:
        raise ValueError(f"unknown step phase {name!r}; the phases are {', '.join(PHASES)}")
    with _lock:
        _active.append(name)
    try:
        with record_function(RANGE_PREFIX + name):
            yield
    finally:
        with _lock:
            _active.pop()


def current_phase() -> str | None:
    """The innermost phase open now, or None outside any (e.g. a batch made before the forward)."""
    return _active[-1] if _active else None


class PhaseRanges:
    """Phase ranges (start_ns, end_ns, name) from a profile; `at(t)` is the innermost range holding time t."""

    def __init__(self, ranges: list[tuple[int, int, str]]) -> None:
        self.ranges = sorted(ranges)
        self.starts = [start for start, _, _ in self.ranges]

    def covers(self, time_ns: int) -> bool:
        """Whether a range holds time t, for ranges that never nest (host_residency's: one copy each), where only the
        latest to start can hold it: one bisection, where `at` may walk back over every earlier range."""
        latest = bisect.bisect_right(self.starts, time_ns) - 1
        return latest >= 0 and time_ns <= self.ranges[latest][1]

    def at(self, time_ns: int) -> str | None:
        # Ranges are nested or disjoint: the latest-starting range that still holds t is the innermost.
        for index in range(bisect.bisect_right(self.starts, time_ns) - 1, -1, -1):
            start, end, name = self.ranges[index]
            if start <= time_ns <= end:
                return name
        return None
