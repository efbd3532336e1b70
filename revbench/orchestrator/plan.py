"""From a suite to runs: expand the grid, resolve every default (device, dtype, preset sizes), name each run.

A run's `config` is what its record carries: the full TrainSpec with nothing left to "auto" or to a
preset's default, plus the step counts, repeat, memory budget, rank and node counts and timeout.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from revbench.methods.resolve import Overrides, check_option_keys, resolve_method
from revbench.models import ModelSpec
from revbench.orchestrator.schema import FieldError, set_dotted
from revbench.orchestrator.suite import Suite, SuiteError, parse_suite
from revbench.records import run_id
from revbench.spec import OptimizerSpec, TrainSpec
from revbench.units import format_bytes
from revbench.workload import Workload

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
        if identity.get("nodes") == 1:  # one node's runs keep the ids they had before runs spanned nodes
            del identity["nodes"]
        return run_id(self.suite, self.method, identity, self.config["repeat"])

    @property
    def point(self) -> str:
        """What the run measures apart from the method and repeat: model, depth, batch × seq, budget."""
        model, workload = self.config["model"], self.config["workload"]
        text = f"{model['preset']} L{model['layers']} · {workload['batch']}×{workload['seq']}"
        if nodes(self.config) > 1:
            per_node = ranks_per_node(self.config)
            text += f" · {nodes(self.config)} nodes × {per_node} rank{'s' if per_node > 1 else ''}"
        elif world_size(self.config) > 1:
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


def node_ranks(device: str, gpus: int, ranks: int) -> int:
    """The ranks a run starts on each node: `ranks` CPU processes on CPU, one per GPU on CUDA."""
    return ranks if torch.device(device).type == "cpu" else gpus


def ranks_per_node(config: dict[str, Any]) -> int:
    """How many ranks a run's config starts on each node (records from before CPU ranks have no `ranks`)."""
    return node_ranks(config["device"], config["gpus"], config.get("ranks", 1))


def nodes(config: dict[str, Any]) -> int:
    return config.get("nodes", 1)


def world_size(config: dict[str, Any]) -> int:
    """How many ranks a run has over all its nodes."""
    return ranks_per_node(config) * nodes(config)


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


def plan_run(point: Suite, method: str, repeat: int = 0, search_key: str | None = None) -> PlannedRun:
    try:
        device = resolve_device(point.device, point.gpus, point.ranks)
        overrides = Overrides(point.activations, point.states, point.loss, point.options)
        spec = TrainSpec(model=point.model, workload=point.workload, optimizer=point.optimizer, seed=point.seed,
                         device=device)
        world = node_ranks(device, point.gpus, point.ranks) * point.nodes
        resolved = resolve_method(method, spec, overrides, world)
    except ValueError as exc:  # a FieldError of the device or rank count, or a refusal of the composition
        raise SuiteError(f"suite {point.name!r}: {exc}") from None
    config = {
        **resolved.spec.to_dict(),
        "techniques": resolved.composition.to_dict(),
        "steps": point.steps,
        "warmup": point.warmup,
        "repeat": repeat,
        "gpus": point.gpus,
        "ranks": point.ranks,
        "nodes": point.nodes,
        "memory_budget_bytes": point.memory_budget,
        "search_key": search_key,
        "timeout_s": point.timeout_s,
    }
    return PlannedRun(suite=point.name, method=resolved.name, config=config)


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
    """Options against the option names of the technique or method they are keyed by, before anything runs."""
    try:
        check_option_keys(suite.options)
    except ValueError as exc:
        raise SuiteError(f"suite {suite.name!r}: {exc}") from None


def train_spec(config: dict[str, Any]) -> TrainSpec:
    """The TrainSpec of a run's config (the inverse of `plan_run`)."""
    return TrainSpec(model=ModelSpec(**config["model"]), workload=Workload(**config["workload"]),
                     optimizer=OptimizerSpec(**config["optimizer"]), seed=config["seed"], device=config["device"],
                     options=dict(config["options"]))
