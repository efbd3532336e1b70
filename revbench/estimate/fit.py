"""The largest batch or sequence length whose estimated peak fits a memory budget.

Each probe is a full step of the method's estimate session (fake tensors, or DeepSpeed's layout model plus
fake-tensor activations), never a formula: a formula only chooses which sizes to probe. Peak bytes grow
with batch and sequence length, so the answer is the size `n` with peak(n) <= budget < peak(n + 1), both
probed.

First, a few rounds of interpolation on each step phase's own peak: through the probes nearest the budget, a line
(two sizes) or a parabola (three) per phase (at a fixed sequence length every byte a phase holds grows by the same
amount per sample; in the sequence length attention's and the loss's terms may curve), and the size where the first
phase crosses the budget is probed with its neighbour on the other side. On an affine stretch that is the answer,
proved by the pair. Where it is not, the search grows until a probe fails, then narrows the bracket by linear
interpolation (the peak is piecewise affine in either size), probing each interpolated guess's neighbour at once; it
bisects when interpolation stalls. Every probe made before carries into the search.

Where the estimate is extrapolated in depth, the search's probes are guesses drawn from two depths of the ladder
(a third fewer traces, unchecked); the answer's pair is estimated in full, and if a guess there was off, the
search runs again on full estimates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from revbench.estimate.session import Estimate, Sessions
from revbench.models.zoo import build_config
from revbench.spec import TrainSpec
from revbench.units import format_bytes

AXES = ("batch", "seq")
# While the peak is flat (the optimizer step, not the activations, sets it), sizes grow this much a probe:
# a fake step costs the same at any size, so fewer, farther probes are cheaper.
GROWTH = 4
# Rounds of probing where the phases' curves cross the budget before the search takes over.
ROUNDS = 4
PARABOLA = 3  # the sizes a parabola is drawn through


@dataclass
class Fit:
    """The largest size of `axis` that fits, with the probes that prove it."""

    method: str
    axis: str
    budget_bytes: int
    largest: int | None = None  # None: not even size 1 (batch) or 2 (seq) fits
    capped: bool = False  # the search stopped at `cap` while still fitting
    reason: str | None = None  # set when the method could not be estimated
    probes: dict[int, int] = field(default_factory=dict)  # size -> peak bytes
    seconds: float = 0.0
    host_bytes: int | None = None  # host memory the method needs (DeepSpeed offload; 0 for the others)

    @property
    def peak_bytes(self) -> int | None:
        return self.probes.get(self.largest) if self.largest is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "axis": self.axis, "budget_bytes": self.budget_bytes,
                "largest": self.largest, "peak_bytes": self.peak_bytes, "capped": self.capped,
                "host_bytes": self.host_bytes, "reason": self.reason,
                "probes": {str(k): v for k, v in sorted(self.probes.items())},
                "seconds": round(self.seconds, 2)}


def _next_probe(probes: dict[int, int], lo: int, hi: int | None, budget: int, bisect: bool) -> int:
    """A size strictly between lo (fits) and hi (does not fit; None while no probe has failed)."""
    if hi is None:  # grow 4x, or to the first size the last two probes' slope says is over
        guess = GROWTH * lo
        below = [n for n in probes if n < lo]
        if below:
            prev = max(below)
            slope = (probes[lo] - probes[prev]) / (lo - prev)
            if slope > 0:
                guess = min(guess, lo + int((budget - probes[lo]) / slope) + 1)
        return max(guess, lo + 1)
    if bisect:
        return (lo + hi) // 2
    over = sorted(n for n in probes if probes[n] > budget)
    newton = lo + (budget - probes[lo]) // (probes[lo] - probes[lo - 1]) \
        if lo - 1 in probes and probes[lo] > probes[lo - 1] else hi
    if newton < hi - 1:
        # The peak's slope at lo, from a neighbour pair: where the peak is affine, its line meets the budget
        # at the answer; where it curves upward, past it, which tightens the bracket from above.
        guess = newton
    elif len(over) >= 2 and probes[over[1]] > probes[over[0]]:
        # Two sizes over the budget lie where activations set the peak, which is affine there: their
        # secant puts the crossing exactly, where the bracket's may cut across the flat part.
        a, b = over[0], over[1]
        guess = a - math.ceil((probes[a] - budget) * (b - a) / (probes[b] - probes[a]))
    else:
        guess = lo + int((budget - probes[lo]) * (hi - lo) / (probes[hi] - probes[lo]))  # regula falsi
    return min(max(guess, lo + 1), hi - 1)


def search_largest(peak_at: Callable[[int], int], budget: int, start: int, cap: int,
                   probes: dict[int, int] | None = None) -> tuple[int | None, bool, dict[int, int]]:
    """(largest size <= cap with peak_at(size) <= budget, whether the cap was hit, every probe). `probes`
    (size -> peak) seeds the search with earlier probes, e.g. of the same method under another budget."""
    probes = probes if probes is not None else {}

    def fits(n: int) -> bool:
        if n not in probes:
            probes[n] = peak_at(n)
        return probes[n] <= budget

    # The peak grows with the size, so the seeds already bracket the answer.
    lo = max((n for n, peak in probes.items() if start <= n <= cap and peak <= budget), default=None)
    hi = min((n for n, peak in probes.items() if n > (lo or start - 1) and peak > budget), default=None)
    if lo is None:
        if not fits(start):
            return None, False, probes
        lo = start
    bisect = False
    while hi is None or hi - lo > 1:
        if hi is None and lo >= cap:
            return cap, True, probes
        n = min(_next_probe(probes, lo, hi, budget, bisect), cap)
        width = (hi or 2 * cap) - lo
        pair = hi is not None and not bisect
        if fits(n):
            lo = n
            # An interpolated guess on an affine stretch lands on the answer: its neighbour proves it.
            if pair and n + 1 < hi:
                lo, hi = (n + 1, hi) if fits(n + 1) else (lo, n + 1)
        else:
            hi = n
            if pair and n - 1 > lo:
                lo, hi = (n - 1, hi) if fits(n - 1) else (lo, n - 1)
        # Interpolation can creep along one side of a curved peak: alternate with bisection when it does,
        # though not right after a neighbour pair, whose local slope gives the next guess.
        bisect = hi is not None and (hi - lo) * 2 > width and not pair
    return lo, False, probes


def curve_crossing(phases: dict[int, dict[str | None, int]], budget: int, lo: int, top: int) -> int | None:
    """The largest size in [lo, top] at which no phase's curve through the probed `phases` (size -> each phase's
    peak) passes `budget`: a line through two sizes, a parabola through three. `lo` is a probed size that fits.
    A parabola that bends down (a peak that changes piece between the sizes, not a curve) gives way to the line
    through `lo` and its nearest neighbour. None where fewer than two sizes are given. The curves only choose which
    size to probe next."""
    sizes = sorted(phases)
    if len(sizes) < 2:
        return None
    above = [n for n in sizes if n > lo]
    pair = [lo, above[0]] if above else [max(n for n in sizes if n < lo), lo]
    curves = []
    for name in (p for p in phases[sizes[0]] if all(p in phases[n] for n in sizes)):
        values = [phases[n][name] for n in sizes]
        if len(sizes) > 2 and _curvature(sizes, values) < 0:
            curves.append((pair, [phases[n][name] for n in pair]))
        else:
            curves.append((sizes, values))

    def fits(n: int) -> bool:
        return all(_through(xs, ys, n) <= budget for xs, ys in curves)

    if fits(top):
        return top
    below, over = lo, top  # fits(below), not fits(over): the peak grows with the size
    while over - below > 1:
        middle = (below + over) // 2
        below, over = (middle, over) if fits(middle) else (below, middle)
    return below


def _curvature(xs: list[int], ys: list[int]) -> Fraction:
    """The second derivative of the parabola through three points (twice its leading coefficient)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    return 2 * (Fraction(y2 - y1, x2 - x1) - Fraction(y1 - y0, x1 - x0)) / (x2 - x0)


