"""Offline save and load of HF MoE checkpoints in a local directory (safetensors only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from revbench.models.dtypes import parse_dtype
from revbench.models.families import family_of
from revbench.models.hf_config import configure
from revbench.models.spec import ModelSpec


class CheckpointError(ValueError):
    pass


def save_pretrained(model: PreTrainedModel, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def load_pretrained(path: str | Path, spec: ModelSpec, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Load a checkpoint directory offline, with a clear error for each way it can be unusable."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{str(path)!r} has no config.json, so it is not a Hugging Face checkpoint")
    if not any(path.glob("*.safetensors")):
        others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        found = f" (found {', '.join(others)}; convert them to safetensors)" if others else ""
        raise CheckpointError(f"{str(path)!r} holds no *.safetensors weights{found}")
    from transformers import AutoConfig

    if "model_type" not in json.loads(config_file.read_text()):
        raise CheckpointError(f"{str(config_file)!r} names no model_type, so its architecture is unknown")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    family = family_of(config)
    configure(config, spec.attn_impl, spec.experts_impl)
    return family.model_class.from_pretrained(
        path, config=config, local_files_only=True, use_safetensors=True,
        dtype=parse_dtype(spec.dtype, device), device_map=str(device),
    )
