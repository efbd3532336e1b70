"""Peak resident memory of this process and its children: where CPU-offload methods put their states."""

from __future__ import annotations

import time
from typing import Any

import psutil

from revbench.measure.sampler import PeakSampler


class TreeRss:
    """Resident bytes of a process plus the memory unique to each descendant (DeepSpeed spawns helpers).

    Children count by USS, not RSS: a just-forked child (DeepSpeed forks compilers and lscpu) shares every
    page of its parent, and RSS would count those pages twice. The descendants are listed at most every
    `relist_s`: listing walks /proc (about 2 ms here), which at 10 ms sampling would cost a fifth of a
    training step; reading the known processes' memory is cheap."""

    def __init__(self, pid: int | None = None, relist_s: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.relist_s = relist_s
        self.children: list[psutil.Process] = []
        self.listed_at = float("-inf")

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.listed_at >= self.relist_s:
            self.children, self.listed_at = self.root.children(recursive=True), now
        total = self.root.memory_info().rss
        for child in self.children:
            try:
                total += child.memory_full_info().uss
            except psutil.Error:  # a child that exited since it was listed
                continue
        return total


class HostMemory:
    """Samples the process tree's RSS while a block runs; `result()` gives the peak and the start value."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.start_rss = 0
        self.tree = TreeRss()
        self.sampler = PeakSampler(self.tree, interval_s)

    def __enter__(self) -> HostMemory:
        self.start_rss = self.tree()
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.stop()

    def result(self) -> dict[str, Any]:
        return {"peak_rss_bytes": self.sampler.peak, "start_rss_bytes": self.start_rss,
                "samples": self.sampler.samples}
