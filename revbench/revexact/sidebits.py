"""k-bit side values packed as k bit planes of one bit per element: k / 8 bytes per element, exactly.

Packing and unpacking go one plane at a time in uint8, so their temporaries stay at a few bytes per element
(they run once per layer in forward and in backward, beside the layer's own activations)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBits:
    planes: torch.Tensor  # uint8 (k, ceil(numel / 8))
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        return self.planes.numel()


def pack(side: torch.Tensor, bits: int) -> PackedBits:
    """Side values in [0, 2^bits), bits <= 8, stored as uint8 -> bits planes of numel / 8 bytes each."""
    flat = side.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    # Made per call, not cached: a cached tensor would outlive the fake-tensor mode of an estimate.
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=side.device)
    planes = torch.stack([(((flat >> b) & 1).view(-1, 8) * weights).sum(-1, dtype=torch.uint8)
                          for b in range(bits)])
    return PackedBits(planes, side.shape)


def unpack(packed: PackedBits) -> torch.Tensor:
    """The side values as uint8, in their original shape."""
    planes = packed.planes
    shifts = torch.arange(8, dtype=torch.uint8, device=planes.device)
    out = torch.zeros(planes.shape[1] * 8, dtype=torch.uint8, device=planes.device)
    for b in range(planes.shape[0]):
        out |= ((planes[b].unsqueeze(-1) >> shifts) & 1).view(-1) << b
    return out[: packed.shape.numel()].view(packed.shape)
