"""From a suite to runs: expand the grid, resolve every default (device, dtype, preset sizes), name each run.

A run's `config` is what its record carries: the full TrainSpec with nothing left to "auto" or to a
preset's default, plus the step counts, repeat, memory budget, GPU count and timeout.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from revbench.data import Workload
from revbench.methods import AXES, Composition, OptimizerSpec, TrainSpec, option_names, parse_method
from revbench.methods.composition import resolve_optimizer, technique_class
from revbench.methods.method import techniques
from revbench.models import ModelSpec, build_config, num_experts, parse_dtype
from revbench.orchestrator.schema import FieldError, set_dotted
from revbench.orchestrator.suite import Suite, SuiteError, parse_suite
from revbench.ranks import check_divisible
from revbench.records import run_id
from revbench.states import STATES
from revbench.units import format_bytes

# Settings that change how long a run may take, not what it measures: a different value is the same run.
_NOT_IDENTITY = ("timeout_s",)


@dataclass(frozen=True)
class PlannedRun:
    suite: str
    method: str
    config: dict[str, Any]

    @property
    def run_id(self) -> str:
        identity = {k: v for k, v in self.config.items() if k not in _NOT_IDENTITY}
        return run_id(self.suite, self.method, identity, self.config["repeat"])

    @property
    def point(self) -> str:
        """What the run measures apart from the method and repeat: model, depth, batch × seq, budget."""
        model, workload = self.config["model"], self.config["workload"]
        text = f"{model['preset']} L{model['layers']} · {workload['batch']}×{workload['seq']}"
        if world_size(self.config) > 1:
            text += f" · {world_size(self.config)} ranks"
        if self.config["memory_budget_bytes"] is not None:
            text += f" · budget {format_bytes(self.config['memory_budget_bytes'])}"
        return text

    @property
    def label(self) -> str:
        return f"{self.method} · {self.point}" + (f" · r{self.config['repeat']}" if self.config["repeat"] else "")


def resolve_device(device: str, gpus: int = 1, ranks: int = 1) -> str:
    """`auto` becomes cuda when a GPU is present, else cpu; a device that is not here is refused, and so is a rank
    count the device cannot take (`gpus` counts CUDA ranks, `ranks` CPU ones)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise FieldError("device", f"asks for {device!r} but CUDA is not available here "
                         "(use --device cpu, or --device auto for the best device present)")
    if gpus > 1:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if kind != "cuda" or count < gpus:
            raise FieldError("gpus", f"asks for {gpus} GPUs, but this machine has {count} CUDA device(s) and the "
                             f"run is on {device!r}; a multi-GPU run is launched through torchrun and needs "
                             f"that many CUDA devices (use --set gpus=1 to run on one device, or --set ranks={gpus} "
                             f"for {gpus} CPU ranks)")
    if ranks > 1 and kind != "cpu":
        raise FieldError("ranks", f"counts CPU ranks, but the run is on {device!r}; on CUDA set gpus={ranks} "
                         f"(one rank per GPU)")
    return device


def world_size(config: dict[str, Any]) -> int:
    """How many ranks a run's config asks for (records from before CPU ranks have no `ranks`)."""
    return config.get("ranks", 1) if torch.device(config["device"]).type == "cpu" else config["gpus"]


def check_ranks(composition: Composition, ranks: int, batch: int) -> None:
    """Refuse, before any worker starts, a multi-rank run that could not train as one model on the global batch."""
    if ranks == 1:
        return
    check_divisible(batch, ranks)
    states = technique_class("states", composition.states)
    if states.data_parallel is None:
        sharding = [name for name in STATES if technique_class("states", name).data_parallel]
        raise ValueError(f"method {composition.name!r} cannot run on {ranks} ranks: its model states "
                         f"({composition.states}) stay whole and unsynchronised in each process, so every rank "
                         f"would train its own model; over several ranks use states {', '.join(sharding)}")


def resolve_model(spec: ModelSpec, device: str) -> ModelSpec:
    """The preset's sizes written out and the dtype made concrete, so the record says what was built."""
    dtype = str(parse_dtype(spec.dtype, device)).removeprefix("torch.")
    if spec.path is not None:  # a checkpoint's config is only known once loaded
        return dataclasses.replace(spec, dtype=dtype)
    config = build_config(spec)
    return dataclasses.replace(spec, dtype=dtype, layers=config.num_hidden_layers, hidden=config.hidden_size,
                               experts=num_experts(config), top_k=config.num_experts_per_tok)


