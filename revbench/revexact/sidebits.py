"""k-bit side values packed as k bit planes of one bit per element: k / 8 bytes per element, exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _weights(device: torch.device) -> torch.Tensor:
    if device not in _WEIGHTS:
        _WEIGHTS[device] = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=device)
    return _WEIGHTS[device]


@dataclass
class PackedBits:
    planes: torch.Tensor  # uint8 (k, ceil(numel / 8))
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        return self.planes.numel()


def pack(side: torch.Tensor, bits: int) -> PackedBits:
    flat = side.reshape(-1).to(torch.int32)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    planes = torch.stack([((flat >> b) & 1).to(torch.uint8) for b in range(bits)])  # (k, n)
    packed = (planes.view(bits, -1, 8) * _weights(side.device)).sum(-1, dtype=torch.uint8)
    return PackedBits(packed, side.shape)


def unpack(packed: PackedBits) -> torch.Tensor:
    """The side values as int32, in their original shape."""
    planes = packed.planes
    shifts = torch.arange(8, dtype=torch.uint8, device=planes.device)
    bits = ((planes.unsqueeze(-1) >> shifts) & 1).to(torch.int32).view(planes.shape[0], -1)  # (k, n padded)
    weights = (1 << torch.arange(planes.shape[0], dtype=torch.int32, device=planes.device)).unsqueeze(-1)
    numel = packed.shape.numel()
    return (bits * weights).sum(0, dtype=torch.int32)[:numel].view(packed.shape)
