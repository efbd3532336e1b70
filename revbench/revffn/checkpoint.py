"""Save and load converted models: weights as safetensors, the HF config and RevFFN options as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from revbench.models.dtypes import DTYPES
from revbench.models.families import FAMILIES
from revbench.revffn.families import family_ops
from revbench.revffn.model import RevFFNForCausalLM

FORMAT = "revbench.revffn/1"
WEIGHTS = "model.safetensors"
CONFIG = "revffn_config.json"


def save_revffn(model: RevFFNForCausalLM, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    meta = {
        "format": FORMAT,
        "family": model.ops.name,
        "dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
        "attn_implementation": config._attn_implementation,
        "experts_implementation": getattr(config, "_experts_implementation", None),
        "revffn": model.options.to_dict(),
        "hf_config": config.to_dict(),
    }
    (path / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    save_model(model, str(path / WEIGHTS))  # drops duplicate names of shared (tied) tensors
    return path


def load_revffn(path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> RevFFNForCausalLM:
    """A saved RevFFN model; `overrides` replace saved options (e.g. mode="vanilla": the weights fit either)."""
    from revbench.revffn.convert import convert

    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a saved RevFFN model (needs {CONFIG} and {WEIGHTS})")
    meta = json.loads((path / CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(path / CONFIG)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    family = FAMILIES[meta["family"]]
    hf_config = {k: v for k, v in meta["hf_config"].items() if k != "revffn"}
    config = family.config_class.from_dict(hf_config)
    family_ops(config)
    config._attn_implementation = meta["attn_implementation"]
    if meta["experts_implementation"] is not None:
        config._experts_implementation = meta["experts_implementation"]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[meta["dtype"]])
    try:
        with torch.device(device):
            hf_model = family.model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model = convert(hf_model, **{**meta["revffn"], **overrides})
    load_model(model, str(path / WEIGHTS), device=str(device))
    return model
