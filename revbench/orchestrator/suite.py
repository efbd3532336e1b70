"""Suites: a grid of model, workload, methods and repeats, read from YAML and validated field by field.

A suite file holds the fields of `Suite`. `sweeps` is a list of grids (dotted key -> values); each grid is
expanded as a Cartesian product, and the runs of all grids are pooled (duplicates once). `search` finds,
per method, the largest value of a field that fits the memory budget (see `revbench.orchestrator.search`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from revbench.methods import AXES, METHODS, UnknownMethodError, parse_method
from revbench.models import ModelSpec
from revbench.orchestrator import strict_yaml
from revbench.orchestrator.schema import FieldError, build, hint_at, parse_assignments, parse_bytes, set_dotted
from revbench.orchestrator.validate import (
    check_device,
    check_model,
    check_name,
    check_optimizer,
    check_seed,
    check_workload,
)
from revbench.spec import OptimizerSpec
from revbench.workload import Workload

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
DEFAULT_SUITE = "smoke"
# Fields that describe the grid itself, so a sweep, search or --set cannot vary them per run.
_GRID_FIELDS = ("name", "description", "methods", "sweeps", "search")


class SuiteError(ValueError):
    pass


@dataclass
class Search:
    """The largest value of `key` that fits: doubling from `start` while runs succeed (up to `max`), then
    bisecting between the last fit and the first OOM down to `resolution`."""

    key: str
    start: int = 1
    max: int = 1024
    resolution: int = 1

    def __post_init__(self) -> None:
        try:
            hint = hint_at(Suite, self.key)
        except FieldError as exc:
            raise FieldError("key", f"{self.key!r}: {exc.message}") from None
        if self.key.split(".")[0] in _GRID_FIELDS or hint not in (int, int | None):
            raise FieldError("key", f"{self.key!r} is not an integer field of a suite (e.g. workload.batch)")
        if not 1 <= self.start <= self.max:
            raise FieldError("start", f"must satisfy 1 <= start <= max, got start={self.start} max={self.max}")
        if self.resolution < 1:
            raise FieldError("resolution", f"must be >= 1, got {self.resolution}")


@dataclass
class Suite:
    name: str = ""
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    workload: Workload = field(default_factory=Workload)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    methods: list[str] = field(default_factory=lambda: ["standard"])  # presets or ACTIVATIONS+STATES+LOSS
    # Axis overrides applied to every method (None keeps each method's own): sweep them like any field.
    activations: str | None = None
    states: str | None = None
    loss: str | None = None
    # Options by method or technique name (e.g. lora: {rank: 16}, chunked: {chunk_tokens: 512}); a run takes
    # those of its techniques, then those of its method.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: int = 3  # timed steps
    warmup: int = 1  # unmeasured steps before the profiled one
    repeats: int = 1
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    # Data-parallel ranks, each its own process launched through torchrun: `gpus` on CUDA (one GPU per rank, nccl),
    # `ranks` on CPU (gloo). workload.batch is the global batch, split evenly over the ranks.
    gpus: int = 1
    ranks: int = 1
    # Hosts the run spans, `gpus` or `ranks` on each, joined by torchrun's c10d rendezvous: `revbench run` starts on
    # every node with the same suite and `--rdzv-endpoint HOST:PORT` (HOST: the first node's address).
    nodes: int = 1
    timeout_s: float = 900.0  # per run; DeepSpeed JIT-compiles its ops on first use (~80 s on 2 cores)
    # A cap on peak tensor bytes (e.g. 64MiB); over it a run ends as `oom`. On CUDA it also caps the allocator.
    memory_budget: int | str | None = None
    sweeps: list[dict[str, list[Any]]] = field(default_factory=list)
    search: list[Search] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.methods:
            raise FieldError("methods", "must list at least one method")
        for i, method in enumerate(self.methods):
            try:
                parse_method(method)
            except UnknownMethodError as exc:
                raise FieldError(f"methods[{i}]", str(exc)) from None
        if len(set(self.methods)) != len(self.methods):
            raise FieldError("methods", f"lists a method twice: {self.methods}")
        for axis, registry in AXES.items():
            value = getattr(self, axis)
            if value is not None and value not in registry:
                raise FieldError(axis, f"unknown {axis} technique {value!r}; choose one of {', '.join(registry)}")
        self._refuse_one_composition_twice()
        techniques = {name for registry in AXES.values() for name in registry}
        for name in self.options:
            if name not in techniques and name not in self.methods and name not in METHODS:
                raise FieldError(f"options.{name}", f"names no method or technique of this suite; options are keyed "
                                 f"by a method ({', '.join(METHODS)}) or a technique ({', '.join(sorted(techniques))})")
        for name in ("steps", "warmup", "repeats", "gpus", "ranks", "nodes"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise FieldError("timeout_s", f"must be positive, got {self.timeout_s}")
        check_device(self.device)
        check_seed(self.seed)
        check_seed(self.workload.seed, "workload.seed")
        if self.memory_budget is not None:
            self.memory_budget = parse_bytes(self.memory_budget, "memory_budget")
        check_model(self.model)
        check_workload(self.workload, self.model)
        check_optimizer(self.optimizer)
        for i, grid in enumerate(self.sweeps):
            for key, values in grid.items():
                path = f"sweeps[{i}].{key}"
                if key.split(".")[0] in _GRID_FIELDS:
                    raise FieldError(path, f"{key.split('.')[0]} cannot be swept")
                try:
                    hint_at(Suite, key)
                except FieldError as exc:
                    raise FieldError(path, exc.message) from None
                if not values:
                    raise FieldError(path, "must list at least one value")

    def _refuse_one_composition_twice(self) -> None:
        """Two listed methods that compose the same techniques (a preset and its composition, or two methods the
        suite's axis overrides make alike) would be the same run under two names."""
        why = " under the suite's axis overrides" if any(getattr(self, axis) for axis in AXES) else ""
        listed: dict[str, str] = {}
        for i, method in enumerate(self.methods):
            axes = parse_method(method).with_axes(activations=self.activations, states=self.states, loss=self.loss)
            name = "+".join(axes.techniques())
            if name in listed:
                raise FieldError(f"methods[{i}]", f"{method!r} is {listed[name]!r} again: both compose {name}{why}; "
                                 "list it once (sweep options to compare settings)")
            listed[name] = method

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(ref: str) -> Path:
    """A shipped suite by name, or a YAML file by path."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"suite file {ref!r} does not exist")
        return path
    shipped = SUITES_DIR / f"{ref}.yaml"
    if not shipped.is_file():
        raise SuiteError(f"unknown suite {ref!r}; the shipped suites are {', '.join(shipped_suites())}, "
                         "or give the path of a YAML file")
    return shipped


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line and column, counted from 1)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_suite_file(path: Path) -> dict[str, Any]:
    try:
        data = strict_yaml.load(path.read_text())
    except UnicodeDecodeError:
        raise SuiteError(f"suite file {str(path)!r} is not text (UTF-8 YAML)") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        raise SuiteError(f"suite file {str(path)!r} is empty; it must hold a mapping of suite fields (name, model, "
                         f"workload, methods, ...), e.g. {str(SUITES_DIR / 'smoke.yaml')!r}")
    if not isinstance(data, dict):
        raise SuiteError(f"suite file {str(path)!r} must hold a mapping of suite fields (name, model, workload, "
                         f"methods, ...), got a {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`--set key=value` on a raw suite. Setting a swept key fixes it: its axis leaves every sweep."""
    data = copy.deepcopy(data)
    for key, value in parse_assignments(assignments):
        hint_at(Suite, key)  # names an unknown field before anything runs
        set_dotted(data, key, value)
        for grid in data.get("sweeps") or []:
            if isinstance(grid, dict):
                grid.pop(key, None)
    data["sweeps"] = [g for g in data.get("sweeps") or [] if g != {}]
    return data


def parse_suite(data: dict[str, Any], origin: str) -> Suite:
    try:
        return build(Suite, data)
    except FieldError as exc:
        raise SuiteError(f"suite {data.get('name')!r} ({origin}): {exc}") from None


def load_suite(ref: str | None = None, overrides: list[str] | None = None, methods: list[str] | None = None,
               device: str | None = None) -> Suite:
    """Read, override and validate a suite. `methods` and `device` are the command line's shortcuts for
    `--set methods=[...]` and `--set device=...`."""
    path = suite_path(ref or DEFAULT_SUITE)
    raw = read_suite_file(path)
    if "driver" in raw:  # e.g. the quality suite: its own driver evaluates between steps
        raise SuiteError(f"suite {raw['name']!r} has its own driver: run it with `revbench {raw['driver']}`")
    assignments = list(overrides or [])
    try:
        data = apply_overrides(raw, assignments)
    except FieldError as exc:
        where = "--set " if exc.path else ""  # a message without a field names --set itself
        raise SuiteError(f"suite {path.stem!r}: {where}{exc}") from None
    if methods is not None:
        data["methods"] = methods
    if device is not None:
        data["device"] = device
    return parse_suite(data, str(path))
