"""Which attention kernel a step runs, said in words, and one mask transformers builds for nothing.

transformers' Qwen2-MoE (5.17 to 5.24 at least) builds a sliding-window mask in every forward beside the causal one,
and uses it only in layers whose `layer_types` entry is "sliding_attention". Where no layer slides (Qwen1.5-MoE-A2.7B
and every preset here), that mask is a B x 1 x S x S boolean no layer reads: 4 GiB at 64K tokens, 256 GiB at 512K,
on the device in a real run as in an estimate. revbench skips it where no layer would read it, which changes no value
the model computes: the causal mask itself is then None and SDPA applies causality in its kernel (flash or
memory-efficient on CUDA, the flash kernel on CPU), with no S x S matrix anywhere.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import PretrainedConfig


def slides(config: PretrainedConfig) -> bool:
    """Does any layer attend through a sliding window? (A config without layer_types: as transformers decides.)"""
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or "sliding_attention" in layer_types


@functools.cache
def skip_unused_sliding_masks() -> None:
    """Qwen2-MoE's forward: no sliding-window mask where no layer slides (once per process)."""
    from transformers.models.qwen2_moe import modeling_qwen2_moe as module

    original = module.create_sliding_window_causal_mask

    @functools.wraps(original)
    def create_sliding_window_causal_mask(*args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("config", args[0] if args else None)
        return original(*args, **kwargs) if config is None or slides(config) else None

    module.create_sliding_window_causal_mask = create_sliding_window_causal_mask


def attention_path(config: PretrainedConfig, seq: int) -> str:
    """The attention kernel a step at `seq` tokens runs on a GPU, and whether it holds an S x S matrix."""
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation == "eager":
        return "eager attention: an S x S score matrix per head, kept for backward"
    window = getattr(config, "sliding_window", None)
    if implementation == "sdpa" and slides(config) and window and window < seq:
        return (f"SDPA with an explicit sliding-window mask (B x 1 x S x S booleans; window {window:,}): the "
                "memory-efficient kernel")
    if implementation == "sdpa":
        return "SDPA, causal without a mask: the flash or memory-efficient kernel, no S x S matrix"
    return f"{implementation}: causal in its kernel, no S x S matrix"
