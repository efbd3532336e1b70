"""The `budget` search: the largest value of a field (batch, sequence) whose run fits the memory budget.

Each probe is a real run: values double from `start` while they fit (up to `max`), then the gap between
the last fit and the first OOM is bisected down to `resolution`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from revbench.orchestrator.suite import Search

Fits = Callable[[int], "bool | None"]  # True: ran; False: OOM; None: failed otherwise (the search stops)


@dataclass
class SearchResult:
    largest_fit: int | None  # None: even `start` did not fit
    first_oom: int | None  # None: `max` fitted
    stopped: int | None = None  # the value whose run failed for another reason than memory


def largest_fitting(search: Search, fits: Fits) -> SearchResult:
    good: int | None = None
    bad: int | None = None
    value = search.start
    while True:
        outcome = fits(value)
        if outcome is None:
            return SearchResult(good, bad, stopped=value)
        if not outcome:
            bad = value
            break
        good = value
        if value >= search.max:
            return SearchResult(good, None)
        value = min(value * 2, search.max)
    if good is None:
        return SearchResult(None, bad)
    while True:
        step = (bad - good) // 2 // search.resolution * search.resolution
        middle = good + max(step, search.resolution)
        if middle >= bad:
            return SearchResult(good, bad)
        outcome = fits(middle)
        if outcome is None:
            return SearchResult(good, bad, stopped=middle)
        good, bad = (middle, bad) if outcome else (good, middle)