def _through(xs: list[int], ys: list[int], x: int) -> Fraction:
    """The polynomial through the points (xs, ys), at x (Lagrange's form, exact)."""
    total = Fraction(0)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        term = Fraction(yi)
        for j, xj in enumerate(xs):
            if j != i:
                term *= Fraction(x - xj, xi - xj)
        total += term
    return total


def fit_method(name: str, spec: TrainSpec, budget: int, axis: str = "batch", target: str = "cuda",
               cap: int | None = None, progress: Callable[[str], None] | None = None,
               probes: dict[int, int] | None = None, sessions: Sessions | None = None) -> Fit:
    """Find the largest batch (at the spec's seq) or seq (at its batch) of `name` under `budget` bytes.
    `probes` carries earlier probes of the same method, spec and axis in, and this search's out; `sessions`
    (of the same spec and target) shares the built methods between searches.

    The search probes with guesses (`Sessions.estimate(guess=True)`: two depths of the ladder, unchecked); the
    answer's pair is then estimated in full, and where a guess there was off, the search runs again on full
    estimates alone."""
    if axis not in AXES:
        raise ValueError(f"unknown fit axis {axis!r}; choose one of {', '.join(AXES)}")
    if cap is None:  # sequences stop at the model's positions; batches at a size no GPU holds
        cap = build_config(spec.model).max_position_embeddings if axis == "seq" else 4096
    result = Fit(name, axis, budget)
    failure: list[Estimate] = []
    sessions = sessions or Sessions(spec, target)
    probes = probes if probes is not None else {}
    checked = set(probes)  # sizes whose probe is a full estimate (the seeds are)

    def estimate_at(n: int, guess: bool) -> Estimate:
        workload = replace(spec.workload, **{axis: n})
        estimate = sessions.estimate(name, workload.batch, workload.seq, guess)
        if estimate.peak_bytes is None:
            failure.append(estimate)
            raise _NotEstimable
        return estimate

    def peak_at(n: int, guess: bool) -> int:
        estimate = estimate_at(n, guess)
        result.seconds += estimate.seconds
        result.host_bytes = estimate.host_peak_bytes
        if not guess:
            checked.add(n)
        if progress:
            progress(f"{name}: {axis} {n} -> {format_bytes(estimate.peak_bytes)}{' (guess)' if guess else ''}")
        return estimate.peak_bytes

    def search(guess: bool) -> tuple[int | None, bool]:
        peak = functools.partial(peak_at, guess=guess)
        fits = functools.partial(_fits, peak, probes, budget)

        def phases(n: int) -> dict[str | None, int]:
            _probe(peak, probes, n)
            return estimate_at(n, guess).phase_peaks  # set: estimate_at raised otherwise

        _interpolate(phases, fits, probes, budget, getattr(spec.workload, axis), start, cap)
        largest, capped, _ = search_largest(peak, budget, start, cap, probes)
        return largest, capped

    start = 1 if axis == "batch" else 2
    try:
        result.largest, result.capped = search(guess=True)
        full = {n: peak_at(n, guess=False) for n in sorted(_answer(result.largest, result.capped, start, cap))
                if n not in checked}
        off = any(probes[n] != peak for n, peak in full.items())
        probes.update(full)
        if off:
            for n in set(probes) - checked:
                del probes[n]
            result.largest, result.capped = search(guess=False)
    except _NotEstimable:
        result.reason = failure[0].reason
    result.probes = probes
    return result


