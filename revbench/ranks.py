"""This process's place in a multi-rank run, and its slice of the global batch.

A launcher (torchrun, the deepspeed launcher) sets RANK and WORLD_SIZE in every worker's environment before
anything starts, so they are read from there: the data slice is known before any process group exists.
`workload.batch` is the global batch: rank r of N trains on rows [r*B/N, (r+1)*B/N) of the same batch a single
process would train on, so N ranks see the same samples as one.
"""

from __future__ import annotations

import os

import torch


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def check_divisible(batch: int, ranks: int) -> None:
    if batch % ranks:
        raise ValueError(f"workload.batch {batch} is the global batch and must split evenly over {ranks} ranks "
                         f"(each rank trains on batch/ranks rows); choose a multiple of {ranks}")


def rank_batch(global_batch: torch.Tensor, rank_index: int | None = None, ranks: int | None = None) -> torch.Tensor:
    """This rank's rows of the global batch (the whole batch in a single process)."""
    rank_index = rank() if rank_index is None else rank_index
    ranks = world_size() if ranks is None else ranks
    check_divisible(global_batch.shape[0], ranks)
    per_rank = global_batch.shape[0] // ranks
    return global_batch[rank_index * per_rank:(rank_index + 1) * per_rank]
