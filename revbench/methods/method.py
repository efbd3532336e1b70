"""One method: the three techniques of a composition, run as a training step in a fixed order.

prepare: build the model, let the activation technique convert it, let the loss technique install its head,
then hand it to the model-state technique (which may wrap it in an engine or add adapters).
train_step: forward and loss, backward, optimizer step, each in its measured phase.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from revbench.measure.categories import StateTensors
from revbench.measure.phases import phase
from revbench.methods.composition import AXES, Composition, option_names, technique_classes
from revbench.models.zoo import build_model
from revbench.spec import TrainSpec


def techniques(composition: Composition, spec: TrainSpec) -> tuple[Any, Any, Any]:
    """The composition's activation, model-state and loss techniques for `spec`, after checking that its options
    are theirs and that they can run together (a ValueError says why not). Nothing is built yet."""
    allowed = option_names(composition)
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise ValueError(f"method {composition.name!r} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(allowed) or 'none'}")
    classes = technique_classes(composition)
    activations, states, loss = (classes[axis](spec) for axis in ("activations", "states", "loss"))
    reason = (activations.refuses(composition.states, composition.loss)
              or states.refuses(composition.activations, composition.loss)
              or loss.refuses(composition.activations, composition.states))
    if reason:
        raise ValueError(f"method {composition.name!r} cannot run: {reason}")
    return activations, states, loss


def combinations(spec: TrainSpec | None = None) -> list[Composition]:
    """Every composition of the registered techniques that can run together (with `spec`'s options)."""
    spec = spec or TrainSpec()
    out = []
    for composition in (Composition(*axes) for axes in itertools.product(*AXES.values())):
        try:
            techniques(composition, spec)
        except ValueError:
            continue
        out.append(composition)
    return out


class Method:
    def __init__(self, composition: Composition, spec: TrainSpec) -> None:
        self.composition = composition
        self.name = composition.name
        self.spec = spec
        self.device = torch.device(spec.device)
        self.activations, self.states, self.loss = techniques(composition, spec)
        self.forward: Any = None
        self.steps = 0

    @property
    def model(self) -> torch.nn.Module | None:
        """The model that trains (inside any engine or adapter wrapper it runs through)."""
        return self.states.model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The one optimizer over the model (None where each parameter has its own, as in backward)."""
        return self.states.optimizer

    @property
    def vocab_size(self) -> int:
        assert self.model is not None, "prepare() first"
        return self.model.config.vocab_size

    @property
    def precision(self) -> str:
        return self.states.precision

    def prebuild(self) -> None:
        """Compile or load what the first step would otherwise build, before anything is measured."""
        self.states.prebuild()

    def build_model(self) -> torch.nn.Module:
        """The model as the model-state technique takes it: built, converted by the activation technique, with the
        loss technique's head installed."""
        model = build_model(self.spec.model, seed=self.spec.seed, device=self.device).train()
        model = self.activations.prepare(model)
        self.loss.install(model)
        return model

    def prepare(self) -> None:
        self.forward = self.states.setup(self.build_model())

    def train_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Forward, backward and optimizer update on one batch; returns the (detached) loss."""
        self.activations.before_step(self.model, self.steps)
        input_ids = input_ids.to(self.device)
        with phase("forward"):
            loss = self.loss(self.forward, input_ids)
        with phase("backward"):
            self.states.backward(loss)
        with phase("optimizer"):
            self.states.step()
        self.steps += 1
        return loss.detach()

    def zero_grad(self) -> None:
        self.states.zero_grad()

    def state_tensors(self) -> StateTensors:
        return self.states.state_tensors()

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return self.states.full_parameters()

    def stats(self) -> dict[str, Any]:
        """The techniques' own figures (e.g. RevFFN's reconstruction errors, DeepSpeed's config)."""
        assert self.model is not None, "prepare() first"
        return {**self.states.stats(), **self.activations.stats(self.model)}

    def teardown(self) -> None:
        self.states.teardown()
        self.forward = None
