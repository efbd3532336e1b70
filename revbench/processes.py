"""Work spread over processes, one item each: fake-tensor steps are Python-bound, so processes (not threads) divide
the wall time. Nothing is shared between items, so each can run on its own.

Workers fork from a server process that imported the modules they need once (multiprocessing's forkserver, with
those preloaded): each worker starts with torch and transformers imported instead of paying seconds to import them
again, and the server, having run no op, holds no thread pool that a fork could break. `start_server` starts it
early, so that it imports while the calling process does.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import forkserver
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# What an estimate's workers import: the session and everything below it (torch, transformers, the techniques).
ESTIMATE_IMPORTS = ("revbench.estimate.session",)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def start_server(preload: Sequence[str] = ESTIMATE_IMPORTS) -> None:
    """Start the workers' server now, importing `preload`; map_processes would start it on first use."""
    _context(preload)
    forkserver.ensure_running()


def map_processes(fn: Callable[[T], R], items: Iterable[T], jobs: int | None = None,
                  preload: Sequence[str] = ESTIMATE_IMPORTS, on_done: Callable[[R], None] | None = None,
                  cost: Callable[[T], float] | None = None) -> list[R]:
    """`[fn(item) for item in items]`, in up to `jobs` processes (default: one per usable CPU), in order; the
    workers fork from a server that imported `preload` (unless it was started before with other modules).
    `on_done` sees each result as it comes, in the order they finish. `cost` (a guess at an item's time) starts the
    longest first, so that no worker is left with a long item while the others have nothing to do."""
    items = list(items)
    jobs = min(len(items), jobs or usable_cpus())
    done = on_done or (lambda result: None)
    if jobs <= 1:
        results = []
        for item in items:
            results.append(fn(item))
            done(results[-1])
        return results
    with ProcessPoolExecutor(jobs, mp_context=_context(preload)) as pool:
        order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost else range(len(items))
        futures = {i: pool.submit(fn, items[i]) for i in order}
        for future in as_completed(futures.values()):
            done(future.result())
        return [futures[i].result() for i in range(len(items))]
