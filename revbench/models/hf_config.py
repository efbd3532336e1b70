"""Hugging Face configs: read a local `config.json` of a supported family, and apply revbench's kernel choices.

Users hold these files with the checkpoints they fine-tune, so any model of a supported family can be
estimated (on the meta device) or run (with random weights) from its config alone, as `accelerate
estimate-memory` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from revbench.models.families import FAMILIES, Family, UnsupportedArchitectureError

CONFIG_NAME = "config.json"


class ConfigFileError(ValueError):
    pass


def looks_like_config_path(text: str) -> bool:
    """Whether a --model value names a file or directory rather than a preset."""
    return text.endswith(".json") or "/" in text or Path(text).exists()


def config_file(path: str | Path) -> Path:
    """The config.json that `path` names: the file itself, or the one in the directory."""
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        where = f"directory {str(path)!r} has no {CONFIG_NAME}" if path.is_dir() else f"{str(path)!r} does not exist"
        raise ConfigFileError(f"cannot read a Hugging Face config: {where}")
    return file


def read_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Family, PretrainedConfig]:
    """The family and config of a local config.json (or a directory holding one), with `overrides` applied."""
    file = config_file(path)
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigFileError(f"{str(file)!r} is not valid JSON: {e}") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise ConfigFileError(f"{str(file)!r} names no model_type, so its architecture is unknown; revbench "
                              f"supports {', '.join(f.model_type for f in FAMILIES.values())}")
    family = next((f for f in FAMILIES.values() if f.model_type == values["model_type"]), None)
    if family is None:
        raise UnsupportedArchitectureError(
            f"{str(file)!r} is a {values['model_type']!r} model; revbench supports "
            f"{', '.join(f.model_type for f in FAMILIES.values())}")
    values.update(overrides or {})
    # A saved config lists one attention type per layer; with fewer layers, keep the first ones' types.
    layers, types = values.get("num_hidden_layers"), values.get("layer_types")
    if isinstance(types, list) and layers is not None and len(types) != layers:
        if layers > len(types):
            raise ConfigFileError(f"{str(file)!r} lists layer_types for {len(types)} layers; cannot build {layers}")
        values["layer_types"] = types[:layers]
    return family, family.config_class.from_dict(values)


def configure(config: PretrainedConfig, attn_impl: str, experts_impl: str) -> PretrainedConfig:
    """Apply the kernel choices to a config, and collect router logits (for the auxiliary loss)."""
    from revbench.models.attention import skip_unused_sliding_masks

    skip_unused_sliding_masks()  # the forward of any model configured here builds no mask that no layer reads
    config._attn_implementation = attn_impl
    config._experts_implementation = experts_impl
    config.output_router_logits = True
    return config
