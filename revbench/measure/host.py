"""Peak resident memory of this process and its children: where CPU-offload methods put their states."""

from __future__ import annotations

from typing import Any

import psutil

from revbench.measure.sampler import PeakSampler


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident bytes of a process plus the memory unique to each descendant (DeepSpeed spawns helpers).

    Children count by USS, not RSS: a just-forked child (DeepSpeed forks compilers and lscpu) shares every
    page of its parent, and RSS would count those pages twice."""
    root = psutil.Process(pid)
    total = root.memory_info().rss
    for child in root.children(recursive=True):
        try:
            total += child.memory_full_info().uss
        except psutil.Error:  # a child that exited between listing and reading
            continue
    return total


class HostMemory:
    """Samples the process tree's RSS while a block runs; `result()` gives the peak and the start value."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.start_rss = 0
        self.sampler = PeakSampler(tree_rss_bytes, interval_s)

    def __enter__(self) -> HostMemory:
        self.start_rss = tree_rss_bytes()
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.stop()

    def result(self) -> dict[str, Any]:
        return {"peak_rss_bytes": self.sampler.peak, "start_rss_bytes": self.start_rss,
                "samples": self.sampler.samples}
