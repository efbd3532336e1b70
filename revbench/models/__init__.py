"""The MoE model zoo: real Hugging Face architectures from presets, overrides and local checkpoints."""

from revbench.models.checkpoint import CheckpointError, load_pretrained, save_pretrained
from revbench.models.dtypes import parse_dtype
from revbench.models.families import FAMILIES, UnsupportedArchitectureError, family_of, num_experts
from revbench.models.presets import PRESETS, TINY_PRESETS
from revbench.models.spec import ModelSpec
from revbench.models.zoo import build_config, build_model, parameter_count

__all__ = [
    "FAMILIES", "PRESETS", "TINY_PRESETS", "CheckpointError", "ModelSpec", "UnsupportedArchitectureError",
    "build_config", "build_model", "family_of", "load_pretrained", "num_experts", "parameter_count", "parse_dtype",
    "save_pretrained",
]
