"""A process group of N ranks whose collectives move nothing, for model-state techniques that shard (FSDP2).

The estimate runs FSDP2's own `fully_shard` on fake tensors, as torchtitan's memory estimation does: this process
is rank 0 of a world of N, every collective returns at once, and FSDP2 allocates its shards, gathered weights and
reduce-scatter buffers for N ranks as it would on N GPUs. The group lives only while the estimate steps, so a real
run later in the same process (pytest) opens its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist


@contextlib.contextmanager
def fake_world(ranks: int) -> Iterator[None]:
    """This process as rank 0 of `ranks` ranks on the fake backend, unless a group is already open."""
    if dist.is_initialized():
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=ranks)
    try:
        yield
    finally:
        dist.destroy_process_group()
