"""`revbench estimate --gpus N`: per-GPU and per-node host bytes of every data-parallel combination at N ranks,
and with a budget the smallest N at which each fits.

Per GPU = the composition's persistent device model states at N ranks (`sharding`, layout arithmetic) + what ZeRO-3
holds gathered in backward and a MoE block's gradients (`zero3_gather`) + the activation technique's transient bytes
at the per-rank batch. FSDP2 is no layout model: its own `fully_shard` steps on fake tensors as rank 0 of N on a
fake process group (`fake_group`), and its peak is that step's, every category at once (gathered layers and
reduce-scatter buffers included). The transient bytes come from a fake-tensor step of the activation technique
with AdamW stepped in backward: its peak falls in backward, where it holds what forward kept for backward and the
gradient being produced (a plain AdamW step's peak may fall in its optimizer phase, with no activations left).
Not counted: the optimizer step's workspace (DDP's foreach sqrt temporary is as large as the parameters), gradient
buckets beyond that one gradient, the CUDA context and allocator fragmentation.

`workload.batch` is the global batch, as in a run: each of N ranks takes batch/N rows. `--fit` holds that
per-rank batch and adds ranks (the global batch grows with N), as scaling out does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from revbench.activations import ACTIVATIONS
from revbench.estimate.fake_step import FAKE_WORLD_STATES
from revbench.estimate.leaf_end import leaf_end_drop
from revbench.estimate.session import Estimate, Sessions
from revbench.estimate.sharding import LAYOUTS, ModelShape, RankPeak, RankStates, rank_states, smallest_ranks
from revbench.methods.composition import Composition, option_names
from revbench.methods.method import techniques
from revbench.ranks import check_divisible
from revbench.spec import TrainSpec
from revbench.states.zero import Zero


def combinations(spec: TrainSpec) -> list[tuple[Composition, str | None]]:
    """Every activations x data-parallel states composition (full loss), with the reason where it cannot run."""
    out = []
    for activations, states in itertools.product(ACTIVATIONS, [*LAYOUTS, *FAKE_WORLD_STATES]):
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
    transient_errors: dict[str, str]  # activation technique (or FSDP2 composition) -> why its fake step failed
    fits: dict[str, int | None]  # composition -> smallest ranks under the budget (None: not up to the cap)


TRANSIENT_STATES = "adamw-in-backward"  # the transients' own states: AdamW stepped in backward, unsharded


def transient_spec(spec: TrainSpec) -> TrainSpec:
    """`spec` for the transients' fake steps: without the options of the sharded states (a ZeRO `config`), which
    their own states do not take."""
    taken = {name for activations in ACTIVATIONS
             for name in option_names(Composition(activations, TRANSIENT_STATES, "full"))}
    return replace(spec, options={k: v for k, v in spec.options.items() if k in taken})


class RankPeaks:
    """Per-GPU figures of compositions at any rank count and per-rank batch, each fake-tensor session built once:
    the activation techniques' transients (with AdamW stepped in backward, one session for every batch) and
    FSDP2's own step (one session per rank count)."""

    def __init__(self, spec: TrainSpec, target: str, ranks_per_node: int = 8) -> None:
        self.spec, self.target, self.ranks_per_node = spec, target, ranks_per_node
        self.shape = ModelShape.of(spec.model, target)
        self.shapes: dict[str, ModelShape] = {}  # by activation technique: the model each one trains
        self.transients = Sessions(transient_spec(spec), target)
        self.traced: dict[int, Sessions] = {}
        self.drops: dict[tuple[str, int], int] = {}  # (activation technique, batch) -> leaf_end_drop

    def trained_shape(self, composition: Composition) -> ModelShape:
        """The shape of the model the composition trains, whose parameters the states shard."""
        if composition.activations not in self.shapes:
            activations = techniques(composition, self.spec)[0]
            self.shapes[composition.activations] = ModelShape.of(self.spec.model, self.target, activations)
        return self.shapes[composition.activations]

    def transient(self, activations: str, batch: int) -> Estimate:
        return self.transients.estimate(f"{activations}+{TRANSIENT_STATES}+full", batch, self.spec.workload.seq)

    def at_leaf_end(self, activations: str, batch: int, transient: int) -> int:
        """The technique's bytes when a MoE block's backward ends, where ZeRO-3 reduces the block's gradients."""
        if (activations, batch) not in self.drops:
            spec = transient_spec(self.spec)
            spec = replace(spec, workload=replace(spec.workload, batch=batch))
            self.drops[activations, batch] = leaf_end_drop(f"{activations}+{TRANSIENT_STATES}+full", spec,
                                                           self.target)
        return transient - self.drops[activations, batch]

    def estimate(self, composition: Composition, ranks: int, batch: int) -> Estimate:
        """The fake-tensor estimate a composition's figure comes from: FSDP2's own step at `ranks` ranks, else its
        activation technique's transient."""
        if composition.states not in FAKE_WORLD_STATES:
            return self.transient(composition.activations, batch)
        if ranks not in self.traced:
            self.traced[ranks] = Sessions(self.spec, self.target, ranks=ranks)
        return self.traced[ranks].estimate(composition.name, batch, self.spec.workload.seq)

    def reason(self, composition: Composition, ranks: int, batch: int) -> str | None:
        """Why the composition has no figure at this size (its fake step failed), or None."""
        estimate = self.estimate(composition, ranks, batch)
        return estimate.reason if estimate.tensor_bytes is None else None

    def peak(self, composition: Composition, ranks: int, batch: int) -> RankPeak:
        estimate = self.estimate(composition, ranks, batch)
        if composition.states in FAKE_WORLD_STATES:
            return traced_peak(estimate, ranks, batch, self.ranks_per_node)
        activations, technique = techniques(composition, self.spec)[:2]
        config = technique.config_path if isinstance(technique, Zero) else None
        states = rank_states(composition.states, self.trained_shape(composition), ranks, self.target, config)
        transient = estimate.tensor_bytes.activations if estimate.tensor_bytes else None
        at_leaf_end = self.at_leaf_end(composition.activations, batch, transient) \
            if transient is not None and states.leaf_grads and not activations.layer_gradients_at_once else None
        return RankPeak(composition.name, ranks, batch, states, transient, self.ranks_per_node, at_leaf_end)


