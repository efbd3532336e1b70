"""Dtypes by name, and revbench's precision per device for "auto"."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}


def parse_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype by name; "auto" is float32 on CPU and bfloat16 on CUDA, revbench's precision per device."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}") from None
