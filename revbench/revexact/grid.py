"""Integer residual streams on a fixed grid, and the momentum step that is exactly invertible on them.

A stream value x (int32) stands for x * delta, delta = 2^-grid_bits; Q[z] = floor(z / delta). With t = -x_{n-1}:

    x_{n+1} = (t >> k) + Q[z_n],   side_n = t & (2^k - 1),   z_n = (1 - gamma) layer_n(x_n delta) + 2 gamma x_n delta

(the momentum form: (1 + gamma) x_n + (1 - gamma) f_n(x_n) with f_n = layer_n - identity, gamma = 2^-k). The
shift is floor(-gamma x_{n-1}) in grid units and loses exactly the k bits kept in side_n, so given z_n

    t = ((x_{n+1} - Q[z_n]) << k) + side_n,   x_{n-1} = -t

is integer arithmetic, exact whatever the rounding inside the layer, provided z_n is recomputed bit-identically.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

# Stream magnitudes stay below 2^30 grid units: adding (t >> k) < 2^29 to a value below 2^30 cannot wrap int32.
LIMIT = 2**30


class GridOverflowError(OverflowError):
    """A stream value left the grid's int32 range."""


class Grid:
    def __init__(self, grid_bits: int, side_bits: int) -> None:
        self.grid_bits = grid_bits
        self.side_bits = side_bits
        self.scale = float(2**grid_bits)  # 1 / delta, a power of two: scaling by it is exact in floating point
        self.gamma = 2.0**-side_bits
        self.mask = 2**side_bits - 1

    def quantise(self, z: torch.Tensor, where: str) -> torch.Tensor:
        """Q[z] as int32, after checking that it fits (a clear error names the layer, the value and the range)."""
        scaled = torch.floor(z.float() * self.scale) if z.dtype != torch.float64 else torch.floor(z * self.scale)
        worst = scaled.abs().max()
        if not is_fake(worst) and not bool(worst < LIMIT):  # also catches inf and nan; an estimate has no values
            raise GridOverflowError(
                f"{where}: a stream value of {float(worst) / self.scale:.4g} does not fit the grid: with "
                f"grid_bits={self.grid_bits} the streams hold |x| < 2^30 * 2^-{self.grid_bits} = "
                f"{LIMIT / self.scale:.6g}; convert with a smaller grid_bits")
        return scaled.to(torch.int32)

    def real(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The value a stream stands for, in the layer's dtype (float32 first, so the scaling is exact)."""
        return (x.to(torch.float64 if dtype == torch.float64 else torch.float32) / self.scale).to(dtype)

    def mix(self, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """z = (1 - gamma) layer(h) + 2 gamma h, in at least float32 whatever the autocast dtype."""
        dtype = torch.promote_types(torch.promote_types(out.dtype, h.dtype), torch.float32)
        return (1.0 - self.gamma) * out.to(dtype) + (2.0 * self.gamma) * h.to(dtype)

    def step(self, x_prev: torch.Tensor, q: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{n+1}, side_n) from x_{n-1} and Q[z_n]."""
        t = -x_prev
        x_next = (t >> self.side_bits) + q
        if not is_fake(x_next) and not bool(x_next.abs().max() < LIMIT):
            raise GridOverflowError(f"{where}: the stream left the grid's range |x| < {LIMIT / self.scale:.6g} "
                                    f"(grid_bits={self.grid_bits}); convert with a smaller grid_bits")
        return x_next, (t & self.mask).to(torch.uint8)

    def invert_(self, x_next: torch.Tensor, q: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """x_{n-1} from x_{n+1}, Q[z_n] and side_n, in place: x_{n+1}'s storage becomes x_{n-1} (backward needs
        x_{n+1} no more)."""
        return x_next.sub_(q).bitwise_left_shift_(self.side_bits).add_(side).neg_()
