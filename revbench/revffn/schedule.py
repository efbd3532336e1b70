"""The two-stage schedule: adapters and new norms first (pretrained weights frozen), then everything.

Every parameter sits in the optimizer from the start; a stage only toggles `requires_grad`. A frozen
parameter gets no gradient, so AdamW skips it and creates no state for it; when it thaws, its state
starts then (its own step count and bias correction), exactly as if it joined a fresh AdamW at that step.
"""

from __future__ import annotations

from revbench.revffn.model import RevFFNForCausalLM

STAGES = ("full", "warmup", "two-stage")  # all parameters throughout; adapters only throughout; one then the other


def check_stage(stage: str, warmup_steps: int) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown RevFFN stage {stage!r}; choose one of {', '.join(STAGES)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


def trains_everything(stage: str, step: int, warmup_steps: int) -> bool:
    """Whether step `step` (0-based) of `stage` trains all parameters (else adapters and new norms only)."""
    return stage == "full" or (stage == "two-stage" and step >= warmup_steps)


def set_trainable(model: RevFFNForCausalLM, everything: bool) -> None:
    new = {id(p) for _, p in model.new_parameters()}
    for p in model.parameters():
        p.requires_grad_(everything or id(p) in new)
