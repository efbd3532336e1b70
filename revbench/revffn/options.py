"""RevFFN's options: every choice paper.md marks [ours] is a named, documented field here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

COUPLINGS = ("cross", "closed-form")
MODES = ("reversible", "vanilla")
ADAPTER_LAYOUTS = ("per-branch", "shared")
NORM_PLACEMENTS = ("new", "pretrained")
FALLBACKS = ("recompute", "warn", "raise")
SOLVERS = ("picard", "anderson")


@dataclass(frozen=True)
class RevFFNOptions:
    """How a decoder stack becomes reversible.

    coupling: "cross" is the paper's block, query from X1 and key/value from X2, inverted by a fixed-point
        iteration; "closed-form" takes query, key and value from X2, so X1 = Y1 - F(X2) exactly (RevNet).
    mode: "reversible" keeps no per-layer activations and rebuilds them in backward; "vanilla" runs the
        same blocks through plain autograd (the reference the tests compare against).
    adapters: "per-branch" gives attention and MoE their own up/down pair; "shared" uses one pair for both.
    norm: "new" puts a new RMSNorm(d/2) before each up-adapter (with per-branch adapters the pretrained
        norm's scale is folded into the up-adapter at init, which makes it equal "pretrained" at init);
        "pretrained" applies the layer's own d-wide norms after the up-adapter.
    fp32_streams: keep X1/X2 and the residual adds in float32 whatever the compute dtype, so reconstruction
        drift is set by the branch outputs' precision and not by the streams'.
    init_scale: the down-adapters start as init_scale * 0.5 [I I], so ||F|| / ||X1|| starts small enough
        for the fixed point to contract (paper.md's table: it converges for ratios up to about 1); 0.25
        gives a median per-token ratio of 0.08-0.13 on the tiny presets.
    tol: per-token relative tolerance for the fixed point and for the output residual check;
        None means 8 * eps of the compute dtype (1e-6 in float32, 2e-15 in float64, 6e-2 in bfloat16,
        where the reconstruction is only as exact as the bf16 branch outputs).
    max_iters: iteration cap of the fixed point.
    solver: "picard" iterates X1 <- Y1 - F(X1, X2) as is (converges where F is a contraction in X1);
        "anderson" (default) mixes the last 3 iterates per token: about half the iterations, and it
        converges somewhat beyond the contraction region, for 6 extra half-width stream tensors while a
        layer is reconstructed.
    fallback: what a layer that misses its tolerance does: "recompute" rebuilds its exact input from the
        saved stack input (counted in the statistics); "warn" keeps the approximate input and warns;
        "raise" raises ReconstructionError.
    replay_routing: reuse the forward's expert choices when recomputing; False is only for ablations.
    verify: also keep every layer's input in forward and report the true reconstruction error (tests only:
        it costs one hidden state per layer).
    sketch_dim: numbers per token of the random projection of each layer's input kept in forward (float32,
        sketch_dim / d of a hidden state per layer) and compared with the rebuilt input's in backward; it sees
        error inherited from the layers above, which the output residual cannot. 0 turns it off.
    sketch_tol: per-token relative tolerance of the sketch; None means 8 * tol (errors add up over layers,
        and a 4-number projection scatters the measured error by a few times).
    """

    coupling: str = "cross"
    mode: str = "reversible"
    adapters: str = "per-branch"
    norm: str = "new"
    fp32_streams: bool = True
    init_scale: float = 0.25
    tol: float | None = None
    max_iters: int = 50
    solver: str = "anderson"
    fallback: str = "recompute"
    replay_routing: bool = True
    verify: bool = False
    sketch_dim: int = 4
    sketch_tol: float | None = None

    def __post_init__(self) -> None:
        for name, choices in (("coupling", COUPLINGS), ("mode", MODES), ("adapters", ADAPTER_LAYOUTS),
                              ("norm", NORM_PLACEMENTS), ("fallback", FALLBACKS),
                              ("solver", SOLVERS)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"RevFFN option {name}={value!r} is not one of {', '.join(choices)}")
        for name in ("init_scale", "tol", "sketch_tol"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"RevFFN option {name} must be a finite number, got {value!r}")
        if self.max_iters < 1:
            raise ValueError(f"RevFFN option max_iters must be >= 1, got {self.max_iters}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"RevFFN option tol must be > 0, got {self.tol}")
        if self.sketch_dim < 0:
            raise ValueError(f"RevFFN option sketch_dim must be >= 0, got {self.sketch_dim}")
        if self.sketch_tol is not None and not self.sketch_tol > 0:
            raise ValueError(f"RevFFN option sketch_tol must be > 0, got {self.sketch_tol}")
        if not self.init_scale > 0:
            raise ValueError(f"RevFFN option init_scale must be > 0, got {self.init_scale}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RevFFNOptions:
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"unknown RevFFN option {', '.join(unknown)}; the options are {', '.join(OPTION_NAMES)}")
        return cls(**kwargs)

    def replace(self, **kwargs: Any) -> RevFFNOptions:
        return RevFFNOptions.from_kwargs(**{**self.to_dict(), **kwargs})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tolerance(self, compute_dtype: torch.dtype) -> float:
        return self.tol if self.tol is not None else 8 * torch.finfo(compute_dtype).eps

    def sketch_tolerance(self, tol: float) -> float:
        return self.sketch_tol if self.sketch_tol is not None else 8 * tol


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RevFFNOptions))
# Options read at every forward/backward; the rest are built into the blocks by `convert`.
RUNTIME_OPTIONS: tuple[str, ...] = ("mode", "tol", "max_iters", "solver", "fallback", "replay_routing", "verify",
                                     "sketch_dim", "sketch_tol")
