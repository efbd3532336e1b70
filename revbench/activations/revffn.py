"""`revffn`: the paper's reversible blocks keep only the stack's output and rebuild each layer's input in backward.

The conversion and the two-stage schedule (adapters first, then everything) live in `revbench.revffn`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from revbench.activations.base import Activations
from revbench.revffn import OPTION_NAMES, convert
from revbench.revffn.schedule import check_stage, set_trainable, trains_everything
from revbench.spec import TrainSpec


class RevFFN(Activations):
    name = "revffn"
    recomputes = True  # each layer is reconstructed from its output, and run again, in backward
    layer_gradients_at_once = True  # handoff.py: one autograd.grad per layer
    option_names = (*OPTION_NAMES, "stage", "warmup_steps")

    def __init__(self, spec: TrainSpec) -> None:
        super().__init__(spec)
        self.stage = spec.options.get("stage", "full")
        self.warmup_steps = spec.options.get("warmup_steps", 100)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise ValueError(f"option warmup_steps must be a whole number of steps, not {self.warmup_steps!r}")
        check_stage(self.stage, self.warmup_steps)
        self.steps = 0

    def build(self, model: nn.Module) -> nn.Module:
        options = {k: v for k, v in self.spec.options.items() if k in OPTION_NAMES}
        model = convert(model, **options)
        set_trainable(model, trains_everything(self.stage, 0, self.warmup_steps))
        return model

    def refuses(self, states: str, loss: str) -> str | None:
        if states == "lora":
            return ("LoRA freezes every weight but its own adapters, so RevFFN's newly initialised stream adapters "
                    "would never train")
        if states == "zero3-offload" and self.spec.options.get("adapters") == "shared":
            return ("with adapters 'shared' one adapter pair takes part in both branches, whose backward passes run "
                    "one after the other, so its gradient reaches ZeRO-3 twice in one step, and ZeRO-3 keeps one "
                    "gradient per partition per micro-step (the second would replace the first); use adapters "
                    "'per-branch'")
        if (states.startswith("zero") or states == "adamw-ddp") and self.stage == "two-stage":
            return ("DeepSpeed and DDP fix the trainable parameters at initialize, so RevFFN stage 'two-stage' (which "
                    "thaws the pretrained weights mid-run) cannot run on it; use stage 'full' or 'warmup'")
        return None

    def refuses_ranks(self, states: str, ranks: int) -> str | None:
        if ranks > 1 and states in ("zero3", "zero3-offload"):
            return ("RevFFN's backward deadlocks on ZeRO-3 over several ranks: inside its per-layer backward the "
                    "ranks' parameter fetches diverge, so one rank gathers the attention weights for a branch's "
                    "recompute while another, which gathered nothing there, reduce-scatters that branch's gradients "
                    "(seen at 2 CPU ranks, issue 36); over several ranks use ZeRO-2 (revffn+zero2+full, "
                    "revffn-zero2-offload), or revexact on ZeRO-3")
        return None

    def before_step(self, model: nn.Module, step: int) -> None:
        set_trainable(model, trains_everything(self.stage, step, self.warmup_steps))
        self.steps = step + 1

    def stats(self, model: nn.Module) -> dict[str, Any]:
        return {"stage": self.stage, "steps": self.steps,
                "trains_everything": trains_everything(self.stage, max(self.steps - 1, 0), self.warmup_steps),
                **model.reconstruction_summary()}
