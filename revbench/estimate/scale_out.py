"""`revbench estimate --gpus N`: per-GPU and per-node host bytes of every data-parallel combination at N ranks,
and with a budget the smallest N at which each fits.

Per GPU = the composition's persistent device model states at N ranks (`sharding`, layout arithmetic) + ZeRO-3's
gathered layer + the activation technique's transient bytes at the per-rank batch. The transient bytes come
from a fake-tensor step of the activation technique with AdamW stepped in backward: its peak falls in backward,
where it holds what forward kept for backward and the gradient being produced (a plain AdamW step's peak may
fall in its optimizer phase, with no activations left). Not counted: the optimizer step's workspace (DDP's
foreach sqrt temporary is as large as the parameters), gradient buckets beyond that one gradient, the CUDA
context and allocator fragmentation.

`workload.batch` is the global batch, as in a run: each of N ranks takes batch/N rows. `--fit` holds that
per-rank batch and adds ranks (the global batch grows with N), as scaling out does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from revbench.activations import ACTIVATIONS
from revbench.estimate.session import estimate_method
from revbench.estimate.sharding import LAYOUTS, ModelShape, RankPeak, rank_states, smallest_ranks
from revbench.methods.composition import Composition
from revbench.methods.method import techniques
from revbench.ranks import check_divisible
from revbench.spec import TrainSpec


def combinations(spec: TrainSpec) -> list[tuple[Composition, str | None]]:
    """Every activations x data-parallel states composition (full loss), with the reason where it cannot run."""
    out = []
    for activations, states in itertools.product(ACTIVATIONS, LAYOUTS):
        composition = Composition(activations, states, "full")
        try:
            techniques(composition, spec)
            out.append((composition, None))
        except ValueError as exc:
            out.append((composition, str(exc)))
    return out


@dataclass
class ScaleOut:
    """The figures of every combination at `ranks` ranks, and the fits when a budget was given."""

    ranks: int
    global_batch: int
    shape: ModelShape
    peaks: dict[str, RankPeak]
    refused: dict[str, str]  # composition -> why it cannot run
    transient_errors: dict[str, str]  # activation technique -> why its fake step failed
    fits: dict[str, int | None]  # composition -> smallest ranks under the budget (None: not up to the cap)


def transient_bytes(activations: str, spec: TrainSpec, target: str) -> tuple[int | None, str | None]:
    estimate = estimate_method(f"{activations}+adamw-in-backward+full", spec, target)
    if estimate.tensor_bytes is None:
        return None, estimate.reason
    return estimate.tensor_bytes.activations, None


def estimate_scale_out(spec: TrainSpec, ranks: int, target: str = "cuda", ranks_per_node: int = 8,
                       budget: int | None = None, host_budget: int | None = None,
                       progress: Callable[[str], None] | None = None) -> ScaleOut:
    """The figures at `ranks` ranks; with `budget` (per GPU, and `host_budget` per node where given) the
    smallest rank count at which each combination fits."""
    check_divisible(spec.workload.batch, ranks)
    rank_batch = spec.workload.batch // ranks
    rank_spec = replace(spec, workload=replace(spec.workload, batch=rank_batch))
    shape = ModelShape.of(spec.model, target)
    found = combinations(spec)
    transient: dict[str, int | None] = {}
    errors: dict[str, str] = {}
    for activations in dict.fromkeys(c.activations for c, reason in found if reason is None):
        if progress:
            progress(f"activations of {activations} at batch {rank_batch} per rank ...")
        transient[activations], error = transient_bytes(activations, rank_spec, target)
        if error:
            errors[activations] = error
    peaks, refused, fits = {}, {}, {}
    for composition, reason in found:
        if reason is not None:
            refused[composition.name] = reason
            continue

        def peak(n: int, c: Composition = composition) -> RankPeak:
            return RankPeak(c.name, n, rank_batch, rank_states(c.states, shape, n, target), transient[c.activations],
                            ranks_per_node)

        peaks[composition.name] = peak(ranks)
        if budget is not None and transient[composition.activations] is not None:
            def fit(n: int, p: Callable[[int], RankPeak] = peak) -> bool:
                at = p(n)
                return at.per_gpu <= budget and (host_budget is None or at.host_per_node <= host_budget)

            fits[composition.name] = smallest_ranks(fit)
    return ScaleOut(ranks, spec.workload.batch, shape, peaks, refused, errors, fits)
