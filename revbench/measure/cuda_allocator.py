"""Peak figures from the torch CUDA caching allocator."""

from __future__ import annotations

from typing import Any

import torch

from revbench.measure.unavailable import unavailable

FIELDS = ("max_allocated_bytes", "max_reserved_bytes", "num_alloc_retries", "num_ooms")


def cuda_in_use(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def reset_peaks(device: torch.device | str) -> None:
    if cuda_in_use(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def allocator_peaks(device: torch.device | str) -> dict[str, Any]:
    """Allocated and reserved peaks since the last reset, with the allocator's retry and OOM counts."""
    if not cuda_in_use(device):
        return unavailable(f"no CUDA allocator on device {str(device)!r}", *FIELDS)
    torch.cuda.synchronize(device)
    stats = torch.cuda.memory_stats(device)
    return {
        "max_allocated_bytes": torch.cuda.max_memory_allocated(device),
        "max_reserved_bytes": torch.cuda.max_memory_reserved(device),
        "num_alloc_retries": stats.get("num_alloc_retries", 0),
        "num_ooms": stats.get("num_ooms", 0),
    }
