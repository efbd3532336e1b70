"""A method made concrete for one run, in one place: its composition, model, optimizer, options and rank count,
checked against every refusal before any worker starts.

The orchestrator hands a method name, the suite's spec and overrides to `resolve_method` once and gets back a
`ResolvedMethod` whose spec is what the run's record carries: nothing left to "auto" or to a preset's default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from revbench.methods.composition import (
    AXES,
    Composition,
    option_names,
    parse_method,
    technique_class,
    technique_option_names,
)
from revbench.methods.method import techniques
from revbench.models import ModelSpec, build_config, num_experts, parse_dtype
from revbench.ranks import check_divisible
from revbench.spec import OptimizerSpec, TrainSpec
from revbench.states import STATES


@dataclass(frozen=True)
class Overrides:
    """What a suite changes of a named method: an axis replaced, and options keyed by a technique's name, the
    method's name as listed, or its composed name."""

    activations: str | None = None
    states: str | None = None
    loss: str | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedMethod:
    composition: Composition
    spec: TrainSpec

    @property
    def name(self) -> str:
        return self.composition.name


def resolve_model(spec: ModelSpec, device: str) -> ModelSpec:
    """The preset's sizes written out and the dtype made concrete, so the record says what was built."""
    dtype = str(parse_dtype(spec.dtype, device)).removeprefix("torch.")
    if spec.path is not None:  # a checkpoint's config is only known once loaded
        return dataclasses.replace(spec, dtype=dtype)
    config = build_config(spec)
    return dataclasses.replace(spec, dtype=dtype, layers=config.num_hidden_layers, hidden=config.hidden_size,
                               experts=num_experts(config), top_k=config.num_experts_per_tok)


def resolve_optimizer(composition: Composition, optimizer: OptimizerSpec, device: str) -> OptimizerSpec:
    """The optimizer with AdamW's "auto" implementation made concrete for `device`, where the composition's
    model-state technique runs torch's AdamW (8-bit and DeepSpeed's CPU Adam have kernels of their own)."""
    if technique_class("states", composition.states).uses_adamw_implementation:
        return optimizer.resolved(device)
    return optimizer


def merged_options(method: str, composition: Composition, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The options of the run's techniques, then of its method as listed, then of its composed name."""
    merged: dict[str, Any] = {}
    for key in (*composition.techniques(), method, composition.name):
        merged.update(options.get(key, {}))
    return merged


def check_ranks(composition: Composition, ranks: int, batch: int) -> None:
    """Refuse a multi-rank run that could not train as one model on the global batch."""
    if ranks == 1:
        return
    check_divisible(batch, ranks)
    if technique_class("states", composition.states).data_parallel is None:
        sharding = [name for name in STATES if technique_class("states", name).data_parallel]
        raise ValueError(f"method {composition.name!r} cannot run on {ranks} ranks: its model states "
                         f"({composition.states}) stay whole and unsynchronised in each process, so every rank "
                         f"would train its own model; over several ranks use states {', '.join(sharding)}")


def check_option_keys(options: dict[str, dict[str, Any]]) -> None:
    """Options keyed by a technique or a method, against the option names it takes (a ValueError names the first
    unknown one). A technique whose module cannot be imported is left to its run, whose record then says why."""
    for key, values in options.items():
        if not values:
            continue
        try:
            axis = next((a for a, registry in AXES.items() if key in registry), None)
            allowed = technique_option_names(axis, key) if axis else option_names(parse_method(key))
        except ImportError:
            continue
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"options.{key}.{unknown[0]}: unknown option; {key} takes "
                             f"{', '.join(allowed) or 'no options'}")


def resolve_method(method: str, spec: TrainSpec, overrides: Overrides | None = None, ranks: int = 1
                   ) -> ResolvedMethod:
    """`method` (a preset or ACTIVATIONS+STATES+LOSS) with `overrides` applied and `spec` made concrete for its
    device (the overrides' options over the spec's own), after checking that it can run on `ranks` ranks with its
    options (a ValueError says why not)."""
    overrides = overrides or Overrides()
    composition = parse_method(method).with_axes(activations=overrides.activations, states=overrides.states,
                                                 loss=overrides.loss)
    spec = dataclasses.replace(spec, model=resolve_model(spec.model, spec.device),
                               optimizer=resolve_optimizer(composition, spec.optimizer, spec.device),
                               options={**spec.options, **merged_options(method, composition, overrides.options)})
    try:
        check_ranks(composition, ranks, spec.workload.batch)
        reason = techniques(composition, spec)[0].refuses_ranks(composition.states, ranks)
        if reason:
            raise ValueError(f"method {composition.name!r} cannot run on {ranks} ranks: {reason}")
    except ImportError:
        pass  # a technique whose library is missing: its run's record says so
    return ResolvedMethod(composition, spec)
