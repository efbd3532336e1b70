"""Step-time statistics: device synchronised, warm-up excluded, median and spread rather than a mean."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class StepTimer:
    """Times each step with the device synchronised at both ends."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0

    def __enter__(self) -> StepTimer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile, defined for a single value too."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def step_stats(seconds: list[float], samples_per_step: int, tokens_per_step: int) -> dict[str, Any]:
    if not seconds:
        return {"steps_timed": 0, "step_time_s": None, "samples_per_s": None, "tokens_per_s": None}
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    return {
        "steps_timed": len(ordered),
        "step_time_s": {"median": median, "p10": _quantile(ordered, 0.1), "p90": _quantile(ordered, 0.9),
                        "min": ordered[0], "max": ordered[-1]},
        "samples_per_s": samples_per_step / median,
        "tokens_per_s": tokens_per_step / median,
    }
