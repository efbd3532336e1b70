"""The method registry. Each method lives in its own module and is imported only when asked for."""

from __future__ import annotations

import importlib

from revbench.methods.base import Method, OptimizerSpec, TrainSpec

# name -> "module:Class"; lazy so that e.g. DeepSpeed is imported only by the methods that use it.
METHODS: dict[str, str] = {
    "standard": "revbench.methods.standard:Standard",
    "checkpointing": "revbench.methods.checkpointing:Checkpointing",
    "zero2-offload": "revbench.methods.deepspeed_zero:Zero2Offload",
    "zero3-offload": "revbench.methods.deepspeed_zero:Zero3Offload",
    "lora": "revbench.methods.lora:Lora",
    "revffn": "revbench.methods.revffn:RevFFN",
    "revffn-zero2-offload": "revbench.methods.deepspeed_zero:RevFFNZero2Offload",
    "revexact": "revbench.methods.revexact:RevExact",
}


class UnknownMethodError(ValueError):
    pass


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; the methods are {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_method(name: str, spec: TrainSpec) -> Method:
    return method_class(name)(spec)


__all__ = ["METHODS", "Method", "OptimizerSpec", "TrainSpec", "UnknownMethodError", "create_method", "method_class"]
