"""Estimates of several methods at once, one process each: fake-tensor steps are Python-bound, so processes (not
threads) divide the wall time. Nothing is shared between methods, so each can run on its own."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_processes(fn: Callable[[T], R], items: Iterable[T], jobs: int | None = None) -> list[R]:
    """`[fn(item) for item in items]`, in up to `jobs` processes (default: one per usable CPU), in order."""
    items = list(items)
    jobs = min(len(items), jobs or usable_cpus())
    if jobs <= 1:
        return [fn(item) for item in items]
    # spawn: a fresh interpreter per worker, never a fork of a process whose thread pools may be running.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, items))