def _answer(largest: int | None, capped: bool, start: int, cap: int) -> set[int]:
    """The sizes whose probes prove a search's answer: the largest that fits and the next, which does not."""
    if largest is None:
        return {start}
    return {largest} if capped or largest == cap else {largest, largest + 1}


def _interpolate(phases: Callable[[int], dict[str | None, int]], fits: Callable[[int], bool],
                 probes: dict[int, int], budget: int, given: int, start: int, cap: int) -> None:
    """Probe where the phases' curves through the probes nearest the budget cross it, a few rounds, from the given
    size and twice it (or, where the given does not fit, the smallest); once a parabola crosses inside the
    bracket, with the guess's neighbour on the other side. On an affine stretch that pair ends the search."""
    first = min(max(given, start), cap)
    if not fits(first) and (first == start or not fits(start)):
        return  # nothing fits
    if len(probes) < 2 and first < cap:
        # The first line is drawn from the given size to twice it, on the same affine piece. From the smallest size
        # instead (a seq of 2, where the loss's chunks are not yet full) a line from 4,096 missed by thousands.
        fits(min(2 * first, cap))
    for _ in range(ROUNDS):
        lo = max(n for n in probes if start <= n <= cap and probes[n] <= budget)
        hi = min((n for n in probes if n > lo and probes[n] > budget), default=None)
        if (hi or cap + 1) - lo <= 1:
            return
        near = sorted((n for n in probes if n >= start), key=lambda n: (n not in (lo, hi), abs(n - lo)))[:3]
        # Past the largest probe the curves only grow GROWTH-fold a round: a probe far out may cost many times one
        # near (the chunked loss's steps grow with the tokens).
        top = hi - 1 if hi else min(cap, GROWTH * lo)
        guess = curve_crossing({n: phases(n) for n in near}, budget, lo, top)
        if guess is None or guess == lo:
            guess = lo + 1  # the curves say lo is the answer: its neighbour proves it
        if guess in probes:
            return
        # A line through two far sizes only starts a curve, and a curve drawn past every probe only guesses; a
        # parabola's crossing inside the bracket is worth proving at once.
        side = guess + 1 if fits(guess) else guess - 1
        if len(near) == PARABOLA and hi is not None and lo < side < hi and side not in probes:
            fits(side)


def _probe(peak_at: Callable[[int], int], probes: dict[int, int], n: int) -> int:
    """The peak at `n`, probed once."""
    if n not in probes:
        probes[n] = peak_at(n)
    return probes[n]


def _fits(peak_at: Callable[[int], int], probes: dict[int, int], budget: int, n: int) -> bool:
    return _probe(peak_at, probes, n) <= budget


class _NotEstimable(Exception):
    pass