def traced_peak(estimate: Estimate, ranks: int, rank_batch: int, ranks_per_node: int) -> RankPeak:
    """One rank's figures from the composition's own step at `ranks` ranks: its model states at the peak as the
    states, the rest (activations, gathered weights, buffers in flight) as the transient."""
    device, host = estimate.tensor_bytes, estimate.host_bytes
    if device is None:
        return RankPeak(estimate.method, ranks, rank_batch, RankStates(0, 0, 0), None, ranks_per_node)
    host_params, host_grads, host_optimizer = (host.params, host.grads, host.optimizer) if host else (0, 0, 0)
    states = RankStates(params=device.params + host_params, grads=device.grads + host_grads,
                        optimizer=device.optimizer + host_optimizer, host_params=host_params, host_grads=host_grads,
                        host_optimizer=host_optimizer)
    return RankPeak(estimate.method, ranks, rank_batch, states, device.activations + device.workspace, ranks_per_node)


def estimate_scale_out(spec: TrainSpec, ranks: int, target: str = "cuda", ranks_per_node: int = 8,
                       budget: int | None = None, host_budget: int | None = None,
                       progress: Callable[[str], None] | None = None) -> ScaleOut:
    """The figures at `ranks` ranks; with `budget` (per GPU, and `host_budget` per node where given) the
    smallest rank count at which each combination fits."""
    check_divisible(spec.workload.batch, ranks)
    rank_batch = spec.workload.batch // ranks
    peaks_at = RankPeaks(replace(spec, workload=replace(spec.workload, batch=rank_batch)), target, ranks_per_node)
    found = combinations(spec)
    errors: dict[str, str] = {}
    for activations in dict.fromkeys(c.activations for c, reason in found if reason is None):
        if progress:
            progress(f"activations of {activations} at batch {rank_batch} per rank ...")
        estimate = peaks_at.transient(activations, rank_batch)
        if estimate.tensor_bytes is None:
            errors[activations] = estimate.reason or "no estimate"
    peaks, refused, fits = {}, {}, {}
    for composition, reason in found:
        if reason is not None:
            refused[composition.name] = reason
            continue

        def peak(n: int, c: Composition = composition) -> RankPeak:
            return peaks_at.peak(c, n, rank_batch)

        if composition.states in FAKE_WORLD_STATES and progress:
            progress(f"{composition.name}: fully_shard over {ranks} fake ranks ...")
        peaks[composition.name] = peak(ranks)
        if peaks[composition.name].per_gpu is None and composition.states in FAKE_WORLD_STATES:
            errors[composition.name] = peaks_at.reason(composition, ranks, rank_batch) or "no estimate"
        if budget is not None and peaks[composition.name].per_gpu is not None:
            def fit(n: int, p: Callable[[int], RankPeak] = peak) -> bool:
                at = p(n)
                return at.per_gpu is not None and at.per_gpu <= budget and (
                    host_budget is None or at.host_per_node <= host_budget)

            fits[composition.name] = smallest_ranks(fit)
    return ScaleOut(ranks, spec.workload.batch, peaks_at.shape, peaks, refused, errors, fits)