def grid_points(suite: Suite) -> list[Suite]:
    """One sweep-free suite per point of the grids, in order, each point once."""
    base = suite.to_dict()
    base["sweeps"], base["search"] = [], []
    points: list[Suite] = []
    for index, grid in enumerate(suite.sweeps or [{}]):
        for values in itertools.product(*grid.values()):
            data = copy.deepcopy(base)
            assigned = dict(zip(grid, values, strict=True))
            for key, value in assigned.items():
                set_dotted(data, key, value)
            point = parse_suite(data, f"sweeps[{index}] at {assigned}")
            if point not in points:
                points.append(point)
    return points


def with_value(point: Suite, key: str, value: Any) -> Suite:
    data = point.to_dict()
    set_dotted(data, key, value)
    return parse_suite(data, f"{key}={value!r}")


def composition_of(point: Suite, method: str) -> Composition:
    """The method with the suite's axis overrides applied."""
    return parse_method(method).with_axes(activations=point.activations, states=point.states, loss=point.loss)


def run_options(point: Suite, method: str, composition: Composition) -> dict[str, Any]:
    """The options of the run's techniques, then of its method as listed, then of its composed name."""
    options: dict[str, Any] = {}
    for key in (*composition.techniques(), method, composition.name):
        options.update(point.options.get(key, {}))
    return options


def plan_run(point: Suite, method: str, repeat: int = 0, search_key: str | None = None) -> PlannedRun:
    try:
        device = resolve_device(point.device, point.gpus, point.ranks)
    except FieldError as exc:
        raise SuiteError(f"suite {point.name!r}: {exc}") from None
    composition = composition_of(point, method)
    spec = TrainSpec(model=resolve_model(point.model, device), workload=point.workload,
                     optimizer=resolve_optimizer(composition, point.optimizer, device), seed=point.seed, device=device,
                     options=run_options(point, method, composition))
    try:
        check_ranks(composition, point.ranks if torch.device(device).type == "cpu" else point.gpus,
                    point.workload.batch)
        techniques(composition, spec)  # refuse a combination that cannot run before any worker starts
    except ImportError:
        pass  # a technique whose library is missing: its run's record says so
    except ValueError as exc:
        raise SuiteError(f"suite {point.name!r}: {exc}") from None
    config = {
        **spec.to_dict(),
        "techniques": composition.to_dict(),
        "steps": point.steps,
        "warmup": point.warmup,
        "repeat": repeat,
        "gpus": point.gpus,
        "ranks": point.ranks,
        "memory_budget_bytes": point.memory_budget,
        "search_key": search_key,
        "timeout_s": point.timeout_s,
    }
    return PlannedRun(suite=point.name, method=composition.name, config=config)


def grid_runs(suite: Suite) -> list[PlannedRun]:
    """Every run of the grid: point by point, method by method, repeat by repeat. Points that differ only
    in another method's options give the same run of this method, which is listed once."""
    runs = {}
    for point in grid_points(suite):
        for method in suite.methods:
            for repeat in range(suite.repeats):
                run = plan_run(point, method, repeat)
                runs.setdefault(run.run_id, run)
    return list(runs.values())


def check_options(suite: Suite) -> None:
    """Options against the option names of the technique or method they are keyed by, before anything runs.
    A technique whose module cannot be imported is left to its run, whose record then says why."""
    for key, options in suite.options.items():
        if not options:
            continue
        try:
            axis = next((a for a, registry in AXES.items() if key in registry), None)
            allowed = technique_class(axis, key).option_names if axis else option_names(parse_method(key))
        except ImportError:
            continue
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise SuiteError(f"suite {suite.name!r}: options.{key}.{unknown[0]}: unknown option; {key} takes "
                             f"{', '.join(allowed) or 'no options'}")


def train_spec(config: dict[str, Any]) -> TrainSpec:
    """The TrainSpec of a run's config (the inverse of `plan_run`)."""
    return TrainSpec(model=ModelSpec(**config["model"]), workload=Workload(**config["workload"]),
                     optimizer=OptimizerSpec(**config["optimizer"]), seed=config["seed"], device=config["device"],
                     options=dict(config["options"]))
