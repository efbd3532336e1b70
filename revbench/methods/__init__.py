"""Methods: a composition of an activation, a model-state and a loss technique, run as one.

    create_method("checkpointing", spec)                  # a preset
    create_method("checkpoint+adamw-in-backward+chunked", spec)  # any composition
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from revbench.methods.composition import (
    AXES,
    PRESETS,
    Composition,
    UnknownMethodError,
    option_names,
    parse_method,
)
from revbench.spec import ADAMW_IMPLEMENTATIONS, OptimizerSpec, TrainSpec

if TYPE_CHECKING:
    from revbench.methods.method import Method

METHODS: tuple[str, ...] = tuple(PRESETS)


def create_method(name: str, spec: TrainSpec) -> Method:
    from revbench.methods.method import Method

    return Method(parse_method(name), spec)


__all__ = ["ADAMW_IMPLEMENTATIONS", "AXES", "METHODS", "PRESETS", "Composition", "OptimizerSpec", "TrainSpec",
           "UnknownMethodError", "create_method", "option_names", "parse_method"]
