"""Extrapolated estimates equal traced ones to the byte.

Depth (estimate/depth.py): an estimate traced at three small depths and extrapolated equals a full trace at a depth
it did not trace, for every composition the registries allow on tiny-qwen2-moe (loss `full`; `chunked` once per
activation technique) and for the presets on the other families; both sides run in two processes (fake-tensor steps
are Python-bound), about a minute and a half on 2 cores. Size (estimate/fit.py): the largest batch or sequence
found from the phases' lines is the one a search without them finds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from revbench.estimate import fit_method, search_largest
from revbench.estimate.depth import EXTRAPOLATE_PAST, EXTRAPOLATED, LADDER, RUNG, TRACED, affine, extrapolate, step_peak
from revbench.estimate.fit import curve_crossing
from revbench.estimate.session import Estimate, Sessions, estimate_method
from revbench.loss import chunked
from revbench.measure.categories import TensorBytes
from revbench.methods import METHODS
from revbench.methods.method import combinations
from revbench.models import ModelSpec
from revbench.processes import map_processes
from revbench.spec import TrainSpec
from revbench.workload import Workload

LAYERS = 7  # past the ladder, and not one of its depths
DEPTHS = (3, 4, 5)
FAMILIES = ("tiny-qwen3-moe", "tiny-olmoe", "tiny-mixtral")


def cases() -> list[tuple[str, str]]:
    every = [c for c in combinations() if c.loss == "full"]
    chunked = [c for c in combinations() if c.loss == "chunked" and c.states == "adamw-8bit-in-backward"]
    return ([("tiny-qwen2-moe", c.name) for c in every + chunked]
            + [(preset, name) for preset in FAMILIES for name in METHODS if name != "lora"])


def spec(preset: str, name: str) -> TrainSpec:
    return TrainSpec(model=ModelSpec(preset, layers=LAYERS), workload=Workload(batch=2, seq=64, data="synthetic"),
                     options={"chunk_tokens": 32} if name.endswith("chunked") else {})


def both(case: tuple[str, str]) -> tuple[str, str, dict, dict]:
    """(preset, method, extrapolated estimate, full trace), each as its dict with the host figures beside it."""
    preset, name = case
    out = []
    for extrapolated in (True, False):
        e = estimate_method(name, spec(preset, name), "cuda", extrapolated)
        out.append({**e.to_dict(), "host": e.host_bytes.to_dict() if e.host_bytes else None})
    return preset, name, out[0], out[1]


def test_extrapolated_estimates_equal_full_traces_to_the_byte() -> None:
    results = map_processes(both, cases(), jobs=2)
    assert len(results) >= 40
    for preset, name, extrapolated, traced in results:
        assert traced["status"] == "ok", (preset, name, traced["reason"])
        assert (extrapolated["depth"], traced["depth"]) == (EXTRAPOLATED, TRACED), (preset, name,
                                                                                  extrapolated["depth_note"])
        differ = {k: (extrapolated[k], traced[k]) for k in traced if k not in ("depth", "depths", "seconds")
                  and extrapolated[k] != traced[k]}
        assert not differ, (preset, name, differ)


def _bytes(activations: int, phase: str) -> TensorBytes:
    return TensorBytes(params=100, grads=0, optimizer=200, activations=activations, method="t", phase=phase)


def test_a_line_through_equally_spaced_depths_extrapolates_and_anything_else_does_not() -> None:
    assert affine([10, 13, 16], DEPTHS, 24) == 16 + 3 * 19
    assert affine([10, 13, 17], DEPTHS, 24) is None
    grown = extrapolate([{"forward": _bytes(a, "forward"), "backward": _bytes(2 * a, "backward")}
                         for a in (30, 40, 50)], DEPTHS, 10)
    assert grown == {"forward": _bytes(100, "forward"), "backward": _bytes(200, "backward")}
    assert step_peak(grown).phase == "backward"
    bent = extrapolate([{"backward": _bytes(a, "backward")} for a in (30, 40, 51)], DEPTHS, 10)
    assert bent == "backward activations is not affine in depth"
    assert extrapolate([{"forward": _bytes(1, "forward")}, {}, {}], DEPTHS, 10) == \
        "the step's phases differ between depths"


def test_a_step_peak_takes_the_first_of_equal_phases() -> None:
    assert step_peak({"backward": _bytes(50, "backward"), "optimizer": _bytes(50, "optimizer")}).phase == "backward"


def test_layers_that_are_not_all_alike_are_traced_at_full_depth_and_say_why() -> None:
    mixed = replace(spec("tiny-qwen3-moe", "standard"),
                    model=ModelSpec("tiny-qwen3-moe", layers=LAYERS, config={"mlp_only_layers": [1]}))
    estimate = Sessions(mixed, "cuda", extrapolate=True).estimate("standard", 2, 64)
    assert (estimate.status, estimate.depth) == ("ok", TRACED)
    assert estimate.depth_note == "some of its layers are dense (mlp_only_layers)"


@pytest.mark.parametrize("layers", [LADDER[RUNG - 1], EXTRAPOLATE_PAST])
def test_shallow_stacks_are_traced_unless_asked(layers: int) -> None:
    shallow = replace(spec("tiny-qwen2-moe", "standard"), model=ModelSpec("tiny-qwen2-moe", layers=layers))
    assert estimate_method("standard", shallow).depth == TRACED


def test_the_curves_cross_the_budget_where_the_first_phase_does() -> None:
    phases = {n: {"forward": 10 * n, "backward": 100 + 20 * n, "optimizer": 150} for n in (2, 3)}
    assert curve_crossing(phases, 250, 2, 4096) == 7  # backward: 100 + 20 x 7 = 240
    assert curve_crossing({n: {"optimizer": 150} for n in (2, 3)}, 200, 2, 64) == 64  # nothing grows: the top
    squares = {n: {"backward": n * n} for n in (2, 10, 20)}  # a parabola through three sizes
    assert curve_crossing(squares, 1000, 2, 4096) == 31  # 31^2 = 961, 32^2 = 1024
    assert curve_crossing({2: {"backward": 4}}, 1000, 2, 4096) is None  # one size draws no curve


@pytest.mark.parametrize(("name", "axis"), [
    ("standard", "batch"), ("checkpoint+adamw-8bit-in-backward+chunked", "batch"), ("revexact", "batch"),
    ("zero3-offload", "batch"), ("revffn", "seq")])
def test_the_fit_from_the_lines_is_the_search_without_them(name: str, axis: str) -> None:
    small = replace(spec("tiny-qwen2-moe", name), model=ModelSpec("tiny-qwen2-moe", layers=2))
    sessions = Sessions(small, "cuda")

    def peak_at(n: int) -> int:
        return sessions.estimate(name, *((n, 64) if axis == "batch" else (2, n))).peak_bytes

    budget = peak_at(5 if axis == "batch" else 200)
    searched, _, _ = search_largest(peak_at, budget, 1 if axis == "batch" else 2, 4096)
    fit = fit_method(name, small, budget, axis, cap=4096, sessions=sessions)
    assert fit.largest == searched and fit.peak_bytes <= budget < fit.probes[fit.largest + 1]


@pytest.mark.parametrize(("name", "axis"), [
    ("checkpoint+adamw-8bit-in-backward+chunked", "batch"), ("revexact", "batch"), ("revffn", "seq")])
def test_a_fit_from_guesses_is_the_search_of_full_estimates(name: str, axis: str) -> None:
    """At a depth past the ladder the fit probes with guesses (two depths, unchecked); its answer is the search's
    over full estimates, and the pair that proves it is made of full estimates."""
    deep = spec("tiny-qwen2-moe", name)
    sessions = Sessions(deep, "cuda", extrapolate=True)

    def size(n: int) -> tuple[int, int]:
        return (n, 64) if axis == "batch" else (2, n)

    def peak_at(n: int) -> int:
        return sessions.estimate(name, *size(n)).peak_bytes

    budget = peak_at(5 if axis == "batch" else 200)
    searched, _, _ = search_largest(peak_at, budget, 1 if axis == "batch" else 2, 4096)
    fit = fit_method(name, deep, budget, axis, cap=4096, sessions=Sessions(deep, "cuda", extrapolate=True))
    assert fit.largest == searched
    assert fit.probes[fit.largest] == peak_at(fit.largest) <= budget < fit.probes[fit.largest + 1] == \
        peak_at(fit.largest + 1)


class OptimisticGuesses(Sessions):
    """Sessions whose guesses say a size takes 10 % less than it does: a rung that stopped holding."""

    def __init__(self) -> None:
        super().__init__(spec("tiny-qwen2-moe", "standard"), "cuda")
        self.calls: list[tuple[int, bool]] = []

    def estimate(self, name: str, batch: int, seq: int, guess: bool = False) -> Estimate:
        self.calls.append((batch, guess))
        peak = 1000 + 100 * batch - (10 * batch if guess else 0)
        return Estimate(name, "ok", tensor_bytes=TensorBytes(0, 0, 0, peak, "stand-in", phase="backward"),
                        phase_peaks={"backward": peak})


def test_a_guess_that_is_off_at_the_answer_sends_the_search_to_full_estimates() -> None:
    sessions = OptimisticGuesses()
    fit = fit_method("standard", sessions.spec, 2000, "batch", cap=64, sessions=sessions)
    assert fit.largest == 10  # 1000 + 100 x 10 = 2000; the guesses would say 11 (1990)
    assert fit.probes == {n: 1000 + 100 * n for n in fit.probes}  # no guess is left among the probes
    assert (11, False) in sessions.calls and any(guess for _, guess in sessions.calls)


@pytest.mark.parametrize("name", ["store+adamw+chunked", "checkpoint+adamw-8bit-in-backward+chunked",
                                  "revexact+adamw-8bit-in-backward+chunked", "revffn+zero3-offload+chunked"])
def test_an_estimate_from_two_chunks_is_the_estimate_from_every_chunk(name: str, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    """On fake tensors the chunked loss runs its first and last chunk only: the estimate is the one every chunk
    gives, to the byte (2 x 137 tokens: eight chunks of 32 and a short ninth)."""
    short = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=2),
                      workload=Workload(batch=2, seq=137, data="synthetic"), options={"chunk_tokens": 32})

    def estimate() -> dict:
        e = estimate_method(name, short, "cuda")
        assert e.status == "ok", e.reason
        return {**e.to_dict(), "seconds": None, "phases": e.phase_peaks, "host": e.host_bytes}

    two = estimate()
    monkeypatch.setattr(chunked, "_is_fake", lambda t: False)
    assert estimate() == two
