"""What model to build: a preset or a local config.json, with overrides, or a local checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from revbench.models import hf_config
from revbench.models.dtypes import parse_dtype
from revbench.models.families import FAMILIES, Family
from revbench.models.presets import PRESETS


@dataclass
class ModelSpec:
    """What model to build. `None` fields keep the preset's value. `preset` is a preset's name or the path of a
    local Hugging Face config.json (or of a directory holding one) of a supported family."""

    preset: str = "tiny-qwen2-moe"
    layers: int | None = None
    hidden: int | None = None
    experts: int | None = None
    top_k: int | None = None
    dtype: str = "auto"
    # "grouped_mm" is transformers' default; "eager" is the only one with float64 kernels on CPU.
    experts_impl: str = "grouped_mm"
    attn_impl: str = "sdpa"
    path: str | None = None  # a local checkpoint directory; when set, weights come from it
    config: dict[str, Any] = field(default_factory=dict)  # any other config field

    def __post_init__(self) -> None:
        if self.path is None and self.preset not in PRESETS:
            if not hf_config.looks_like_config_path(self.preset):
                raise ValueError(f"unknown model preset {self.preset!r}; choose one of {', '.join(PRESETS)}, "
                                 f"or give the path of a Hugging Face config.json")
            hf_config.read_config(self.preset)  # a clear error now for a missing file or an unsupported family
        parse_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def from_config_file(self) -> bool:
        return self.preset not in PRESETS

    @property
    def family(self) -> Family:
        if self.from_config_file:
            return hf_config.read_config(self.preset)[0]
        return FAMILIES[PRESETS[self.preset].family]
