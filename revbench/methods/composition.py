"""A method is a composition of three techniques: activations x model states x loss.

The named methods are presets of the three axes, and nothing more. Any other combination is written
`ACTIVATIONS+STATES+LOSS` (e.g. `checkpoint+adamw-8bit-in-backward+chunked`), or obtained from a preset by
overriding an axis. A composition's name is its preset's name where one matches, so records stay comparable.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any

from revbench.activations import ACTIVATIONS
from revbench.activations.base import SHARED_OPTION_NAMES
from revbench.loss import LOSSES
from revbench.states import STATES

AXES: dict[str, dict[str, str]] = {"activations": ACTIVATIONS, "states": STATES, "loss": LOSSES}
SEPARATOR = "+"


class UnknownMethodError(ValueError):
    pass


@dataclass(frozen=True)
class Composition:
    activations: str = "store"
    states: str = "adamw"
    loss: str = "full"

    def __post_init__(self) -> None:
        for axis, registry in AXES.items():
            value = getattr(self, axis)
            if value not in registry:
                raise UnknownMethodError(f"unknown {axis} technique {value!r}; choose one of {', '.join(registry)}")

    @property
    def name(self) -> str:
        """The preset's name where this is a preset, else `activations+states+loss`."""
        for preset, composition in PRESETS.items():
            if composition == self:
                return preset
        return SEPARATOR.join(self.techniques())

    def techniques(self) -> tuple[str, str, str]:
        return self.activations, self.states, self.loss

    def with_axes(self, **axes: str | None) -> Composition:
        """This composition with the given axes replaced (None keeps an axis)."""
        return replace(self, **{axis: value for axis, value in axes.items() if value is not None})

    def to_dict(self) -> dict[str, str]:
        return {"activations": self.activations, "states": self.states, "loss": self.loss}


PRESETS: dict[str, Composition] = {
    "standard": Composition("store", "adamw", "full"),
    "checkpointing": Composition("checkpoint", "adamw", "full"),
    "zero1": Composition("store", "zero1", "full"),
    "zero2": Composition("store", "zero2", "full"),
    "zero3": Composition("store", "zero3", "full"),
    "zero2-offload": Composition("store", "zero2-offload", "full"),
    "zero3-offload": Composition("store", "zero3-offload", "full"),
    "lora": Composition("store", "lora", "full"),
    "revffn": Composition("revffn", "adamw", "full"),
    "revffn-zero2-offload": Composition("revffn", "zero2-offload", "full"),
    "revexact": Composition("revexact", "adamw", "full"),
    "fsdp2": Composition("store", "fsdp2", "full"),
    "fsdp2-offload": Composition("store", "fsdp2-offload", "full"),
}


def parse_method(text: str) -> Composition:
    """A preset name, or `activations+states+loss`."""
    if text in PRESETS:
        return PRESETS[text]
    parts = text.split(SEPARATOR)
    if len(parts) != 3:
        raise UnknownMethodError(
            f"unknown method {text!r}; the methods are {', '.join(PRESETS)}, or a composition ACTIVATIONS+STATES+LOSS "
            f"with activations {'|'.join(ACTIVATIONS)}, states {'|'.join(STATES)} and loss {'|'.join(LOSSES)}")
    return Composition(*parts)


def technique_class(axis: str, name: str) -> type[Any]:
    module, cls = AXES[axis][name].split(":")
    return getattr(importlib.import_module(module), cls)


def technique_classes(composition: Composition) -> dict[str, type[Any]]:
    return {axis: technique_class(axis, getattr(composition, axis)) for axis in AXES}


def technique_option_names(axis: str, name: str) -> tuple[str, ...]:
    """The options one technique takes (an activation technique also those every one takes: tiling)."""
    return (*technique_class(axis, name).option_names, *(SHARED_OPTION_NAMES if axis == "activations" else ()))


def option_names(composition: Composition) -> tuple[str, ...]:
    """Every option the composition's techniques take (the options every activation technique takes last)."""
    return (*(name for cls in technique_classes(composition).values() for name in cls.option_names),
            *SHARED_OPTION_NAMES)

