"""A full-depth estimate from traces at three small depths: a decoder stack repeats one layer, so once the first and
last layers stand apart from the middle ones, each phase's peak, and each category at it, grows by the same bytes
per layer.

The step is traced at depths 3, 4 and 5 (revexact's layer 0 is a plain step, so 2 -> 3 is not yet a layer's
worth). Per phase, every category at that phase's own peak must be exactly affine over the three: then it is
extrapolated to the full depth, and the step's peak is the largest phase (the first of equals, as a trace takes
it). Where any figure is not affine, or the layers are not all alike (`uniform_layers`), the full depth is traced,
as before, and the estimate says which it did.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any, Protocol

from revbench.measure.categories import TensorBytes
from revbench.spec import TrainSpec

DEPTHS = (3, 4, 5)
# The byte figures of TensorBytes, each extrapolated on its own.
FIELDS = ("params", "grads", "optimizer", "workspace", "activations", "host_params", "host_grads", "host_optimizer")
TRACED, EXTRAPOLATED = "traced", "extrapolated"

PhasePeaks = dict[str | None, TensorBytes]


class Session(Protocol):
    """A method prepared once for estimates and stepped at any batch and sequence length."""

    parameters: int
    host: TensorBytes | None  # what the method keeps in host memory, whatever the batch
    how: str  # TRACED or EXTRAPOLATED, for the last phase_peaks
    note: str | None  # why a deep stack was traced at its full depth

    def phase_peaks(self, batch: int, seq: int) -> PhasePeaks:
        """Device bytes at each step phase's own peak, in the order the phases ran."""


def uniform_layers(config: Any) -> str | None:
    """Why the model's decoder layers are not all alike (so depth does not add one layer's worth), or None."""
    kinds = getattr(config, "layer_types", None)
    if kinds and len(set(kinds)) > 1:
        return f"its layers are of several types ({', '.join(sorted(set(kinds)))})"
    if getattr(config, "mlp_only_layers", None):
        return "some of its layers are dense (mlp_only_layers)"
    if getattr(config, "decoder_sparse_step", 1) not in (None, 1):
        return "only every decoder_sparse_step-th layer is MoE"
    if getattr(config, "use_sliding_window", False):
        return "its lower layers use a sliding window (max_window_layers)"
    return None


def depth_reason(spec: TrainSpec, config: Any) -> str | None:
    """Why `spec`'s depth (its model's `config`) cannot be extrapolated, or None."""
    if spec.model.path is not None:
        return "a checkpoint's depth is its own"
    return uniform_layers(config)


def at_depth(spec: TrainSpec, layers: int) -> TrainSpec:
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, layers=layers))


def affine(values: list[int], depths: tuple[int, ...], layers: int) -> int | None:
    """The value at `layers` on the line through `values` at the equally spaced `depths`, or None where they are not
    on one line (or the line does not reach `layers` in whole bytes)."""
    step, spacing = values[1] - values[0], depths[1] - depths[0]
    if any(b - a != step for a, b in itertools.pairwise(values)):
        return None
    grow, rest = divmod(step * (layers - depths[-1]), spacing)
    return None if rest else values[-1] + grow


def extrapolate(peaks: list[PhasePeaks], depths: tuple[int, ...], layers: int) -> PhasePeaks | str:
    """Each phase's peak at `layers`, or why the traces do not extrapolate."""
    phases = list(peaks[0])
    if any(list(p) != phases for p in peaks[1:]):
        return "the step's phases differ between depths"
    out: PhasePeaks = {}
    for phase in phases:
        values = {}
        for name in FIELDS:
            value = affine([getattr(p[phase], name) for p in peaks], depths, layers)
            if value is None:
                return f"{phase or 'pre-step'} {name} is not affine in depth"
            values[name] = value
        out[phase] = dataclasses.replace(peaks[-1][phase], **values)
    return out


def step_peak(phases: PhasePeaks) -> TensorBytes:
    """The step's peak: the largest phase peak, the first of equals (a tracker only moves on a larger one)."""
    return max(phases.values(), key=lambda b: b.total)


class DepthSession:
    """A session at the full depth whose steps are traced at DEPTHS and extrapolated (or, where they do not
    extrapolate, traced at the full depth). `how` says which the last `phase_peaks` did."""

    def __init__(self, open_at: Callable[[int], Session], layers: int, reason: str | None = None) -> None:
        """`reason`: why the layers cannot be extrapolated (see `depth_reason`), if known before any trace."""
        self.open_at, self.layers = open_at, layers
        self.full: Session | None = None
        self.how = TRACED
        self.note = reason  # why the last peak was traced at the full depth
        if reason is not None:
            self.parameters, self.host = self._full().parameters, self._full().host
            return
        self.small = [open_at(d) for d in DEPTHS]
        parameters = affine([s.parameters for s in self.small], DEPTHS, layers)
        self.host = _affine_bytes([s.host for s in self.small], layers)
        if parameters is None or (self.small[0].host is not None and self.host is None):
            self.note = "the parameter count or the host bytes are not affine in depth"
            self.parameters, self.host = self._full().parameters, self._full().host
        else:
            self.parameters = parameters

    def _full(self) -> Session:
        if self.full is None:
            self.full = self.open_at(self.layers)
            self.small = []  # no longer needed: free their fake states
        return self.full

    def phase_peaks(self, batch: int, seq: int) -> PhasePeaks:
        if self.full is None:
            phases = extrapolate([s.phase_peaks(batch, seq) for s in self.small], DEPTHS, self.layers)
            if not isinstance(phases, str):
                self.how, self.note = EXTRAPOLATED, None
                return phases
            self.note = phases
        self.how = TRACED
        return self._full().phase_peaks(batch, seq)


def _affine_bytes(values: list[TensorBytes | None], layers: int) -> TensorBytes | None:
    """Host bytes at `layers` from those at DEPTHS (None where there are none, or they are not affine)."""
    if values[0] is None:
        return None
    extrapolated = extrapolate([{None: v} for v in values], DEPTHS, layers)
    return None if isinstance(extrapolated, str) else extrapolated[None]
