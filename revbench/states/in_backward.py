"""AdamW stepped in backward: each parameter is updated as soon as its gradient is complete, and the gradient
is freed at once, so the whole set of gradients is never live (torchtune's `optimizer_in_bwd`).

One optimizer per parameter, stepped from `register_post_accumulate_grad_hook`. A parameter that gets no
gradient in a step (frozen, or unused) is not stepped, as with a single optimizer. Gradient clipping and
accumulation over micro-batches cannot be done this way: the gradients are gone by the time they would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from revbench.measure.categories import StateTensors
from revbench.measure.phases import phase
from revbench.states.adamw_8bit import AdamW8bit
from revbench.states.base import ModelStates


class InBackward(ModelStates):
    def setup(self, model: nn.Module) -> Callable[..., Any]:
        self.model = model
        self.optimizers: dict[nn.Parameter, torch.optim.Optimizer] = {}
        self.hooks = []
        for p in model.parameters():
            self.optimizers[p] = self.make_optimizer([p])
            # torch refuses hooks on frozen tensors; a frozen parameter may thaw later (RevFFN's two stages).
            frozen = not p.requires_grad
            p.requires_grad_(True)
            self.hooks.append(p.register_post_accumulate_grad_hook(self._step))
            p.requires_grad_(not frozen)
        return model

    def _step(self, param: torch.Tensor) -> None:
        with phase("optimizer"):
            self.optimizers[param].step()
            param.grad = None

    def step(self) -> None:
        """Nothing left to do: every parameter was stepped during backward."""

    def zero_grad(self) -> None:
        for p in self.optimizers:
            p.grad = None

    def state_tensors(self) -> StateTensors:
        assert self.model is not None, "setup() first"
        states = [v for opt in self.optimizers.values() for state in opt.state.values() for v in state.values()
                  if isinstance(v, torch.Tensor)]
        grads = [p.grad for p in self.optimizers if p.grad is not None]
        return {"params": [*self.model.parameters(), *self.model.buffers()], "grads": grads, "optimizer": states}

    def stats(self) -> dict[str, Any]:
        return {"optimizers": len(self.optimizers)}

    def teardown(self) -> None:
        for hook in getattr(self, "hooks", []):
            hook.remove()
        self.hooks, self.optimizers = [], {}
        super().teardown()


class AdamWInBackward(InBackward):
    name = "adamw-in-backward"


class AdamW8bitInBackward(InBackward, AdamW8bit):
    """Each parameter's own 8-bit AdamW, stepped in backward."""

    name = "adamw-8bit-in-backward"
