"""A model spec checked before anything is built: the shape a run asks for must be one the model can have.

`validate_model` builds the Hugging Face config (cheap: no weights) and checks the fields a training step
depends on, so a bad shape is refused with the field's name instead of failing deep in a worker with a torch
error. Errors are `ShapeError`s carrying the dotted field (relative to the model spec) and the allowed range.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from transformers import PretrainedConfig

from revbench.models.dtypes import parse_dtype
from revbench.models.presets import PRESETS
from revbench.models.spec import ModelSpec
from revbench.models.zoo import build_config


class ShapeError(ValueError):
    """A model field out of range; `path` is relative to the model spec, e.g. `layers` or `config.head_dim`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _check_checkpoint(path: str) -> None:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ShapeError("path", f"checkpoint directory {path!r} does not exist")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ShapeError("path", f"{path!r} has no config.json, so it is not a Hugging Face checkpoint")
    try:
        json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShapeError("path", f"{str(config_file)!r} is not readable JSON: {exc}") from None


def _positive(config: PretrainedConfig, where: dict[str, str], name: str, minimum: int = 1) -> int:
    value = getattr(config, name, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShapeError(where.get(name, f"config.{name}"), f"must be an integer >= {minimum}, got {value!r}")
    return value


def validate_model(spec: ModelSpec) -> None:
    """Refuse a spec whose model cannot be built or trained; ShapeError names the field and the allowed values."""
    try:
        parse_dtype(spec.dtype)
    except ValueError as exc:
        raise ShapeError("dtype", str(exc)) from None
    for name in ("layers", "hidden", "experts", "top_k"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise ShapeError(name, f"must be >= 1, got {value}")
    if spec.path is not None:
        _check_checkpoint(spec.path)
        return  # the checkpoint's own config sets the shape
    if spec.preset not in PRESETS and not spec.from_config_file:
        raise ShapeError("preset", f"unknown model preset {spec.preset!r}; choose one of {', '.join(PRESETS)}, or "
                         "give a Hugging Face config.json (or a directory holding one)")
    family = spec.family
    known = family.config_class().to_dict()
    for key in spec.config:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ShapeError(f"config.{key}", f"not a field of {family.config_class.__name__} "
                             f"(the {family.name} family's config){hint}")
    try:
        config = build_config(spec)
    except Exception as exc:  # transformers validates some fields itself; name what it said
        raise ShapeError("config", f"transformers refused the {family.name} config: {exc}") from None
    # Which spec field set each config field, so the error names what the user wrote.
    where = {"num_hidden_layers": "layers", "hidden_size": "hidden", family.experts_field: "experts",
             "num_experts_per_tok": "top_k"}
    where = {k: (v if getattr(spec, v) is not None and k not in spec.config else f"config.{k}")
             for k, v in where.items()}
    _positive(config, where, "num_hidden_layers")
    hidden = _positive(config, where, "hidden_size")
    experts = _positive(config, where, family.experts_field)
    top_k = _positive(config, where, "num_experts_per_tok")
    if top_k > experts:
        user_set = spec.top_k is not None or "num_experts_per_tok" in spec.config
        raise ShapeError(where["num_experts_per_tok" if user_set else family.experts_field],
                         f"top-k {top_k} is more than the {experts} experts; allowed: 1 <= top_k <= experts")
    heads = _positive(config, where, "num_attention_heads")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "head_dim", None) is None and hidden % heads:
        blame = "config.num_attention_heads" if "num_attention_heads" in spec.config else where["hidden_size"]
        raise ShapeError(blame,
                         f"hidden size {hidden} is not divisible by the {heads} attention heads "
                         f"(num_attention_heads); the hidden size must be a multiple of the heads")
    if kv_heads < 1 or heads % kv_heads:
        raise ShapeError("config.num_key_value_heads",
                         f"{kv_heads} key/value heads do not divide the {heads} attention heads")
    for name in ("intermediate_size", "moe_intermediate_size", "vocab_size"):
        if getattr(config, name, None) is not None:
            _positive(config, where, name)
