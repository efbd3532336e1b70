"""Work spread over processes (revbench/processes.py) and the bar that follows it (revbench/progress.py)."""

from __future__ import annotations

import io
import time

from rich.console import Console

from revbench.processes import map_processes
from revbench.progress import ItemsProgress


def _square(n: int) -> int:
    return n * n


def test_results_come_back_in_order_and_each_is_seen_as_it_finishes() -> None:
    seen: list[int] = []
    assert map_processes(_square, range(5), jobs=2, preload=(), on_done=seen.append) == [0, 1, 4, 9, 16]
    assert sorted(seen) == [0, 1, 4, 9, 16]


def _started(n: int) -> tuple[int, float]:
    start = time.monotonic()  # one clock for every process of the machine
    time.sleep(0.3)  # long enough that both workers have taken an item before either takes a second
    return n, start


def test_the_costliest_items_start_first_and_results_still_come_back_in_order() -> None:
    results = map_processes(_started, [1, 4, 2, 3], jobs=2, preload=(), cost=lambda n: n)
    assert [n for n, _ in results] == [1, 4, 2, 3]
    by_start = [n for n, _ in sorted(results, key=lambda r: r[1])]
    assert set(by_start[:2]) == {4, 3} and set(by_start[2:]) == {2, 1}


def test_one_job_runs_here_in_order() -> None:
    seen: list[int] = []
    assert map_processes(_square, [3, 1, 2], jobs=1, on_done=seen.append) == [9, 1, 4]
    assert seen == [9, 1, 4]


def test_the_bar_prints_a_line_per_finished_item_and_counts_them() -> None:
    out = io.StringIO()
    with ItemsProgress("estimating 2 methods", 2, console=Console(file=out, width=100)) as bar:
        bar.note("standard: batch 1 -> 133.33 GiB")
        bar.done("standard: ok in 2.5 s")
        bar.done("lora: ok in 8.1 s")
        assert bar.bar.tasks[0].completed == 2
    # Not a terminal: no bar is drawn, only the lines (and the blank line a transient bar leaves).
    lines = [line for line in out.getvalue().splitlines() if line]
    assert lines == ["standard: batch 1 -> 133.33 GiB", "standard: ok in 2.5 s", "lora: ok in 8.1 s"]
