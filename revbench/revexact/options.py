"""The exact reversible stack's options, one documented field each (see docs/revexact.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODES = ("reversible", "vanilla")
FALLBACKS = ("recompute", "raise")
# 2^30 grid units is the largest stream magnitude: a step adds at most 2^30 / 2^k to a value below 2^30, so
# every intermediate stays inside int32 and the check itself cannot wrap.
MAX_GRID_BITS = 24


@dataclass(frozen=True)
class RevExactOptions:
    """How the unchanged decoder stack becomes an exact reversible one.

    side_bits: k, so gamma = 2^-k in x_{n+1} = Q[-gamma x_{n-1}] + Q[(1+gamma) x_n + (1-gamma) f_n(x_n)].
        The function moves by O(gamma) and each layer keeps k bits per element. The default 5 is the
        measured trade-off (reversible-designs.md): SmolLM2-135M starts at 2.6383 for a pretrained 2.6359
        (k=7: 2.6357 for 40 % more side-bit memory; k=3: 2.6873).
    grid_bits: the streams hold integers on the grid delta = 2^-grid_bits. 12 rounds SmolLM2's held-out loss by
        under 1e-4 and leaves room for |x| < 2^30 * delta = 262,144 (its massive activations reach 2.3e4).
    mode: "reversible" keeps only the final two streams, the side bits and the routing and rebuilds every
        layer's input in backward; "vanilla" runs the very same quantised forward through plain autograd
        with straight-through rounding (the reference the tests compare against).
    fallback: what a layer whose rebuilt input fails its checksum does: "recompute" rebuilds the inputs of
        it and every layer below from the kept stack input, once per backward (counted; costs one int32
        hidden state in forward); "raise" keeps nothing extra and raises ReconstructionError.
    replay_routing: reuse the forward's expert choices when recomputing (exact inputs give the same choices;
        replay keeps them so even if a kernel is not bitwise reproducible). False only for ablations.
    verify: also keep every layer's input in forward and compare it with torch.equal in backward (tests only:
        it costs one hidden state per layer).
    """

    side_bits: int = 5
    grid_bits: int = 12
    mode: str = "reversible"
    fallback: str = "recompute"
    replay_routing: bool = True
    verify: bool = False

    def __post_init__(self) -> None:
        for name, choices in (("mode", MODES), ("fallback", FALLBACKS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"revexact option {name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        if not 1 <= self.side_bits <= 8:
            raise ValueError(f"revexact option side_bits must be in 1..8, got {self.side_bits}")
        if not 0 <= self.grid_bits <= MAX_GRID_BITS:
            raise ValueError(f"revexact option grid_bits must be in 0..{MAX_GRID_BITS}, got {self.grid_bits}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RevExactOptions:
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"unknown revexact option {', '.join(unknown)}; the options are {', '.join(OPTION_NAMES)}")
        return cls(**kwargs)

    def replace(self, **kwargs: Any) -> RevExactOptions:
        return RevExactOptions.from_kwargs(**{**self.to_dict(), **kwargs})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RevExactOptions))
# side_bits and grid_bits define the function the model computes; the rest can change between steps.
RUNTIME_OPTIONS: tuple[str, ...] = ("mode", "fallback", "replay_routing", "verify")
