"""A full-depth estimate from traces at three small depths: a decoder stack repeats one layer, so once the first and
last layers stand apart from the middle ones, each phase's peak, and each category at it, grows by the same bytes
per layer.

The step is traced at three consecutive depths, lowest first: 1, 2 and 3. Per phase, every category at that phase's
own peak must be exactly affine over the three: then it is extrapolated to the full depth, and the step's peak is the
largest phase (the first of equals, as a trace takes it). Where a figure is not affine there (revexact's layer 0 is a
plain step, so 1 -> 2 -> 3 is not yet a layer's worth each), the ladder climbs one depth at a time, up to 4, 5 and 6,
and stays where it held for the next sizes. Where no rung holds, or the layers are not all alike
(`uniform_layers`), the full depth is traced, as before, and the estimate says which it did.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from revbench.measure.categories import TensorBytes
from revbench.spec import TrainSpec

LADDER = (1, 2, 3, 4, 5, 6)  # the small depths, traced three consecutive ones at a time
RUNG = 3
# Deeper stacks than this are extrapolated unless asked otherwise: the whole ladder costs fewer layers' traces.
EXTRAPOLATE_PAST = sum(LADDER[-RUNG:])
# The byte figures of TensorBytes, each extrapolated on its own.
FIELDS = ("params", "grads", "optimizer", "workspace", "activations", "host_params", "host_grads", "host_optimizer",
          "host_activations")
TRACED, EXTRAPOLATED = "traced", "extrapolated"
# What a small depth may fail with and still leave the full depth to try (a bad spec, ValueError, propagates).
STEP_ERRORS = (RuntimeError, NotImplementedError, TypeError, AssertionError)

PhasePeaks = dict[str | None, TensorBytes]
T = TypeVar("T")


class Session(Protocol):
    """A method prepared once for estimates and stepped at any batch and sequence length."""

    parameters: int
    host: TensorBytes | None  # what the method keeps in host memory, whatever the batch
    how: str  # TRACED or EXTRAPOLATED, for the last phase_peaks
    depths: tuple[int, ...]  # the small depths the last phase_peaks was extrapolated from; () where traced
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
    """A session at the full depth whose steps are traced at three small depths and extrapolated (or, where no rung
    of the ladder extrapolates, traced at the full depth). `how` says which the last `phase_peaks` did, and `depths`
    which small depths it drew on."""

    def __init__(self, open_at: Callable[[int], Session], layers: int, reason: str | None = None) -> None:
        """`reason`: why the layers cannot be extrapolated (see `depth_reason`), if known before any trace."""
        self.open_at, self.layers = open_at, layers
        self.small: dict[int, Session] = {}
        self.traced: dict[tuple[int, int, int], PhasePeaks] = {}  # (depth, batch, seq): a rung shares two depths
        self.first = LADDER[0]  # the lowest rung that has held so far
        self.full: Session | None = None
        self.how, self.depths = TRACED, ()
        self.note = reason  # why the last peak was traced at the full depth
        if reason is None:
            states = self._climb(self._model_states)
            if not isinstance(states, str):
                self.parameters, self.host = states
                return
            self.note = states
        self.parameters, self.host = self._full().parameters, self._full().host

    def _full(self) -> Session:
        if self.full is None:
            self.full = self.open_at(self.layers)
            self.small, self.traced = {}, {}  # no longer needed: free their fake states
        return self.full

    def _at(self, depth: int) -> Session:
        if depth not in self.small:
            self.small[depth] = self.open_at(depth)
        return self.small[depth]

    def _climb(self, extrapolate_at: Callable[[tuple[int, ...]], T | str]) -> T | str:
        """The first rung from the lowest that held before whose traces extrapolate, or why none did."""
        why = f"a stack of {self.layers} layers is within the ladder"
        for first in range(self.first, LADDER[-1] - RUNG + 2):
            depths = tuple(range(first, first + RUNG))
            if depths[-1] >= self.layers:
                break
            try:
                out = extrapolate_at(depths)
            except STEP_ERRORS as exc:
                out = f"at {depths[0]} layers: {type(exc).__name__}: {exc}"
            if not isinstance(out, str):
                self.first, self.depths = first, depths
                for depth in [d for d in self.small if d < first]:  # rungs below are not climbed again
                    del self.small[depth]
                return out
            why = out
        return why

    def _model_states(self, depths: tuple[int, ...]) -> tuple[int, TensorBytes | None] | str:
        steps = [self._at(d) for d in depths]
        parameters = affine([s.parameters for s in steps], depths, self.layers)
        host = _affine_bytes([s.host for s in steps], depths, self.layers)
        if parameters is None or (steps[0].host is not None and host is None):
            return "the parameter count or the host bytes are not affine in depth"
        return parameters, host

    def _peaks(self, depth: int, batch: int, seq: int) -> PhasePeaks:
        if (depth, batch, seq) not in self.traced:
            self.traced[depth, batch, seq] = self._at(depth).phase_peaks(batch, seq)
        return self.traced[depth, batch, seq]

    def phase_peaks(self, batch: int, seq: int) -> PhasePeaks:
        if self.full is None:
            phases = self._climb(lambda depths: extrapolate([self._peaks(d, batch, seq) for d in depths], depths,
                                                            self.layers))
            if not isinstance(phases, str):
                self.how, self.note = EXTRAPOLATED, None
                return phases
            self.note = phases
        self.how, self.depths = TRACED, ()
        return self._full().phase_peaks(batch, seq)

    def guess_peaks(self, batch: int, seq: int) -> PhasePeaks:
        """Each phase's peak on the line through the lower two depths of the rung that held last, unchecked: what
        the three would give wherever the rung still holds, for a third less tracing. A fit's guesses take it; the
        sizes of its answer are checked. Where no rung holds, the full estimate."""
        if self.full is not None or self.how != EXTRAPOLATED:
            return self.phase_peaks(batch, seq)
        depths = self.depths[:2]
        try:
            phases = extrapolate([self._peaks(d, batch, seq) for d in depths], depths, self.layers)
        except STEP_ERRORS:
            return self.phase_peaks(batch, seq)
        return self.phase_peaks(batch, seq) if isinstance(phases, str) else phases


def _affine_bytes(values: list[TensorBytes | None], depths: tuple[int, ...], layers: int) -> TensorBytes | None:
    """Host bytes at `layers` from those at `depths` (None where there are none, or they are not affine)."""
    if values[0] is None:
        return None
    extrapolated = extrapolate([{None: v} for v in values], depths, layers)
    return None if isinstance(extrapolated, str) else extrapolated[None]
