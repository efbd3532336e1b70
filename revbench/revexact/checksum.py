"""A per-layer checksum of an integer stream: any single changed element changes it.

sum_i x_i * w_i over int64 (wrapping), with odd per-feature weights w: a change of 2^b * e (e odd) in one element
changes the sum by 2^b * e * w_i, which is non-zero modulo 2^64 for b < 64. One pass over the stream, one scalar kept.
"""

from __future__ import annotations

import torch

_SEED = 0x5EED


def _weights(width: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_SEED)
    return (torch.randint(0, 2**31, (width,), generator=gen, dtype=torch.int64) * 2 + 1).to(device)


class Checksum:
    def __init__(self) -> None:
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-1], x.device)
        if key not in self._weights:
            self._weights[key] = _weights(*key)
        return (x.to(torch.int64) * self._weights[key]).sum()
